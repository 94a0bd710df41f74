"""The training loop, its metrics and checkpoint files."""
