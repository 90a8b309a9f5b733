"""`python -m mixpath ...` is the `mixpath` command."""
import sys

from .cli import main

sys.exit(main())
