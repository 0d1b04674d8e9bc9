"""Evaluations on the demo data: metric definitions, an oracle model that must score 1, corruptions.

Run: .venv/bin/python -m pytest tests/test_evaluate.py -q
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from psd_train.demo.corruptions import CORRUPTIONS
from psd_train.demo.data import build_demo_data
from psd_train.demo.evaluate import evaluate, recall_at_k, training_set_metrics

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_demo_data(tmp_path_factory.mktemp("evaldata"), noise=0.5, seed=4, n_train=60, n_val=4,
                           n_test=40, progress=False)


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("open_clip", reason="needs the training extras: pip install '.[train]'")
    from psd_train.demo.model import create_demo_model
    torch.manual_seed(0)
    model, _, preprocess, tokenizer = create_demo_model()
    return model, preprocess, tokenizer


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_recall_at_k_counts_ranks_and_ties():
    sim = torch.tensor([[0.9, 0.1, 0.2],    # own pair first            -> rank 0
                        [0.5, 0.4, 0.6],    # two above                  -> rank 2
                        [0.3, 0.7, 0.7]])   # tie with the true pair     -> rank 0
    assert recall_at_k(sim, ks=(1, 2, 3)) == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 1.0})
    assert recall_at_k(sim.T, ks=(1, 2)) == pytest.approx({1: 2 / 3, 2: 1.0})  # ranks 0, 1, 0


class Oracle(torch.nn.Module):
    """Embeds what it was told: class one-hot, plus a smaller one-hot of the test pair index."""

    def __init__(self, preprocess, tokenizer, data_paths, meta):
        super().__init__()
        from PIL import Image
        test, train = _rows(data_paths["test_csv"]), _rows(data_paths["train_csv"])
        dim = NUM_CLASSES + len(test)
        self.images, self.texts = {}, {}

        def onehot(c, j=None):
            v = torch.zeros(dim)
            v[c] = 1.0
            if j is not None:
                v[NUM_CLASSES + j] = 0.5
            return v

        def pixels(r):
            return preprocess(Image.open(r["filepath"]).convert("L")).numpy().tobytes()

        for r in train:  # clean class of the image, whatever its (possibly swapped) caption says
            self.images[pixels(r)] = onehot(int(r["label"]))
        for j, r in enumerate(test):
            self.images[pixels(r)] = onehot(int(r["label"]), j)
            key = tuple(tokenizer([r["title"]])[0].tolist())
            self.texts[key] = self.texts.get(key, onehot(int(r["label"]))) + onehot(int(r["label"]), j) \
                - onehot(int(r["label"]))  # a caption shared by several test images points at all of them
        for c, name in enumerate(meta["classnames"]):
            for t in meta["templates"]:
                self.texts[tuple(tokenizer([t.format(name)])[0].tolist())] = onehot(c)
        self.dim = dim

    def _lookup(self, table, keys, normalize):
        out = torch.stack([table.get(k, torch.zeros(self.dim)) for k in keys])
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def encode_image(self, x, normalize=False):
        return self._lookup(self.images, [im.numpy().tobytes() for im in x], normalize)

    def encode_text(self, t, normalize=False):
        return self._lookup(self.texts, [tuple(row.tolist()) for row in t], normalize)


def test_oracle_scores_one(data, tiny):
    import json
    _, preprocess, tokenizer = tiny
    meta = json.loads(open(data["meta"]).read())
    oracle = Oracle(preprocess, tokenizer, data, meta)
    oracle.train()
    out = evaluate(oracle, preprocess, tokenizer, data["root"], batch_size=7)
    for key in ("zeroshot_top1", "i2t_r1", "t2i_r1", "i2t_r10", "t2i_r5", "linear_probe_top1"):
        assert out[key] == 1.0, key
    assert oracle.training
    # corrupted images are unknown to the oracle: zero embeddings, all logits tie, argmax is class 0
    frac0 = float(np.mean([int(r["label"]) == 0 for r in _rows(data["test_csv"])]))
    assert out["shift_mean_top1"] == pytest.approx(frac0)


def test_random_model_keys_ranges_determinism(data, tiny):
    model, preprocess, tokenizer = tiny
    model.train()
    a = evaluate(model, preprocess, tokenizer, data["root"], batch_size=32)
    b = evaluate(model, preprocess, tokenizer, data["root"], batch_size=100)
    names = [f"shift_{n}_top1" for n in CORRUPTIONS]
    expected = {"zeroshot_top1", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "linear_probe_top1",
                *names, "shift_mean_top1", "train_zeroshot_top1", "train_fit_r1", "memorised_r1", "swapped_true_r1"}
    assert set(a) == expected and model.training
    assert all(0.0 <= v <= 1.0 for v in a.values())
    assert a["i2t_r1"] <= a["i2t_r5"] <= a["i2t_r10"] and a["t2i_r1"] <= a["t2i_r5"] <= a["t2i_r10"]
    assert a["shift_mean_top1"] == pytest.approx(np.mean([a[n] for n in names]))
    assert a == pytest.approx(b, abs=1e-6)  # batching does not change the numbers


def _swapped_data(n=8, seed=0):
    """n training pairs with distinct true captions; rows 0-3 swapped cyclically (row takes row+1's)."""
    g = torch.Generator().manual_seed(seed)
    true_txt = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    swapped = [[0, 1], [1, 2], [2, 3], [3, 0]]
    noisy_txt = true_txt.clone()
    for row, src in swapped:
        noisy_txt[row] = true_txt[src]
    return true_txt, noisy_txt, swapped


def test_training_set_metrics_tell_memorising_from_honest():
    true_txt, noisy_txt, swapped = _swapped_data()
    # an honest model embeds each image at its true caption: no swapped caption is retrieved
    honest = training_set_metrics(true_txt, noisy_txt, swapped)
    assert honest == {"train_fit_r1": 1.0, "memorised_r1": 0.0, "swapped_true_r1": 1.0}
    # a model that memorised the training pairs embeds each image at its (noisy) caption
    memoriser = training_set_metrics(noisy_txt, noisy_txt, swapped)
    assert memoriser == {"train_fit_r1": 1.0, "memorised_r1": 1.0, "swapped_true_r1": 0.0}
    # half memorised: rows 0 and 1 at their noisy caption, rows 2 and 3 at their true one
    half = noisy_txt.clone()
    half[2:4] = true_txt[2:4]
    assert training_set_metrics(half, noisy_txt, swapped)["memorised_r1"] == 0.5


def test_training_set_metrics_without_noise_are_nan():
    true_txt, _, _ = _swapped_data()
    out = training_set_metrics(true_txt, true_txt, [])
    assert out["train_fit_r1"] == 1.0 and np.isnan(out["memorised_r1"]) and np.isnan(out["swapped_true_r1"])


def test_evaluate_reports_missing_data(tmp_path, tiny):
    from psd_train.demo.data import DemoDataError
    model, preprocess, tokenizer = tiny
    with pytest.raises(DemoDataError, match="meta.json"):
        evaluate(model, preprocess, tokenizer, tmp_path)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_deterministic_and_shifting(name, data):
    from PIL import Image
    imgs = np.stack([np.asarray(Image.open(r["filepath"])) for r in _rows(data["test_csv"])[:12]])
    before = imgs.copy()
    a, b = CORRUPTIONS[name](imgs), CORRUPTIONS[name](imgs)
    assert np.array_equal(imgs, before)  # the input is not modified
    assert a.dtype == np.uint8 and a.shape == imgs.shape and np.array_equal(a, b)
    diff = np.abs(a.astype(int) - imgs.astype(int)).mean(axis=(1, 2))
    assert (diff > 1.0).all(), name  # every image changes noticeably
    ink = (imgs > 127).sum(axis=(1, 2))
    if name == "thicken":
        assert ((a > 127).sum(axis=(1, 2)) > 1.3 * ink).all()
    if name == "translate":
        ys, xs = np.mgrid[0:32, 0:32]
        cx = lambda x: (x * xs).sum(axis=(1, 2)) / np.maximum(x.sum(axis=(1, 2)), 1)  # noqa: E731
        assert np.abs(np.abs(cx(a.astype(float)) - cx(imgs.astype(float))) - 5).max() < 2.5
