"""SIIM-ISIC Melanoma Classification: EfficientNet k-fold training, TTA, OOF scoring and submission."""

__version__ = "0.1.0"
