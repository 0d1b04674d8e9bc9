"""python -m psd_train.demo (what `make demo` runs): see psd_train.demo.run."""
import sys

from psd_train.errors import run_command

sys.exit(run_command("python -m psd_train.demo", "psd_train.demo.run:main"))
