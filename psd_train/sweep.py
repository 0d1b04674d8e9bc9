"""Deprecated alias, kept for one release: `python -m psd_train.sweep` forwards to
`python -m psd_train.demo.sweep` (the paired-seed comparison of the demo), with the same flags,
after a one-line note on stderr. Use python -m psd_train.demo.sweep; this module goes in the
next release. It imports nothing: the trainer does not depend on the demo.
"""
import sys

from psd_train.errors import run_command

if __name__ == "__main__":
    print("python -m psd_train.sweep is deprecated and goes in the next release: use "
          "python -m psd_train.demo.sweep (forwarding there now)", file=sys.stderr)
    sys.exit(run_command("python -m psd_train.demo.sweep", "psd_train.demo.sweep:main"))
