"""Data sets mfcvae knows how to make or read."""

from .shapes import make_shapes

__all__ = ["make_shapes"]
