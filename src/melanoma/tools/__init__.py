"""Demo data, benchmarks, a config's description and the notebook installer."""
