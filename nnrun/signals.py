"""Stop signals become a request the training loop reads between steps, so the step under way
finishes, the state is saved and the run exits as 128 + the signal's number (130 for Ctrl-C,
143 for SIGTERM). A second signal while stopping is only acknowledged: nothing is cut short.
A handler the caller had installed (nnrun.fit in a script) is called after the request is noted.
A sweep's stop lives outside its jobs (SweepStop): jobs not started yet do not start."""

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

from nnrun.errors import ConfigError

STOPS = ("SIGINT", "SIGTERM")


class StopRequest:
    def __init__(self, quiet: bool = False):
        self.signum, self.quiet = None, quiet  # quiet: a DDP rank other than 0, or a sweep's worker (the parent tells)
        self.chained = {}  # signal number -> the handler that was there before, to call too
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
        handler = self.chained.get(signum)
        if isinstance(getattr(handler, "__self__", None), SweepStop):
            handler(signum, frame)  # nnrun's own (a sweep worker's): it only notes the stop
        elif handler is not None:  # a caller's: called once the run has saved (nnrun.fit), not mid-step,
            OWED.append(signum)  # where one that exits would cut the step and the save short


OWED = []  # signals that reached a run while a caller's own handler was installed (see owed)


def owed() -> list:
    """The signals whose caller's handler is still to be called, in order; the list is emptied."""
    found, OWED[:] = list(OWED), []
    return found


def chainable(handler) -> bool:
    """A handler someone installed in Python: called too, and put back after a stop. Python's own
    SIGINT handler is not: it would raise KeyboardInterrupt in the middle of a step."""
    return callable(handler) and handler is not signal.default_int_handler


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
    names = list(STOPS) + ([requeue] if requeue else [])
    previous = {}
    for name in names:
        number = getattr(signal, name)
        previous[number] = signal.signal(number, request.handle)
    request.chained = {number: handler for number, handler in previous.items() if chainable(handler)}
    try:
        yield request
    finally:
        _ACTIVE = None
        for number, handler in previous.items():
            # once stopping, a late second signal must not turn into a KeyboardInterrupt on the way out
            stopping = request.signum is not None and not chainable(handler)
            signal.signal(number, signal.SIG_IGN if stopping else handler)


class SweepStop:
    """A sweep's stop signal, outside its jobs. In the command's process (forward=True) it is told
    once and passed on to the launcher's worker processes, which save and stop their jobs; in a
    worker it is remembered between jobs. Either way, a job asked to start after it does not."""

    def __init__(self, forward: bool):
        self.signum, self.forward = None, forward
        self.folder = None  # a worker's: the sweep it serves
        self.sent = set()  # pids the signal was passed on to
        self.done = threading.Event()

    def handle(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if not self.forward or _ACTIVE is not None:  # a worker, or called by the job under way, which told
            return
        if first:
            print(
                f"nnrun: {signal.Signals(signum).name} received: the sweep's running jobs finish their step and "
                "save; the others do not start (a second signal changes nothing)",
                file=sys.stderr,
                flush=True,
            )
            # a worker still starting up catches no signal yet: it gets it once it does
            threading.Thread(target=self.keep_passing_on, daemon=True).start()
        else:
            print("nnrun: already stopping the sweep", file=sys.stderr, flush=True)
        self.pass_on()

    def pass_on(self) -> None:
        for pid in catching_children():
            if pid not in self.sent:
                self.sent.add(pid)
                try:
                    os.kill(pid, self.signum)
                except OSError:  # it ended meanwhile
                    pass

    def keep_passing_on(self) -> None:
        while not self.done.wait(0.2):
            self.pass_on()


def catching_children() -> list:
    """This process's children that catch SIGTERM: the launcher's workers running (or done with)
    an nnrun job. One that does not catch it would die of it, and its pool with it."""
    me, found = os.getpid(), []
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:  # no /proc (macOS): every child of the pool
        import multiprocessing

        return [p.pid for p in multiprocessing.active_children()]
    for pid in entries:
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        try:
            caught = int(fields["SigCgt"], 16) & (1 << (signal.SIGTERM - 1))
            if int(fields["PPid"]) == me and caught:
                found.append(int(pid))
        except (KeyError, ValueError):
            continue
    return found


_SWEEP = None  # this process's SweepStop, while a sweep runs here (the command) or a worker serves one


@contextmanager
def sweep_signals():
    """The command's process of a sweep: SIGINT and SIGTERM stop the whole sweep, jobs in a
    launcher's worker processes included. Yields the SweepStop (its signum: what stopped it)."""
    global _SWEEP
    stop = SweepStop(forward=True)
    _SWEEP = stop
    previous = {getattr(signal, name): signal.signal(getattr(signal, name), stop.handle) for name in STOPS}
    try:
        yield stop
    finally:
        stop.done.set()
        _SWEEP = None
        for number, handler in previous.items():
            signal.signal(number, handler)


def serve_sweep(folder: str) -> None:
    """A launcher's worker process, at each job of the sweep in folder: a stop signal between its
    jobs is remembered (until it serves another sweep: joblib reuses its workers)."""
    global _SWEEP
    if _SWEEP is None or _SWEEP.folder != folder:
        _SWEEP = SweepStop(forward=False)
        _SWEEP.folder = folder
        for name in STOPS:
            signal.signal(getattr(signal, name), _SWEEP.handle)


def sweep_stopped():
    """The signal that stopped the sweep this process serves, or None."""
    return _SWEEP.signum if _SWEEP is not None else None


def signal_number(name, key: str = "trainer.requeue_signal"):
    """Check a signal name from the config (None allowed)."""
    if name is None:
        return None

    if (
        not isinstance(name, str)
        or not name.startswith("SIG")
        or not hasattr(signal, name)
        or name in ("SIGKILL", "SIGSTOP")
    ):
        raise ConfigError(f"{key}={name} is not a signal nnrun can catch; use e.g. SIGUSR1 or SIGUSR2")
    return name
