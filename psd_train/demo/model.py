"""The tiny open_clip model of the demo: "psd-tiny", a CLIP that trains on 2 CPU cores.

    register_demo_models()          adds psd_train/demo/model_configs/*.json to open_clip's registry
    create_demo_model()             model, train/val preprocess and tokenizer, with the demo normalisation
    TRAIN_FLAGS                     the open_clip_train flags that select it

psd-tiny (psd_train/demo/model_configs/psd-tiny.json): a 3-layer ViT of width 128 on 32 x 32
images with 8 x 8 patches (16 tokens) and average pooling, a 3-layer text transformer
of width 128 with a 24-token context (the longest demo caption is 21 tokens with the
start/end tokens), 64-d embeddings. Why (facts from an earlier trial on 4000 MNIST
images, batch 128, 12 epochs, 2 cores): with 4 x 4 patches and CLIP's mean/std
normalisation the model collapsed to constant features (loss stuck at ln 128); 8 x 8
patches, average pooling, a normalisation that keeps the black background at 0 and a
short warmup made it learn.

The normalisation is mean 0, std 1 (pixels in [0, 1], background 0). open_clip 3.3.0
does not read a "preprocess_cfg" from a built-in model config (factory.create_model
takes mean/std only from pretrained tags, local-dir/hf-hub configs or the image_mean /
image_std arguments), so it must be passed: create_demo_model() does, and a trainer
run needs TRAIN_FLAGS' --image-mean 0 0 0 --image-std 1 1 1.

Check: .venv/bin/python -c "from psd_train.demo.model import *; register_demo_models(); print(create_demo_model()[1])"
"""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
DEMO_MODEL = "psd-tiny"
IMAGE_MEAN = (0.0, 0.0, 0.0)
IMAGE_STD = (1.0, 1.0, 1.0)
TRAIN_FLAGS = ("--model", DEMO_MODEL,
               "--image-mean", *map(str, IMAGE_MEAN), "--image-std", *map(str, IMAGE_STD))


def register_demo_models() -> list[str]:
    """Add the configs in psd_train/demo/model_configs to open_clip's registry (idempotent); their names."""
    import open_clip
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if not all(n in open_clip.list_models() for n in names):
        open_clip.add_model_config(CONFIG_DIR)
    return names


def create_demo_model(name: str = DEMO_MODEL, device="cpu", **model_kwargs):
    """(model, preprocess_train, preprocess_val, tokenizer) of a registered demo model, randomly initialised;
    model_kwargs as open_clip_train passes them (--siglip: init_logit_scale=log(10), init_logit_bias=-10)."""
    import open_clip
    register_demo_models()
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        name, device=device, image_mean=IMAGE_MEAN, image_std=IMAGE_STD, **model_kwargs)
    return model, preprocess_train, preprocess_val, open_clip.get_tokenizer(name)
