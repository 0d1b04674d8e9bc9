"""The built-in CPU demo: captioned-MNIST data, the psd-tiny model, evaluations, report, sweep.

    python -m psd_train.demo                 # make demo: CLIP vs PSD on noisy captions (psd_train.demo.run)
    python -m psd_train.demo.data --help     # build the demo data
    python -m psd_train.demo.evaluate --help # evaluate a checkpoint on it
    python -m psd_train.demo.sweep --help    # the paired-seed comparison
    python -m psd_train.demo.report CSV      # its tables from a results.csv

It uses the trainer (psd_train) as a user would. The trainer imports nothing from here: the
demo plugs its psd-tiny model (so `--model psd-tiny` works) and the evaluations behind
--psd-eval-data in as a psd_train plugin, psd_train.demo.plugin.PLUGIN, declared in setup.py's
entry-point group psd_train.plugins and passed explicitly by the demo's own commands.
"""
