"""The network (EfficientNet + heads) and running it on any strategy."""
