"""Test predictions per fold, the fold ensemble, and the submission file."""
