"""`python -m nnrun` does what the `nnrun` command does."""

from nnrun.cli import main  # the working folder left sys.path in nnrun/__init__.py

main()
