"""python -m psd_train --help"""
from psd_train.main import main

main()
