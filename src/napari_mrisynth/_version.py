"""The package version: one source, read by the build (pyproject.toml) and the code."""

__version__ = "0.1.0"
