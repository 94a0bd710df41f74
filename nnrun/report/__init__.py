"""What a run shows people (console) and leaves behind for them (summary.json)."""
