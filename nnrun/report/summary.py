"""summary.json: the run's outcome in one small file that scripts read."""

import json
import os
from pathlib import Path


def write_summary(run_dir, summary: dict) -> Path:
    """Atomic write: a reader sees the old file or the new one, never half of one."""
    path = Path(run_dir) / "summary.json"
    tmp = path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path
