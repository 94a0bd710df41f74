"""A tracker's calls (MLflow, W&B) on a thread of their own, so a slow or hung server never holds up
training: the hooks queue the calls, and the end of the run waits for them only while each request
is answered in time."""

import logging
import queue
import threading
import time

log = logging.getLogger("nnrun")
GRACE = 5.0  # seconds one request may take before the end of the run stops waiting for it
RATE = 1e6  # bytes a second: an upload gets GRACE plus its size at this rate
BEHIND = 256  # calls queued at most; an epoch's metrics beyond that are dropped (metrics.csv has them)


class Sender:
    """One worker thread and its queue. bounded=False for a store on this machine (sqlite, files,
    W&B offline): nothing there waits on a network, so the end waits for it as long as it takes."""

    def __init__(self, name: str, bounded: bool, server: str):
        """name: the callback's; server: what the calls go to, for messages."""
        self.name, self.bounded, self.server = name, bounded, server
        self.queue = queue.Queue()
        self.thread = None
        self.deadline = None  # when the end of the run stops waiting for the call under way
        self.warned = self.quiet = False  # one warning a run; quiet once the run went on without it

    @property
    def started(self) -> bool:
        return self.thread is not None

    def send(self, action, metrics: bool = False) -> None:
        """Queue action() (it handles its own errors); metrics: an epoch's numbers, dropped when the
        worker is BEHIND (a server that hangs must not grow the queue without end)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self.work, name=f"nnrun-{self.name}", daemon=True)
            self.thread.start()
        if metrics and self.queue.qsize() >= BEHIND:
            self.warn(
                f"callbacks.{self.name}: {BEHIND} calls wait for {self.server}; epochs are not sent until it "
                f"catches up (metrics.csv has every number)"
            )
            return
        self.queue.put(action)

    def allow(self, seconds=GRACE) -> None:
        """The request about to be made may take this long (GRACE, or more for an upload)."""
        self.deadline = time.monotonic() + seconds if self.bounded else None

    def work(self) -> None:
        while (action := self.queue.get()) is not None:
            self.allow()
            try:
                action()
            except Exception as exc:  # noqa: BLE001  (a bug in an action: the run goes on)
                self.warn(f"callbacks.{self.name}: {type(exc).__name__}: {exc}")
            self.deadline = None

    def close(self, late: str, last=None) -> bool:
        """Queue last() when anything was sent, then wait for the queued calls while each request is
        answered in time; else warn with late (once a run) and return False: the worker is left
        behind, quiet, and ends with the process."""
        if self.thread is None:
            return True
        if last is not None:
            self.queue.put(last)
        self.queue.put(None)
        while self.thread.is_alive():
            self.thread.join(0.05)
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.warn(late)
                self.quiet = True
                return False
        return True

    def warn(self, text: str) -> None:
        if not (self.warned or self.quiet):
            log.warning(text)
        self.warned = True

    def info(self, text: str) -> None:
        if not self.quiet:
            log.info(text)


class Timed:
    """A client whose every method call is one request given GRACE seconds before the end of the run
    stops waiting for it; an upload passes seconds=... for more."""

    def __init__(self, client, sender: Sender):
        self.client, self.sender = client, sender

    def __getattr__(self, name):
        value = getattr(self.client, name)
        if not callable(value):
            return value

        def request(*args, seconds=GRACE, **kwargs):
            self.sender.allow(seconds)
            return value(*args, **kwargs)

        return request


def upload_seconds(*paths) -> float:
    """GRACE plus the files' size at RATE (a folder: every file in it)."""
    size = 0
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size += sum(p.stat().st_size for p in files)
    return GRACE + size / RATE
