"""lr.csv: the learning rate of every optimizer step (Lightning's LearningRateMonitor), for
schedulers that change it within an epoch; metrics.csv keeps the rate each epoch started with.
Columns batch,epoch,lr, then lr_<name> for each further parameter group (lr_backbone: 0 while frozen)."""

from nnrun.callbacks.base import CALLBACKS, Callback, keep_lines
from nnrun.runfolder import open_file
from nnrun.safety import relative_name


@CALLBACKS.register("lr_monitor")
class LRMonitor(Callback):
    def __init__(self, filename="lr.csv"):
        self.filename = relative_name(filename, "callbacks.lr_monitor.filename")

    def on_train_begin(self, logs):
        self.rows, self.batch = [], 0
        (self.run_dir / self.filename).parent.mkdir(parents=True, exist_ok=True)
        with open_file(self.run_dir / self.filename, "w") as f:
            f.write(",".join(["batch", "epoch", "lr", *group_rates(self.optimizer)]) + "\n")

    def state_dict(self) -> dict:
        return {"batch": self.batch, "rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        # lr.csv keeps the rows written before the checkpoint; rows after it are written again
        self.batch, self.rows = state["batch"], list(state["rows"])
        keep_lines(self.run_dir / self.filename, 1 + self.batch - len(self.rows))

    def on_epoch_begin(self, epoch, logs):
        self.epoch, self.frozen = epoch, frozen_groups(self.optimizer)  # a backbone (un)freezes at an epoch's start
        self.lr, self.rates = self.optimizer.param_groups[0]["lr"], self.others()

    def on_train_batch_end(self, batch, logs):
        # the rates this batch used; a per-step scheduler has already set the next ones
        self.batch += 1
        self.rows.append(f"{self.batch},{self.epoch},{self.lr!r}{self.rates}\n")
        self.lr, self.rates = self.optimizer.param_groups[0]["lr"], self.others()  # Python floats: no device sync

    def others(self) -> str:
        """The further groups' columns of a row ("" with one group)."""
        return "".join(f",{rate!r}" for rate in group_rates(self.optimizer, self.frozen).values())

    def on_epoch_end(self, epoch, logs):
        with open_file(self.run_dir / self.filename, "a") as f:
            f.writelines(self.rows)
        self.rows = []


def group_rates(optimizer, frozen=None) -> dict:
    """lr.csv's and metrics.csv's columns past lr (the first group's rate): lr_<name> for each further
    parameter group (lr_backbone), 0 while the group's parameters are all frozen. frozen: the flags
    frozen_groups() gave, so that a batch does not look at every parameter."""
    groups = optimizer.param_groups[1:]
    frozen = frozen_groups(optimizer) if frozen is None else frozen
    return {
        f"lr_{group.get('name') or f'group{i}'}": 0.0 if still else group["lr"]
        for i, (group, still) in enumerate(zip(groups, frozen), start=1)
    }


def frozen_groups(optimizer) -> list:
    """For each parameter group past the first: whether none of its parameters trains now."""
    return [not any(p.requires_grad for p in group["params"]) for group in optimizer.param_groups[1:]]
