"""Captions for the demo data: attributes measured from each image's own pixels.

Web captions are not class labels: they describe one picture, so similar pictures
get similar captions and one caption mostly fits one picture. Here every caption
names the digit and some of five attributes measured from the 32 x 32 image:

    thickness  stroke width ~ 2 * ink area / ink perimeter (a stroke of width w and
               length L has area w*L and perimeter ~2L)
    slant      shear of the ink: -cov(x, y) / var(y) over ink pixels (y grows
               downwards, so a digit whose top leans right has a negative covariance)
    size       the larger side of the ink's bounding box
    width      bounding-box width / height (narrow or wide)
    position   the ink's centre of mass, horizontally and vertically

Each continuous attribute is cut into three bins at the tertiles of its values
within the digit's class on the training split, so "thick" means thick for a seven
and each word is used about equally often in every class. Several templates word the
attributes differently and leave some out, as people do.

Run the examples: .venv/bin/python -m psd_train.demo.data --root /tmp/psd_demo --show 10
"""
from __future__ import annotations

import numpy as np

CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Zero-shot prompts, format() strings with "{}" for the class name (stored in meta.json).
ZEROSHOT_TEMPLATES = ("a handwritten {}.", "the digit {}.", "a photo of the number {}.")

ATTRIBUTES = ("thickness", "slant", "size", "width", "xpos", "ypos")

_WORDS = {
    "thickness": ("thin", "normal", "thick"),
    "slant": ("leaning left", "upright", "leaning right"),
    "size": ("small", "medium-sized", "large"),
    "width": ("narrow", "regular", "wide"),
    "xpos": ("left", "center", "right"),
    "ypos": ("top", "middle", "bottom"),
}

# Instance templates: {digit} class word, {thickness} {slant} {size} {width} words,
# {pos} a position phrase. Some templates omit attributes, so captions overlap.
INSTANCE_TEMPLATES = (
    "a {size} handwritten {digit}, {slant}, with {thickness} strokes, {pos}.",
    "{pos}: a {thickness}, {width} {digit}, {slant}.",
    "the digit {digit} written {slant} in {thickness} ink, {size}, {pos}.",
    "a {width} {digit} drawn with {thickness} lines, {pos}.",
    "handwritten number {digit}: {size}, {width}, {slant}.",
    "a {size} {digit} {pos}, {slant}, {thickness} pen.",
)

# Class-only templates (the "template" caption style).
CLASS_TEMPLATES = (
    "a handwritten {digit}.",
    "the digit {digit}.",
    "a photo of the number {digit}.",
    "a drawing of a {digit}.",
    "the number {digit}, handwritten.",
)


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Continuous attributes of uint8 images (N x H x W, ink bright on 0), one value each."""
    imgs = np.asarray(images, dtype=np.float64) / 255.0
    n, h, w = imgs.shape
    ink = imgs > 0.5
    area = ink.sum(axis=(1, 2)).astype(np.float64)
    # Perimeter: ink/background changes between 4-neighbours, the canvas border counting as background.
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    perim = (np.abs(np.diff(padded.astype(np.int8), axis=1)).sum(axis=(1, 2))
             + np.abs(np.diff(padded.astype(np.int8), axis=2)).sum(axis=(1, 2))).astype(np.float64)
    thickness = 2.0 * area / np.maximum(perim, 1.0)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    mass = np.maximum(imgs.sum(axis=(1, 2)), 1e-9)
    cx = (imgs * xs).sum(axis=(1, 2)) / mass
    cy = (imgs * ys).sum(axis=(1, 2)) / mass
    dx = xs[None] - cx[:, None, None]
    dy = ys[None] - cy[:, None, None]
    cov_xy = (imgs * dx * dy).sum(axis=(1, 2)) / mass
    var_y = np.maximum((imgs * dy * dy).sum(axis=(1, 2)) / mass, 1e-9)
    slant = -cov_xy / var_y

    rows = ink.any(axis=2)
    cols = ink.any(axis=1)
    height = np.where(rows.any(axis=1), h - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1), 0)
    width = np.where(cols.any(axis=1), w - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1), 0)
    size = np.maximum(height, width).astype(np.float64)
    aspect = width / np.maximum(height, 1)
    return {"thickness": thickness, "slant": slant, "size": size, "width": aspect,
            "xpos": cx, "ypos": cy}


def tertile_edges(values: dict[str, np.ndarray], labels: np.ndarray, num_classes: int) -> dict:
    """Per class, the 1/3 and 2/3 quantiles of each attribute: {attr: (num_classes, 2) array}.

    A class with fewer than 3 training images (tiny test builds) gets the quantiles of all classes.
    """
    edges = {}
    for name in ATTRIBUTES:
        e = np.zeros((num_classes, 2))
        for c in range(num_classes):
            v = values[name][labels == c]
            e[c] = np.quantile(v if v.size >= 3 else values[name], [1 / 3, 2 / 3])
        edges[name] = e
    return edges


def bin_attributes(values: dict[str, np.ndarray], labels: np.ndarray, edges: dict) -> dict[str, np.ndarray]:
    """Bin index 0, 1 or 2 of each attribute of each image, against its class's tertiles."""
    return {name: (values[name] > edges[name][labels, 0]).astype(np.int64)
            + (values[name] > edges[name][labels, 1]).astype(np.int64)
            for name in ATTRIBUTES}


def _position_phrase(xbin: int, ybin: int) -> str:
    if xbin == 1 and ybin == 1:
        return "in the center"
    if xbin == 1:
        return f"near the {_WORDS['ypos'][ybin]}"
    if ybin == 1:
        return f"on the {_WORDS['xpos'][xbin]}"
    return f"in the {_WORDS['ypos'][ybin]} {_WORDS['xpos'][xbin]}"


def instance_caption(label: int, bins: dict[str, int], template: int) -> str:
    """The caption of one image from its class, its attribute bins and a template index."""
    words = {name: _WORDS[name][int(bins[name])] for name in ("thickness", "slant", "size", "width")}
    words["pos"] = _position_phrase(int(bins["xpos"]), int(bins["ypos"]))
    return INSTANCE_TEMPLATES[template].format(digit=CLASSNAMES[label], **words)


def class_caption(label: int, template: int) -> str:
    """A class-only caption (the "template" style)."""
    return CLASS_TEMPLATES[template].format(digit=CLASSNAMES[label])


def make_captions(style: str, labels: np.ndarray, bins: dict[str, np.ndarray] | None,
                  rng: np.random.Generator) -> list[str]:
    """One caption per image; the template of each image is drawn from rng."""
    if style == "instance":
        if bins is None:
            raise ValueError("captions='instance' needs the attribute bins")
        choice = rng.integers(0, len(INSTANCE_TEMPLATES), size=len(labels))
        return [instance_caption(int(labels[i]), {k: v[i] for k, v in bins.items()}, int(choice[i]))
                for i in range(len(labels))]
    if style == "template":
        choice = rng.integers(0, len(CLASS_TEMPLATES), size=len(labels))
        return [class_caption(int(labels[i]), int(choice[i])) for i in range(len(labels))]
    raise ValueError(f"captions must be 'instance' or 'template', got {style!r}")
