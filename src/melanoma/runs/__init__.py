"""The run store, on core alone: a run's paths (layout), the config it is bound to, its results read back, a
fold's resumable state, the one-writer lock, and seed runs."""
