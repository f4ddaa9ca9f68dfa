"""What every stage uses: errors, the config, file I/O, a run's folder, metrics, the machine."""
