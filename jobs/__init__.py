"""Ray job entrypoints: thin scripts over the ``moaa`` library (``python -m jobs.<name>``)."""
