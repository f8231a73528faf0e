"""Layout-family readers. ``read_source`` dispatches on the spec's ``layout.family``."""
