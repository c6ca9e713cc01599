"""Data files shipped with the sidecar (read with importlib.resources)."""
