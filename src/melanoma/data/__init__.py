"""Sources, patient-grouped folds, TFRecords and their integrity: tables of images and labels; a fold's data and
its options (pseudo-labels, validation weights)."""
