"""The nnrun command: the console script `nnrun` and `python -m nnrun` (the working folder left
sys.path in nnrun/__init__.py)."""

import sys

from nnrun.launch import main as launch


def main() -> None:
    sys.exit(launch(sys.argv[1:]))


if __name__ == "__main__":
    main()
