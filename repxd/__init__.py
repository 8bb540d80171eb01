"""repx daemon and engine: Lab loading, execution and (later) the service roles."""

__version__ = "0.1.0"
