"""Evaluations of a CLIP model on the demo data (psd_train.demo.data).

    zeroshot_top1        test images classified by the cosine similarity to class embeddings
                         built by open_clip.build_zero_shot_classifier from meta.json's class
                         names and prompt templates (the mean of the normalised prompt embeddings)
    i2t_r{1,5,10}        each test image ranks the test captions: a hit when its own caption is
    t2i_r{1,5,10}        among the top k; ties are resolved in the query's favour (only scores
                         strictly above the true pair's push it down), so an identical caption of
                         another image does not count as a miss
    linear_probe_top1    multinomial logistic regression (L2 1e-3, L-BFGS in float64) on standardised
                         frozen image embeddings: fit on the training images with their true
                         classes (caption noise does not touch them), scored on the test images
    shift_<name>_top1    zero-shot top-1 on each corrupted copy of the test images
    shift_mean_top1      (psd_train.demo.corruptions) and their mean

On the training set (what the model was fit to, with its noisy captions; meta.json's
"swapped" rows say which captions were swapped in):
    train_zeroshot_top1  zero-shot top-1 on the training images against their true classes
    train_fit_r1         clean training pairs whose image ranks its own caption first among
                         all training captions (how well the clean pairs are fit)
    memorised_r1         swapped training pairs whose image ranks its swapped-in, wrong
                         caption first among all training captions (memorised noise)
    swapped_true_r1      swapped training images that rank their true caption (which another
                         row now carries) first
memorised_r1 and swapped_true_r1 are NaN on data without swapped captions.

All accuracies are fractions in [0, 1]. The model is put in eval mode and restored.

Run (a random psd-tiny, so about chance):
    .venv/bin/python -m psd_train.demo.evaluate --data data/psd_demo
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from psd_train.demo.corruptions import CORRUPTIONS
from psd_train.checkpoint import CheckpointError, load_checkpoint
from psd_train.demo.data import DemoDataError, check_demo_data
from psd_train.errors import run_command

RECALL_KS = (1, 5, 10)
_CACHE: dict = {}


def _read_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r["filepath"] for r in rows], [r["title"] for r in rows], np.array([int(r["label"]) for r in rows])


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (OSError, ValueError) as e:
        raise DemoDataError(f"cannot read demo image {path} ({e}); rebuild the data with overwrite=True") from e


def load_eval_data(data_root) -> dict:
    """Test and train arrays of a checked demo build, cached per (root, meta.json contents)."""
    root = Path(data_root).resolve()
    meta = check_demo_data(root, images=False)  # build_demo_data checked the images; reading 5000
    # files every epoch would cost more than the evaluation
    key = (str(root), json.dumps(meta["files"], sort_keys=True))
    if key not in _CACHE:
        _CACHE.clear()
        data = {"meta": meta}
        for split in ("train", "test"):
            paths, titles, labels = _read_csv(root / f"{split}.csv")
            data[split] = {"images": np.stack([_read_image(p) for p in paths]), "titles": titles, "labels": labels}
        _CACHE[key] = data
    return _CACHE[key]


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr, leave=False)
    return starts


def preprocess_images(preprocess, images: np.ndarray) -> torch.Tensor:
    """preprocess applied to each uint8 H x W array (as a PIL grayscale image), stacked."""
    return torch.stack([preprocess(Image.fromarray(im, mode="L")) for im in images])


def _pixels(data: dict, preprocess, name: str, make) -> torch.Tensor:
    """Preprocessed pixels of one image set, kept for the latest preprocess object only (about
    100 MB for the full demo): evaluate() runs every epoch on the same images, and the eval
    transform is deterministic."""
    if data.get("preprocess") is not preprocess:
        data["preprocess"], data["pixels"] = preprocess, {}
    if name not in data["pixels"]:
        data["pixels"][name] = preprocess_images(preprocess, make())
    return data["pixels"][name]


@torch.no_grad()
def encode_images(model, pixels: torch.Tensor, *, device, batch_size: int, progress: bool = False,
                  desc: str = "images") -> torch.Tensor:
    """L2-normalised image embeddings (N x D, float32 on CPU) of preprocessed pixels."""
    out = []
    for s in _batches(len(pixels), batch_size, progress, desc):
        out.append(model.encode_image(pixels[s:s + batch_size].to(device), normalize=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenizer, titles: list[str], *, device, batch_size: int, progress: bool = False
                 ) -> torch.Tensor:
    """L2-normalised text embeddings (N x D, float32 on CPU)."""
    out = []
    for s in _batches(len(titles), batch_size, progress, "captions"):
        out.append(model.encode_text(tokenizer(titles[s:s + batch_size]).to(device), normalize=True).float().cpu())
    return torch.cat(out)


def recall_at_k(sim: torch.Tensor, ks=RECALL_KS) -> dict[int, float]:
    """Rows are queries, the true match of row i is column i: fraction with rank < k.

    rank_i = #{j : sim_ij > sim_ii}, so ties with the true pair count in its favour.
    """
    rank = (sim > sim.diagonal()[:, None]).sum(dim=1)
    return {k: float((rank < k).double().mean()) for k in ks}


def linear_probe(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray,
                 l2: float = 1e-3) -> float:
    """Top-1 of a multinomial logistic regression on standardised features (float64, L-BFGS).

    Minimises mean_i CE(W z_i + b, y_i) + l2/2 * ||W||^2 with z the features standardised by
    the training mean and std. The problem is strictly convex; at most 100 L-BFGS iterations
    from zeros (deterministic) bring it close enough to its optimum for a top-1 score.
    """
    x = train_x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    z, zt = (x - mean) / std, (test_x.double() - mean) / std
    y = torch.as_tensor(train_y)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=100, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((zt @ w + b).argmax(1).numpy() == test_y).mean())


def training_set_metrics(img: torch.Tensor, txt: torch.Tensor, swapped) -> dict[str, float]:
    """train_fit_r1, memorised_r1 and swapped_true_r1 (module docstring) from the training
    images' and (noisy) captions' embeddings, row i = training pair i, and meta.json's
    "swapped" list of (row, source row): row's caption is source row's true caption.
    Ranks count only strictly higher scores, as recall_at_k does."""
    n = len(img)
    sim = img @ txt.T
    rank = (sim > sim.diagonal()[:, None]).sum(dim=1)
    pairs = torch.as_tensor(np.asarray(swapped, dtype=np.int64).reshape(-1, 2))
    rows, src = pairs[:, 0], pairs[:, 1]
    clean = torch.ones(n, dtype=torch.bool)
    clean[rows] = False
    nan = float("nan")
    out = {"train_fit_r1": float((rank[clean] == 0).double().mean()) if clean.any() else nan,
           "memorised_r1": nan, "swapped_true_r1": nan}
    if len(pairs):
        holder = torch.empty(n, dtype=torch.long)
        holder[src] = rows  # the true caption of image src is now the caption of row `row`
        true_col = holder[rows]
        true_rank = (sim[rows] > sim[rows, true_col][:, None]).sum(dim=1)
        out["memorised_r1"] = float((rank[rows] == 0).double().mean())
        out["swapped_true_r1"] = float((true_rank == 0).double().mean())
    return out


def evaluate(model, preprocess, tokenizer, data_root, *, device="cpu", batch_size: int = 256,
             progress: bool = False) -> dict[str, float]:
    """All demo evaluations (see the module docstring) as {name: fraction}."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    data = load_eval_data(data_root)
    meta, test, train = data["meta"], data["test"], data["train"]
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    was_training = model.training
    model.eval()
    try:
        enc = dict(device=device, batch_size=batch_size, progress=progress)
        classifier = build_zero_shot_classifier(model, tokenizer, meta["classnames"], meta["templates"],
                                                num_classes_per_batch=None, device=device).float().cpu()
        labels = torch.as_tensor(test["labels"])

        def zeroshot(feats: torch.Tensor) -> float:
            return float(((feats @ classifier).argmax(dim=1) == labels).float().mean())

        img = encode_images(model, _pixels(data, preprocess, "test", lambda: test["images"]), desc="test images",
                            **enc)
        txt = encode_texts(model, tokenizer, test["titles"], **enc)
        out = {"zeroshot_top1": zeroshot(img)}
        sim = img @ txt.T
        for name, s in (("i2t", sim), ("t2i", sim.T)):
            out.update({f"{name}_r{k}": v for k, v in recall_at_k(s).items()})

        train_img = encode_images(model, _pixels(data, preprocess, "train", lambda: train["images"]),
                                  desc="train images", **enc)
        out["linear_probe_top1"] = linear_probe(train_img, train["labels"], img, test["labels"])
        train_labels = torch.as_tensor(train["labels"])
        out["train_zeroshot_top1"] = float(((train_img @ classifier).argmax(dim=1) == train_labels).float().mean())
        train_txt = encode_texts(model, tokenizer, train["titles"], **enc)
        out.update(training_set_metrics(train_img, train_txt, meta["swapped"]))

        shifts = []
        for name, corrupt in CORRUPTIONS.items():
            pixels = _pixels(data, preprocess, name, lambda: corrupt(test["images"]))
            feats = encode_images(model, pixels, desc=f"shift {name}", **enc)
            out[f"shift_{name}_top1"] = zeroshot(feats)
            shifts.append(out[f"shift_{name}_top1"])
        out["shift_mean_top1"] = float(np.mean(shifts))
    finally:
        model.train(was_training)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m psd_train.demo.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a demo data root (python -m psd_train.demo.data)")
    p.add_argument("--model", default="psd-tiny")
    p.add_argument("--checkpoint", default=None, help="an open_clip_train checkpoint (state_dict key)")
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args(argv)
    from psd_train.demo.model import create_demo_model
    state = load_checkpoint(a.checkpoint) if a.checkpoint else None
    model, _, preprocess, tokenizer = create_demo_model(a.model)
    if state is not None:
        state = state.get("state_dict", state)
        try:
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        except RuntimeError as exc:
            raise CheckpointError(f"--checkpoint {a.checkpoint} does not hold a --model {a.model} state_dict "
                                  f"({str(exc).splitlines()[0]})") from exc
    for k, v in evaluate(model, preprocess, tokenizer, a.data, batch_size=a.batch_size, progress=True).items():
        print(f"{k:24s} {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("python -m psd_train.demo.evaluate", "psd_train.demo.evaluate:main"))
