"""Sources, patient-grouped folds, TFRecords and their integrity: tables of images and labels."""
