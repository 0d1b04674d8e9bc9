"""python -m psd_train --help"""
import sys

from psd_train.errors import run_command

sys.exit(run_command("python -m psd_train", "psd_train.main:main"))
