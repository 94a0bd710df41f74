"""Stop signals become a request the training loop reads between steps, so the step under way
finishes, the state is saved and the run exits as 128 + the signal's number (130 for Ctrl-C,
143 for SIGTERM). A second signal while stopping is only acknowledged: nothing is cut short."""

import logging
import signal
import sys
from contextlib import contextmanager


class StopRequest:
    def __init__(self, quiet: bool = False):
        self.signum, self.quiet = None, quiet  # quiet: a DDP rank other than 0 (rank 0 tells)
        self.note = None  # what handle() told the console, for nnrun.log

    def __call__(self):
        """The number of the signal asking to stop, or None."""
        if self.note is not None:  # logged here, not in the handler: logging takes locks a handler may interrupt
            logging.getLogger("nnrun").warning(self.note, extra={"file_only": True})
            self.note = None
        return self.signum

    def handle(self, signum, frame):
        if self.quiet:
            self.signum = self.signum or signum
        elif self.signum is None:
            self.signum = signum
            doing = "stopping the data reading" if reading else "finishing this step and saving"
            self.note = f"{signal.Signals(signum).name} received: {doing} (a second signal changes nothing)"
            print(f"nnrun: {self.note}", file=sys.stderr, flush=True)
        else:
            print("nnrun: already stopping; saving the checkpoint", file=sys.stderr, flush=True)


_ACTIVE = None  # the StopRequest of the run under way: long work before training (decoding) reads it
reading = False  # true while the data is read (decoding images): a stop then has nothing to save


def requested():
    """The number of the signal asking the run under way to stop, or None."""
    return _ACTIVE() if _ACTIVE is not None else None


@contextmanager
def stop_signals(requeue=None, quiet: bool = False):
    """Catch SIGINT, SIGTERM and the optional requeue signal (e.g. SIGUSR1 on SLURM) while inside;
    quiet: say nothing when one arrives."""
    global _ACTIVE
    request = StopRequest(quiet)
    _ACTIVE = request
    names = ["SIGINT", "SIGTERM"] + ([requeue] if requeue else [])
    previous = {}
    for name in names:
        number = getattr(signal, name)
        previous[number] = signal.signal(number, request.handle)
    try:
        yield request
    finally:
        _ACTIVE = None
        for number, handler in previous.items():
            # once stopping, a late second signal must not turn into a KeyboardInterrupt on the way out
            signal.signal(number, signal.SIG_IGN if request.signum is not None else handler)


def signal_number(name, key: str = "trainer.requeue_signal"):
    """Check a signal name from the config (None allowed)."""
    if name is None:
        return None
    from nnrun.errors import ConfigError

    if (
        not isinstance(name, str)
        or not name.startswith("SIG")
        or not hasattr(signal, name)
        or name in ("SIGKILL", "SIGSTOP")
    ):
        raise ConfigError(f"{key}={name} is not a signal nnrun can catch; use e.g. SIGUSR1 or SIGUSR2")
    return name
