"""python -m psd_train.sweep: the paired-seed comparison, which lives in psd_train.demo.sweep."""
import sys

from psd_train.demo.sweep import main

if __name__ == "__main__":
    sys.exit(main())
