"""One fold of a run: schedules, callbacks, the training loop, and the tree family."""
