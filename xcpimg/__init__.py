"""xcpimg: build and verify XCP-ng installation media."""

__version__ = "0.1.0"
