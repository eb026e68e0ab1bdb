"""A folder of images (PNG, JPEG, BMP, GIF, TIFF, WebP), read with Pillow.

Two layouts: images directly in the folder (no labels), or one sub-folder per class, whose
names (sorted) become the values of the label ``label`` (images loose beside the sub-folders
are then ignored). All images must have the same
size unless ``size`` asks for a resize; they are read as RGB unless every one is greyscale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import is_int
from .base import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


GREY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _open(file: Path) -> Image.Image:
    try:
        return Image.open(file)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {file}: {err}") from err


def _pixels(file: Path, grey: bool, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8; 16-bit greyscale is scaled to 8 bits, not clipped."""
    try:
        with _open(file) as img:
            if grey and img.mode.startswith("I"):
                img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).round().astype(np.uint8))
            img = img.convert("L" if grey else "RGB")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except OSError as err:  # a truncated or corrupt file fails only when decoded
        raise ValueError(f"cannot read image {file}: {err}") from err


def load_image_folder(path: str | Path, size: int | tuple[int, int] | None = None) -> Dataset:
    """Images as (N, C, H, W) uint8 (C = 1 if all are greyscale, else 3); ``size``: resize to
    (H, W) (an int means square), bilinear. Hidden files and folders are skipped."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {path}")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and _images_in(p))
    files = [f for c in classes for f in _images_in(c)] if classes else _images_in(path)
    if not files:
        raise ValueError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         "neither directly nor in sub-folders")
    if is_int(size):
        size = (size, size)
    if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2
                                 and all(is_int(s) and s > 0 for s in size)):
        raise ValueError(f"size must be a positive integer or (height, width) of positive integers, got {size!r}")
    size = None if size is None else (int(size[0]), int(size[1]))

    modes = []
    for file in files:  # Image.open reads only the header: cheap
        with _open(file) as img:
            modes.append(img.mode)
    grey = all(m in GREY_MODES for m in modes)
    first = _pixels(files[0], grey, size)
    x = np.empty((len(files), 1 if grey else 3, *first.shape[:2]), dtype=np.uint8)  # filled in place: one copy
    for i, file in enumerate(files):
        pixels = first if i == 0 else _pixels(file, grey, size)
        if pixels.shape != first.shape:
            raise ValueError(f"{file} is {pixels.shape[1]}x{pixels.shape[0]} pixels but {files[0]} is "
                             f"{first.shape[1]}x{first.shape[0]}: pass size=... to resize them all")
        x[i] = pixels[None] if grey else pixels.transpose(2, 0, 1)
    labels = {"label": np.repeat(np.arange(len(classes)), [len(_images_in(c)) for c in classes])} if classes else {}
    return Dataset(x, labels, name=path.name)
