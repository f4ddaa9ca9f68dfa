"""What a model sees: tf.data pipelines with augmentation and TTA, and feature tables for the trees."""
