"""Darkroom: asynchronous image processing as small Falcon services."""

__version__ = "0.1.0"
