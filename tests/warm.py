"""Run nnrun and its tools in a fresh process without paying Python's start-up and imports each time.

A helper process imports torch (and torch._dynamo, which torch.optim pulls in), Hydra and nnrun
once, and never runs a torch op (a fork after one can hang in OpenMP). For each request it forks a
child that sets argv, working folder, environment, stdin and output files, runs the request's hook
(code a sitecustomize.py would run), and calls the console script's entry point that the request
names (nnrun, nnrun-eval, nnrun-predict, nnrun-export, nnrun-report), exactly what the script calls.
Each command is still its own process with its own exit code, output and files; what is shared is
only the already-imported modules (about 7 s a command on a 2-core machine). Requests and replies
carry ids; a reply that does not come in time closes the helper and the caller starts the command
cold. Tests of start-up, signals and the installed script itself use the console script
(conftest.NNRUN). NNRUN_TEST_WARM=0 turns this off: every command then starts cold."""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

SERVER = r"""
import json, os, sys
sys.path[:] = [p for p in sys.path if p != ""]  # as the console script's: `-c` put the working folder first
import torch, torch._dynamo, torch.optim                    # what every run imports anyway
import hydra, omegaconf, rich, sklearn.datasets, safetensors.torch
import nnrun.__main__, nnrun.pipeline, nnrun.data, nnrun.models, nnrun.train.loop, nnrun.callbacks, nnrun.report.console
from importlib.metadata import entry_points
ENTRIES = {e.name: e.load() for e in entry_points(group="console_scripts") if e.value.startswith("nnrun.")}


def run_hook(code):
    # code, as a sitecustomize.py: what it replaces in a module is also replaced where nnrun's modules
    # imported it by name (`from m import f` ran before the hook here, after it in a cold start)
    before = {name: dict(vars(m)) for name, m in list(sys.modules.items()) if m is not None}
    exec(compile(code, "sitecustomize.py", "exec"), {"__name__": "sitecustomize"})
    replaced = {}
    for name, old in before.items():
        module = sys.modules.get(name)
        for key, value in vars(module).items() if module is not None else ():
            if key in old and old[key] is not value and callable(old[key]):
                replaced[id(old[key])] = value
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "nnrun" and module is not None:
            for key, value in list(vars(module).items()):
                if id(value) in replaced and before.get(name, {}).get(key) is value:
                    setattr(module, key, replaced[id(value)])


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            try:  # the command dies with the helper: a test that gave up on it starts it cold
                import ctypes, signal
                ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            except (OSError, AttributeError):
                pass
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
            os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
            sys.argv = [request["entry"], *request["args"]]
            code = 0
            try:
                if request["hook"] is not None:
                    run_hook(request["hook"])
                ENTRIES[request["entry"]]()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"id": request["id"], "pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"id": request["id"], "status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Warm:
    def __init__(self):
        # started outside the checkout: `python -c` puts the working folder first on sys.path, and the
        # repository's nnrun/ (without its conf package) must not shadow the installed one
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.server_env(),
            cwd=tempfile.gettempdir(),
        )
        self.replies = self.proc.stdout
        self.ready = False
        self.requests = 0
        self.running = None  # the last command started: the helper serves the next one when it ends

    @staticmethod
    def server_env() -> dict:
        env = dict(os.environ)
        if "PYTEST_XDIST_WORKER" in env:  # as conftest.clean_env: one thread per xdist worker
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def reply(self, timeout: float, key: str, request=None) -> dict:
        """The next reply holding key (and the request's id); TimeoutError when none comes in time."""
        while True:
            ready, _, _ = select.select([self.replies], [], [], timeout)
            if not ready:
                raise TimeoutError
            line = self.replies.readline()
            if not line:
                raise TimeoutError  # the helper died: the caller starts the command cold
            message = json.loads(line)
            if key in message and message.get("id") == request:
                return message

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def run(self, args, cwd, env, timeout, entry, hook) -> subprocess.CompletedProcess:
        """The command forked from the helper; None when the helper is not there to do it (it did not
        finish its imports in READY seconds, or died): the caller then starts the command cold."""
        try:
            if not self.ready:
                self.reply(READY, "ready")  # importing torch: minutes on a loaded machine
                self.ready = True
            return self.forked(args, cwd, env, timeout, entry, hook)
        except TimeoutError:
            self.close()
            return None

    def forked(self, args, cwd, env, timeout, entry, hook) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            command = self.start(args, cwd, env, entry, hook, tmp)
            command.communicate(timeout)
            return subprocess.CompletedProcess(command.args, command.returncode, command.stdout, command.stderr)

    def start(self, args, cwd, env, entry, hook, tmp) -> "Started":
        """The command forked, its output going to files in tmp; returns once it has started."""
        if self.running is not None and self.running.poll() is None:  # left running by a test that failed
            self.running.kill()
            self.running.wait()
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        self.requests += 1
        request = self.requests
        self.proc.stdin.write(
            json.dumps(
                {
                    "id": request,
                    "entry": entry,
                    "hook": hook,
                    "args": [str(a) for a in args],
                    "cwd": str(cwd),
                    "env": env,
                    "stdout": str(out),
                    "stderr": str(err),
                }
            )
            + "\n"
        )
        self.proc.stdin.flush()
        pid = self.reply(READY, "pid", request)["pid"]  # a fork: at once, unless the machine is swamped
        self.running = Started(self, request, pid, [entry, *map(str, args)], out, err)
        return self.running


class Started:
    """A command forked from the helper, still running: what tests use of subprocess.Popen (pid,
    poll, send_signal, kill, communicate, returncode). The helper serves no other command until it
    ends, so a test runs one at a time."""

    def __init__(self, warm, request, pid, args, out, err):
        self.warm, self.request, self.pid, self.args, self.out, self.err = warm, request, pid, args, out, err
        self.returncode = self.stdout = self.stderr = None

    def poll(self):
        if self.returncode is None:
            try:
                self.returncode = self.warm.reply(0, "status", self.request)["status"]
            except TimeoutError:
                if self.warm.proc.poll() is not None:  # the helper died, and the command with it
                    self.returncode = -signal.SIGKILL
        return self.returncode

    def send_signal(self, number) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, number)
            except ProcessLookupError:  # it ended; the helper's reply says how
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout=None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self.warm.reply(READY if timeout is None else timeout, "status", self.request)[
                    "status"
                ]
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)
                self.warm.close()  # never reused: its replies could be out of step
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def communicate(self, timeout=None) -> tuple:
        self.wait(timeout)
        if self.stdout is None:
            self.stdout, self.stderr = self.out.read_text(), self.err.read_text()
        return self.stdout, self.stderr


_WARM = []
READY = 900  # seconds the helper may take to import torch and Hydra (or to fork) before a cold start


def warm_run(args, cwd, env, timeout, entry="nnrun", hook=None):
    """subprocess.run-like result of the console script `entry args` in cwd with env, hook run first;
    None when warm runs are off or the helper did not answer: the caller then starts it cold."""
    if os.environ.get("NNRUN_TEST_WARM", "1") == "0" or not hasattr(os, "fork"):
        return None
    if not _WARM or _WARM[0].proc.poll() is not None:
        _WARM[:] = [Warm()]
    return _WARM[0].run(args, cwd, env, timeout, entry, hook)  # None: the caller starts it cold


def warm_start(args, cwd, env, tmp, entry="nnrun"):
    """A Popen-like handle of `entry args` forked from the helper, its output in files under tmp;
    None when warm runs are off or the helper did not answer: the caller then starts it cold."""
    if os.environ.get("NNRUN_TEST_WARM", "1") == "0" or not hasattr(os, "fork"):
        return None
    if not _WARM or _WARM[0].proc.poll() is not None:
        _WARM[:] = [Warm()]
    warm = _WARM[0]
    try:
        if not warm.ready:
            warm.reply(READY, "ready")
            warm.ready = True
        return warm.start(args, cwd, env, entry, None, tmp)
    except TimeoutError:
        warm.close()
        return None
