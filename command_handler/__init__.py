"""The open-bank command handler in Python."""

__version__ = "0.1.0"
