"""`python -m nnrun` does what the `nnrun` command does."""

import os
import sys

# `python -m` puts the working folder first on sys.path: a file there named like one of torch's
# optional imports (dill.py, pynvml.py) would run. The console script never has it.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from nnrun.cli import main  # noqa: E402

main()
