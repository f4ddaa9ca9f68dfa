"""The model families: each one fits a fold, predicts a fold's images and describes itself."""
