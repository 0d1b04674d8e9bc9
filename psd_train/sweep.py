"""python -m psd_train.sweep: the paired-seed comparison, which lives in psd_train.demo.sweep."""
import sys

from psd_train.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command("python -m psd_train.sweep", "psd_train.demo.sweep:main"))
