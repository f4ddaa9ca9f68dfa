"""What every stage uses: errors, the config, file I/O, CSV tables, metrics, progress, the environment and
the machine. Nothing here knows of runs (runs/) or of any stage."""
