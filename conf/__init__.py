"""nnrun's Hydra configs; a package only so that they ship inside the wheel (pkg://nnrun.conf)."""
