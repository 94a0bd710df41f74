"""Registry: a name -> constructor table whose build() checks names and options up front."""

import inspect

from nnrun.errors import ConfigError, suggest
from nnrun.safety import check_imports, import_own


class Registry:
    def __init__(self, kind: str, check_types: bool = True, keyed_by_name: bool = False):
        self.kind = kind  # config group, e.g. "model"; named in error messages
        self.keyed_by_name = keyed_by_name  # options live under kind.<name>, as callbacks' do
        self.check_types = check_types  # off where a schema types the options already
        self._entries = {}

    def register(self, name: str):
        def add(obj):
            if name in self._entries:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def names(self):
        return sorted(self._entries)

    def get(self, name: str):
        if name not in self._entries:
            raise ConfigError(
                f"{self.kind}.name={name} is not known{suggest(name, self._entries)}; "
                f"choose one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def parameters(self, name: str) -> list:
        """The option names the constructor registered as name takes."""
        return list(inspect.signature(self.get(name)).parameters)

    def build(self, name: str, *args, **options):
        """Call the constructor registered as name; options must be among its parameters."""
        obj = self.get(name)
        prefix = f"{self.kind}.{name}" if self.keyed_by_name else self.kind
        check_options(obj, options, f"{self.kind} '{name}'", prefix=prefix, types=self.check_types)
        try:
            return obj(*args, **options)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{self.kind} '{name}': {exc}") from exc


def check_options(obj, options: dict, what: str, prefix: str, types: bool = True) -> None:
    """Fail on options obj does not take, or whose type differs from its default's type."""
    params = inspect.signature(obj).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key, value in options.items():
        if key not in params:
            raise ConfigError(
                f"{prefix}.{key} is not an option of {what}{suggest(key, allowed)}; its options: {', '.join(allowed)}"
            )
        default = params[key].default
        if types and not same_kind(value, default):
            raise ConfigError(
                f"{prefix}.{key}={value!r}: {what} expects {kind_name(default)}, like its default {default!r}"
            )


def same_kind(value, default) -> bool:
    if default is inspect.Parameter.empty or default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (isinstance(default, float) or float(value).is_integer())
        )
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def kind_name(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list, e.g. [32,64]"
    return f"a {type(default).__name__}"


def import_modules(names) -> None:
    """Import the user's modules (imports=[...]) so their @REGISTRY.register(...) entries exist;
    only the user's own modules (nnrun.safety.check_imports), yours from their files by path."""
    for name in check_imports(names):
        try:
            import_own(name, "imports")
        except ImportError as exc:
            raise ConfigError(
                f"imports: cannot import {name} ({exc}); give a module importable from "
                f"the current folder or the Python path, e.g. imports=[my_callbacks]"
            ) from exc
