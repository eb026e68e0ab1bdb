"""Data sets mfcvae knows how to make or read. Every reader returns (inputs, labels):
inputs a float32 array in [0, 1] (or the file's values for .npy/.npz), labels a dict of
name -> (N,) int array, used for evaluation only."""

from .arrays import load_arrays
from .idx import load_idx, read_idx
from .shapes import make_shapes

__all__ = ["load_arrays", "load_idx", "make_shapes", "read_idx"]
