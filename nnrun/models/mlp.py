"""Multi-layer perceptron on the flattened input."""

from torch import nn

from nnrun.models import MODELS, check_dropout, dense_stack, flat_size


@MODELS.register("mlp")
class MLP(nn.Sequential):
    """Flatten, Dense blocks, then a linear layer to num_classes logits."""

    def __init__(self, input_shape, num_classes, hidden=(128, 64), activation="relu",
                 dropout=0.2, batchnorm=False):
        width = int(hidden[-1]) if hidden else flat_size(input_shape)
        super().__init__(nn.Flatten(),
                         *dense_stack(flat_size(input_shape), hidden, activation, check_dropout(dropout), batchnorm),
                         nn.Linear(width, num_classes))
