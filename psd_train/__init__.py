"""psd_train: thin glue that plugs psd_kernels.PSDLoss into open_clip_train.

    python -m psd_train --help
"""
