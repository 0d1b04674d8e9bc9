"""python -m psd_train.demo (what `make demo` runs): see psd_train.demo.run."""
from psd_train.demo.run import main

main()
