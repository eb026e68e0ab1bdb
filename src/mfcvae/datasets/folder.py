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

from .base import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _mode(file: Path) -> str:
    """The image's mode (e.g. "L", "RGB"), after checking that Pillow can decode it."""
    try:
        with Image.open(file) as img:
            img.verify()
            return img.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {file}: {err}") from err


def load_image_folder(path: str | Path, size: int | tuple[int, int] | None = None) -> Dataset:
    """Images as (N, C, H, W) uint8 (C = 1 if all are greyscale, else 3); ``size``: resize to
    (H, W) (an int means square), bilinear."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {path}")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and _images_in(p))
    if classes:
        files = [(f, label) for label, c in enumerate(classes) for f in _images_in(c)]
    else:
        files = [(f, -1) for f in _images_in(path)]
    if not files:
        raise ValueError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         "neither directly nor in sub-folders")
    if isinstance(size, int):
        size = (size, size)

    modes = [_mode(file) for file, _ in files]  # headers only: cheap
    grey = all(m in ("1", "L", "LA") for m in modes)
    arrays = []
    for file, _ in files:
        try:
            with Image.open(file) as img:
                img = img.convert("L" if grey else "RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {file}: {err}") from err
        if size is not None:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(f"{file} is {array.shape[1]}x{array.shape[0]} pixels but {files[0][0]} is "
                             f"{arrays[0].shape[1]}x{arrays[0].shape[0]}: pass size=... to resize them all")
        arrays.append(array)
    x = np.stack(arrays)
    x = x[:, None] if grey else x.transpose(0, 3, 1, 2)
    labels = {"label": np.array([label for _, label in files], dtype=np.int64)} if classes else {}
    return Dataset(np.ascontiguousarray(x), labels, name=path.name)
