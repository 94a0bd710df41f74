"""Every nnrun exception, and user-input errors' one-line descriptions (exit code 2 at the CLI).
Here, at the bottom of the layers, so that whoever raises or catches one imports nothing above it."""

import difflib
import errno
import re

# OmegaConf's words for a schema type -> what to tell the user
_EXPECTED = {"Float": "a number, e.g. 0.001", "Integer": "a whole number, e.g. 10", "Boolean": "true or false"}


class ConfigError(ValueError):
    """A config or data problem the user can fix; the message names the key and the fix."""


class Unreadable(ConfigError):
    """A run folder's file that nnrun will not read: a link, not a plain file, too big, too deep or not parseable."""


class CheckpointError(ConfigError):
    """A file that is not a checkpoint nnrun can load: damaged, or holding more than data."""


class UnsafeCheckpoint(CheckpointError):
    """A file holding Python objects that would run code when loaded: never a fallback, always an error."""


class Interrupted(Exception):
    """A stop signal arrived; the state was saved after epoch epochs and step steps of the next."""

    def __init__(self, signum: int, epoch: int, step: int, reading: bool = False):
        super().__init__(f"signal {signum} at epoch {epoch}, step {step}")
        self.signum, self.epoch, self.step = signum, epoch, step
        self.reading = reading  # it came while the data was read, before any training: nothing saved


class NonFiniteLoss(RuntimeError):
    def __init__(self, value: float, epoch: int, step: int):
        super().__init__(
            f"the training loss became {value} at epoch {epoch}, step {step}; "
            f"try a 10x lower optimizer.lr, or trainer.grad_clip=1.0"
        )
        self.value, self.epoch, self.step = value, epoch, step


class NonFiniteWeights(RuntimeError):
    """The weights hold NaN or inf (a gradient blow-up whose loss was still finite): not saved."""

    def __init__(self, name: str, epoch: int, step: int):
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        super().__init__(
            f"the weights became NaN or infinite ({name}) at {where}, before they were saved; the "
            f"last finite checkpoint is kept; try a 10x lower optimizer.lr, or trainer.grad_clip=1.0"
        )
        # as NonFiniteLoss reports it: the epoch running (from 1) and its steps done, 0 = at its end
        self.epoch, self.step = (epoch + 1, step) if step else (epoch, 0)


class DiskFull(OSError):
    def __init__(self, path):
        super().__init__(errno.ENOSPC, f"No space left on device while writing {path}; the previous checkpoint is kept")


class AlreadyCompleted(Exception):
    def __init__(self, run_dir, why: str = ""):
        super().__init__(
            why
            or f"run {run_dir} already completed; nothing to resume (its summary.json has the "
            f"results; start a new run without trainer.resume)"
        )
        self.run_dir = run_dir


class StopSweep(BaseException):
    """Raised out of a job to end the whole command: a stop signal, or fail_fast after a failure.
    A BaseException, so that Hydra's job runner (which catches Exception and prints its own
    "Error executing job" line) lets it through to main()."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # crosses from a launcher's worker process to main()
        return StopSweep, (self.code, str(self))


class SweepFailures(BaseException):
    """The failed jobs of a sweep as (overrides, exit code, message), read from their run folders
    (jobs in a launcher's worker processes report only there), for the command's exit code.
    A BaseException: Hydra turns a callback's Exception into a warning. (Raised last: Hydra calls
    the end callbacks in reverse order, and this one is listed first.)"""

    def __init__(self, failures: list):
        super().__init__(f"{len(failures)} job(s) failed")
        self.failures = failures


def suggest(word: str, choices) -> str:
    """' (did you mean X?)' when a choice is close to word, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def describe(exc: BaseException):
    """One line for a user-input error, or None when exc is not one (a runtime failure)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MissingConfigException):
        return _missing_option(exc)
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return _unknown_key(cause)
    if isinstance(cause, ValidationError) and cause.full_key:
        return _wrong_type(cause.full_key, _first_line(cause.msg))
    if isinstance(cause, MissingMandatoryValue) and cause.full_key:
        return f"{cause.full_key} is required (it is ???); set it on the command line: {cause.full_key}=..."
    where = _syntax_error(exc.override) if isinstance(exc, OverrideParseException) and exc.override else None
    if where:
        return where  # Hydra's text says neither where nor what it expected
    if isinstance(exc, (ConfigCompositionException, OverrideParseException, OmegaConfBaseException)):
        lines = [_first_line(str(exc))]
        if exc.__cause__ is not None:
            lines.append(_first_line(str(exc.__cause__)))
        return "; ".join(line for line in lines if line)
    return None


def _missing_option(exc) -> str:
    group, _, option = (exc.missing_cfg_file or "").rpartition("/")
    options = sorted(exc.options or [])
    if group and options:
        return f"{group}={option} is not an option{suggest(option, options)}; choose one of: {', '.join(options)}"
    return _first_line(str(exc))


def _wrong_type(key: str, msg: str) -> str:
    found = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
    if found and found.group(2) in _EXPECTED:
        return f"{key}={found.group(1)} is not {_EXPECTED[found.group(2)]}"
    found = re.match(r"Value '(.*)' is not a valid bool", msg)
    if found:
        return f"{key}={found.group(1)} is not {_EXPECTED['Boolean']}"
    return f"{key}: {msg}"


def _unknown_key(cause) -> str:
    key = cause.full_key
    parent, _, name = key.rpartition(".")
    known = []
    node = cause.parent_node
    if node is not None and hasattr(node, "keys"):
        known = sorted(str(k) for k in node.keys())
    hint = suggest(name, known)
    listing = f"; keys under {parent or 'the top level'}: {', '.join(known)}" if known else ""
    return f"{key} is not a config key{hint}{listing}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _syntax_error(override: str):
    """Where the override grammar stops reading override, and what it wanted there, in one line;
    None when it reads (the error was not a syntax error)."""
    from antlr4.error.ErrorListener import ErrorListener
    from hydra.grammar.gen.OverrideLexer import CommonTokenStream, InputStream, OverrideLexer
    from hydra.grammar.gen.OverrideParser import OverrideParser

    class First(ErrorListener):
        found = None

        def syntaxError(self, recognizer, symbol, line, column, msg, e):
            if self.found is None:
                self.found = (column, getattr(symbol, "text", None), msg)

    listener = First()
    lexer = OverrideLexer(InputStream(override))
    parser = OverrideParser(CommonTokenStream(lexer))
    for part in (lexer, parser):
        part.removeErrorListeners()
        part.addErrorListener(listener)
    parser.override()
    if listener.found is None:
        return None
    column, text, msg = listener.found
    what = "the end of the override" if text in (None, "<EOF>") else repr(text)
    if msg.startswith("no viable alternative") and text in (None, "<EOF>"):
        return f"{override}: it ends at character {column + 1} with a bracket, parenthesis or quote left open"
    expected = "a value" if "FLOAT" in msg else _expected(msg)
    hint = " (a sweep separates values by single commas, e.g. optimizer.lr=0.1,0.01)" if text == "," else ""
    return f"{override}: cannot read {what} at character {column + 1}; expected {expected} there{hint}"


def _expected(msg: str) -> str:
    found = re.search(r"expecting (.*)$", msg)
    if not found:
        return "something else"
    words = re.findall(r"'([^']+)'|(<EOF>)|([A-Z_]+)", found.group(1))
    named = {"<EOF>": "the end of the override"}
    out = [w[0] and repr(w[0]) or named.get(w[1]) or w[2].lower().replace("_", " ") for w in words]
    return " or ".join(dict.fromkeys(out))


# C0 and C1 control characters (ESC starts terminal commands: a window title, a cleared screen),
# DEL, and the bidirectional overrides that make text read other than it is
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text, newlines: bool = False) -> str:
    """text as it may reach a terminal: control characters shown as escapes (ESC as \\x1b), never
    sent; newlines kept only when asked (a message of several lines), else shown as \\n too. Every
    value nnrun prints that it read from a file passes through here."""

    def show(match) -> str:
        char = match.group()
        if newlines and char == "\n":
            return char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return CONTROL.sub(show, str(text))


class Refused(BaseException):
    """A job's run folder refused before the job started (ClaimRunFolder): it ends the command as a
    config error does. A BaseException because Hydra turns an Exception raised in a callback into a
    warning and goes on (its Callbacks._notify)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error

    def __reduce__(self):  # crosses from a launcher's worker process to main()
        return Refused, (self.error,)
