"""Distribution-shift sets: deterministic corruptions of the held-out demo images.

Each corruption maps uint8 images (N x H x W, ink bright on a black background) to
uint8 images of the same shape. Randomness comes from a generator with a fixed seed
per corruption, so every call returns the same images. Severities
are moderate on purpose: a shift set is informative only when a trained model
lands well between chance (10 %) and its clean accuracy. Calibrated on psd-tiny trained
12 epochs on clean instance captions (54.4 % clean zero-shot): rotate 38.8, noise 29.4,
blur 40.2, contrast 24.4, fade 38.6, thicken 28.6, occlude 29.6, translate 31.0 %.

    rotate     +-25 degrees, alternating sign (training data is never rotated on purpose)
    noise      additive Gaussian noise, sigma = 0.05 of the intensity range (the background
               is no longer exactly 0, which the demo model never saw)
    blur       Gaussian blur, sigma = 1.5 px
    contrast   (x - mean) * 0.7 + mean with the image's own mean (ImageNet-C style: lowers the
               ink and lifts the background)
    fade       x * 0.5: fainter ink on the same black background
    thicken    3 x 3 grey dilation: every stroke about 2 px thicker
    occlude    a 10 x 10 black square centred on a random ink pixel
    translate  shift by 5 px diagonally (sign alternating), beyond the +-3 px of training

Used by psd_train.demo.evaluate; test: .venv/bin/python -m pytest tests/test_evaluate.py -q
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage


def _as_float(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float64) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def rotate(images: np.ndarray) -> np.ndarray:
    out = [ndimage.rotate(im.astype(np.float64), 25.0 if i % 2 == 0 else -25.0, reshape=False, order=1,
                          mode="constant", cval=0.0) for i, im in enumerate(images)]
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def noise(images: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)  # fixed: the same noise on every call
    x = _as_float(images)
    return _to_uint8(x + rng.normal(0.0, 0.05, size=x.shape))


def blur(images: np.ndarray) -> np.ndarray:
    return _to_uint8(ndimage.gaussian_filter(_as_float(images), sigma=(0, 1.5, 1.5)))


def contrast(images: np.ndarray) -> np.ndarray:
    x = _as_float(images)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - mean) * 0.7 + mean)


def fade(images: np.ndarray) -> np.ndarray:
    return _to_uint8(_as_float(images) * 0.5)


def thicken(images: np.ndarray) -> np.ndarray:
    return ndimage.grey_dilation(np.asarray(images), size=(1, 3, 3))


def occlude(images: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(5)  # fixed: the same squares on every call
    out = np.array(images, copy=True)
    n, h, w = out.shape
    side = 10
    for i in range(n):
        rows, cols = np.nonzero(out[i] > 127)
        # the square is centred on a random ink pixel (anywhere when there is no ink)
        j = rng.integers(0, rows.size) if rows.size else None
        cy, cx = (rows[j], cols[j]) if j is not None else (rng.integers(0, h), rng.integers(0, w))
        top, left = max(0, cy - side // 2), max(0, cx - side // 2)
        out[i, top:top + side, left:left + side] = 0
    return out


def translate(images: np.ndarray) -> np.ndarray:
    out = np.zeros_like(np.asarray(images))
    d = 5
    for i, im in enumerate(images):
        s = d if i % 2 == 0 else -d
        if s > 0:
            out[i, s:, s:] = im[:-s, :-s]
        else:
            out[i, :s, :s] = im[-s:, -s:]
    return out


CORRUPTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rotate": rotate, "noise": noise, "blur": blur, "contrast": contrast, "fade": fade,
    "thicken": thicken, "occlude": occlude, "translate": translate,
}
