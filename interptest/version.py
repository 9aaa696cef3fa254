"""The package version, in one place (the results.json and report headers read it)."""

__version__ = "0.1.0"
