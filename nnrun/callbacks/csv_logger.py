"""metrics.csv: one row per epoch, fixed columns; always on (Keras CSVLogger)."""

import csv

from nnrun.callbacks.base import CALLBACKS, Callback, keep_lines
from nnrun.runfolder import open_file
from nnrun.safety import relative_name


@CALLBACKS.register("csv_logger")
class CSVLogger(Callback):
    def __init__(self, filename="metrics.csv"):
        self.filename = relative_name(filename, "callbacks.csv_logger.filename")

    def on_train_begin(self, logs):
        self.file = self.writer = None
        self.rows = 0

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        # rows written after the checkpoint (the run was killed before saving) are written again;
        # no file (a DDP rank's scratch folder): a new one, header first
        self.on_train_begin({})
        self.rows = state["rows"]
        path = self.run_dir / self.filename
        if self.rows and path.exists():
            keep_lines(path, 1 + self.rows)
            with open(path, newline="") as f:
                columns = next(csv.reader(f))
            self.file = open_file(path, "a")
            self.writer = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")

    def on_epoch_end(self, epoch, logs):
        row = {"epoch": epoch, **logs}
        if self.writer is None:  # columns known once the first epoch logged them, in its order
            columns = list(row)
            (self.run_dir / self.filename).parent.mkdir(parents=True, exist_ok=True)
            self.file = open_file(self.run_dir / self.filename, "w")
            self.writer = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        self.file.flush()  # a killed run keeps every finished epoch
        self.rows += 1

    def on_train_end(self, logs):
        if self.file is not None:
            self.file.close()
