"""OOF scoring as the competition scores, run comparison, reports and their plots, and blends."""
