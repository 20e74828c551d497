"""Natural-image patches from the pictures that ship with scikit-image (offline).

A second small image task beside digits, for attack experiments: ten bundled photographs
(``skimage.data``), each converted to grey, resized so that its shorter side is
``grid × size``, centre-cropped to a square and cut into ``grid × grid`` non-overlapping
``size × size`` patches; the label of a patch is the picture it comes from (texture/scene
classification). Pixels in [0, 1]. The train/test split is stratified with a fixed seed,
so every run tests on the same patches; no patch overlaps another.
"""

from __future__ import annotations

import functools

import numpy as np
from pydantic import Field

from fedsim.data.datasets import Dataset, _finish
from fedsim.registry import Params, register

PICTURES = ("camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "moon", "coins")
_PATCHES_SPLIT_SEED = 0


class PatchesParams(Params):
    size: int = Field(16, ge=4, le=64, description="patch side in pixels")
    grid: int = Field(16, ge=1, le=64, description="patches per side of each picture")
    test_fraction: float = Field(0.2, gt=0, lt=1)


@register("dataset", "patches", params=PatchesParams)
def patches(params: PatchesParams, seed: int) -> Dataset:
    """Grey patches of ten scikit-image photographs, labelled by picture (needs scikit-image)."""
    return _patches(params.size, params.grid, params.test_fraction)


@functools.lru_cache(maxsize=4)
def _patches(size: int, grid: int, test_fraction: float) -> Dataset:
    try:
        from skimage import color, data, transform
    except ImportError as exc:  # an optional dependency: pip install fedsim[attacks]
        raise ValueError("dataset 'patches' needs scikit-image (pip install 'fedsim[attacks]')") from exc
    from sklearn.model_selection import train_test_split

    side = grid * size
    xs, ys = [], []
    for label, name in enumerate(PICTURES):
        image = getattr(data, name)()
        if image.ndim == 3:
            image = color.rgb2gray(image[..., :3])
        image = image.astype(np.float64)
        if image.max() > 1:
            image = image / 255.0
        h, w = image.shape
        scale = side / min(h, w)
        image = transform.resize(image, (max(side, round(h * scale)), max(side, round(w * scale))), anti_aliasing=True)
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        square = image[top : top + side, left : left + side]
        tiles = square.reshape(grid, size, grid, size).transpose(0, 2, 1, 3).reshape(grid * grid, 1, size, size)
        xs.append(tiles)
        ys.append(np.full(grid * grid, label))
    x, y = np.concatenate(xs).clip(0, 1), np.concatenate(ys)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=_PATCHES_SPLIT_SEED
    )
    return _finish(x_train, y_train, x_test, y_test, num_classes=len(PICTURES))
