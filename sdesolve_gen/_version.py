"""The single source of the package version (read statically by setup.cfg; do not import here)."""

__version__ = "0.2.0"
