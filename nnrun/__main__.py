"""`python -m nnrun` does what the `nnrun` command does."""

from nnrun.cli import main

main()
