#!/usr/bin/env python
"""Train a MixPath supernet; see `python train.py --help` (the same as `mixpath train`)."""
import sys

from mixpath.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
