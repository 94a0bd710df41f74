"""model=custom: your own nn.Module by its import path (model.target=my_models.SmallNet), built
with model.kwargs plus the data's input_shape, num_classes and vocab_size when it takes them."""

import inspect

from torch import nn

from nnrun.errors import ConfigError, suggest
from nnrun.models.base import MODELS
from nnrun.safety import DOTTED, import_own

FROM_DATA = ("input_shape", "num_classes", "vocab_size")  # what nnrun passes, when the class takes it


@MODELS.register("custom")
def custom(input_shape, num_classes, target=None, kwargs=None, vocab_size=0) -> nn.Module:
    cls = user_class(target)
    params = inspect.signature(cls).parameters
    given = {"input_shape": input_shape, "num_classes": num_classes}
    if vocab_size:  # text data only: a class's own default stays otherwise
        given["vocab_size"] = vocab_size
    data = {k: v for k, v in given.items() if k in params}
    kwargs = check_kwargs(target, kwargs, params, data)
    try:
        return cls(**data, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # your constructor's own error, with model.kwargs named: one line, exit 2
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        given = f" with model.kwargs={kwargs}" if kwargs else ""
        raise ConfigError(
            f"model.target={target}: its constructor failed{given}: {type(exc).__name__}: {first}"
        ) from exc


def check_kwargs(target: str, kwargs, params, data: dict) -> dict:
    """model.kwargs against the constructor's signature: no unknown key, none that the data
    gives, none of its required parameters left out."""
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"model.kwargs={kwargs!r} is not a mapping; e.g. 'model.kwargs={{hidden:32}}'")
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    own = [n for n in named if n not in FROM_DATA]
    listing = f"its parameters: {', '.join(own) or 'none'} (input_shape, num_classes, vocab_size come from the data)"
    for key in kwargs:
        if key in data:
            raise ConfigError(f"model.kwargs.{key}: nnrun passes {key} from the data; remove it from model.kwargs")
        if key not in named and not takes_any:
            raise ConfigError(f"model.kwargs.{key} is not a parameter of {target}{suggest(key, own)}; {listing}")
    for name, p in params.items():
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            if name == "vocab_size" and name not in kwargs:
                raise ConfigError(f"{target} needs vocab_size, which only text data gives (data=text_csv)")
            if name not in kwargs and name not in data:
                raise ConfigError(f"{target} needs {name}: set model.kwargs.{name}=...; {listing}")
    return dict(kwargs)


def user_class(target) -> type:
    """The nn.Module class model.target names, defined in the module it names."""
    if not isinstance(target, str) or target in ("", "???"):
        raise ConfigError(
            "model.target is required with model=custom: your model's class, e.g. "
            "model.target=my_models.SmallNet (class SmallNet in my_models.py here)"
        )
    module_name, _, name = target.rpartition(".")
    if not module_name or not DOTTED.match(target) or "__" in target:
        raise ConfigError(
            f"model.target={target} is not module.Class; e.g. model.target=my_models.SmallNet "
            f"for class SmallNet in my_models.py"
        )
    key = f"model.target={target}"
    module = user_module(module_name, key)
    cls = getattr(module, name, None)
    if cls is None:
        classes = [n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module_name]
        raise ConfigError(
            f"{key}: {module.__file__} has no {name}{suggest(name, classes)}; "
            f"its classes: {', '.join(classes) or 'none'}"
        )
    if not inspect.isclass(cls) or not issubclass(cls, nn.Module):
        raise ConfigError(f"{key}: {name} is not a torch.nn.Module class; name your model's class")
    if cls.__module__ != module_name:
        raise ConfigError(
            f"{key}: {name} is defined in {cls.__module__}, not in {module_name}; name the module that defines it"
        )
    return cls


def user_module(name: str, key: str):
    """The module of your model: one a run's model_source.json restored (nnrun.usercode: trusted),
    nnrun's own, or yours from its file under the working folder or PYTHONPATH, by path. Never the
    standard library, nor an installed package unless it depends on nnrun."""
    return import_own(name, key)
