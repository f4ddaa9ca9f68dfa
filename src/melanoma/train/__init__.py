"""One fold of a run: schedules, callbacks, the training loop, and the model families; a run's OOF gathered."""
