"""psd_train: thin glue that plugs psd_kernels.PSDLoss into open_clip_train.

    python -m psd_train --help

The trainer:
    main.py        entry point: runs open_clip_train.main with PSD's hooks in place
    args.py        the --psd-* flags and their checks
    teachers.py    the teachers (self, EMA, previous epoch, frozen distill model)
    checkpoint.py  atomic checkpoints with PSD's state, resume checks
    datafiles.py   checks of the CSV data before training (header, columns, a bounded image sample)
    csvimages.py   CSV images that are missing or do not decode: skipped, counted, bounded
    runlog.py      psd_steps.csv, psd_metrics.csv and their CSV helpers
    console.py     framework messages whose cause psd_train knows, kept off the console

The CPU demo (data, model, evaluations, report, sweep) is the subpackage psd_train.demo.
"""
