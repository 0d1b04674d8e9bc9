"""The built-in CPU demo: captioned-MNIST data, the psd-tiny model, evaluations, report, sweep.

    python -m psd_train.demo                 # make demo: CLIP vs PSD on noisy captions (psd_train.demo.run)
    python -m psd_train.demo.data --help     # build the demo data
    python -m psd_train.demo.evaluate --help # evaluate a checkpoint on it
    python -m psd_train.sweep --help         # the paired-seed comparison (psd_train.demo.sweep)

It uses the trainer (psd_train) as a user would; the trainer imports from here only the
psd-tiny model config (so `--model psd-tiny` works) and the evaluations behind --psd-eval-data.
"""
