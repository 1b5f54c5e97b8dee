"""Ray connection, settings, job submission and resource placement."""
