"""Models by name (MODELS): the registry, build_model and the model hooks live in base.py;
importing the package registers every built-in model."""

from nnrun.models.base import *  # noqa: F403  (the package's names, as before)
from nnrun.models import backbone, cnn, custom, mlp, rnn, sequential  # noqa: F401  (registers the models)
