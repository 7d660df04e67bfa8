"""The package version (one place; read by the CLI and by packaging)."""

__version__ = "0.1.0"
