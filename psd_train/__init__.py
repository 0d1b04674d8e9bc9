"""psd_train: thin glue that plugs psd_kernels.PSDLoss into open_clip_train.

    python -m psd_train --help

The trainer:
    main.py        entry point: runs open_clip_train.main with PSD's hooks in place
    plugins.py     the hook for models and --psd-eval-data evaluations from other packages
                   (entry-point group psd_train.plugins; the demo registers itself there)
    args.py        the --psd-* flags and their checks
    loss_from_flags.py  PSDLoss (psd_kernels) built from the --psd-* flags
    teachers.py    the teachers (self, EMA, previous epoch, frozen distill model)
    checkpoint.py  atomic checkpoints with PSD's state, resume checks
    datafiles.py   checks of the CSV data before training (header, columns, a bounded image sample)
    csvimages.py   CSV images that are missing or do not decode: skipped, counted, bounded
    runlog.py      psd_steps.csv, psd_metrics.csv and their CSV helpers
    console.py     framework messages whose cause psd_train knows, kept off the console

The CPU demo (data, model, evaluations, report, sweep) is the subpackage psd_train.demo; it uses
the trainer as a user would and plugs its model and evaluations in as a plugin
(psd_train.demo.plugin). No trainer module imports from psd_train.demo.
"""
