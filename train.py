#!/usr/bin/env python
"""Train a MixPath supernet; see `python train.py --help` (the same as the `mixpath-train` command)."""
import sys

from mixpath.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
