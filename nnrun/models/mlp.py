"""Multi-layer perceptron on the flattened input, or on the mean word vector of a text."""

import torch
from torch import nn

from nnrun.errors import ConfigError
from nnrun.models.base import MODELS, check_dropout, dense_stack, flat_size


@MODELS.register("mlp")
class MLP(nn.Sequential):
    """Flatten (or, for token ids, Embedding + mean over the words), Dense blocks, then a linear
    layer to num_classes logits."""

    def __init__(
        self,
        input_shape,
        num_classes,
        hidden=(128, 64),
        activation="relu",
        dropout=0.2,
        batchnorm=False,
        embedding_dim=64,
        vocab_size=0,
    ):
        if vocab_size and embedding_dim < 1:
            raise ConfigError(f"model.embedding_dim={embedding_dim}: use 1 or more")
        first = MeanEmbedding(vocab_size, embedding_dim) if vocab_size else nn.Flatten()
        features = embedding_dim if vocab_size else flat_size(input_shape)
        width = int(hidden[-1]) if hidden else features
        super().__init__(
            first,
            *dense_stack(features, hidden, activation, check_dropout(dropout), batchnorm),
            nn.Linear(width, num_classes),
        )


class MeanEmbedding(nn.Module):
    """Keras's Embedding + GlobalAveragePooling1D, ignoring padding: (B, steps) ids -> (B, dim)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        words = (ids != 0).unsqueeze(-1)
        return (self.embed(ids) * words).sum(1) / words.sum(1).clamp_min(1)
