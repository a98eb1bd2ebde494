"""The package version, kept apart so the build reads it without importing qp2p."""

__version__ = "0.1.0"
