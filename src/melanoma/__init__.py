"""SIIM-ISIC Melanoma Classification: EfficientNet k-fold training, TTA, OOF scoring and submission."""
from melanoma.core import kerasapi as _kerasapi

# Before anything imports TensorFlow: a worker of a multi-worker cluster trains with tf_keras.
_kerasapi.choose()

__version__ = "0.1.0"
