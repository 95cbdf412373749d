"""scanpixd: a local photo library index that lives beside the photos."""

__version__ = "0.1.0"
