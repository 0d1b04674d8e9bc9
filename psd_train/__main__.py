"""python -m psd_train --help"""
import sys

from psd_train.errors import run_command
from psd_train.main import main

sys.exit(run_command("python -m psd_train", main))
