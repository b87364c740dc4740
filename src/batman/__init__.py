"""batman: see motion in the dark. Low-light RAW video to clean, temporally stable sRGB video."""
__version__ = "0.1.0"
