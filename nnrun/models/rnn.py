"""Recurrent net over sequences: an image's rows, a series' steps, or a text's word vectors."""

import torch
from torch import nn

from nnrun.errors import ConfigError
from nnrun.models.base import MODELS, check_dropout

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@MODELS.register("lstm")
class RNNClassifier(nn.Module):
    """(B, C, H, W) -> H steps of C*W features; (B, steps, features); or (B, steps) token ids ->
    Embedding -> recurrent layers -> last state -> logits."""

    def __init__(  # noqa: PLR0913  (its parameters are the YAML schema)
        self,
        input_shape,
        num_classes,
        cell="lstm",
        hidden_size=128,
        num_layers=1,
        bidirectional=False,
        dropout=0.0,
        embedding_dim=64,
        vocab_size=0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"model.cell={cell} is not known; choose one of: {', '.join(CELLS)}")
        if hidden_size < 1 or num_layers < 1:
            raise ConfigError(f"model.hidden_size={hidden_size}, model.num_layers={num_layers}: use 1 or more")
        dropout = check_dropout(dropout)
        self.embed = None
        if vocab_size:  # token ids: each becomes a learned vector
            if embedding_dim < 1:
                raise ConfigError(f"model.embedding_dim={embedding_dim}: use 1 or more")
            self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
            features = embedding_dim
        elif len(input_shape) == 3:  # image: rows are the steps
            features = input_shape[0] * input_shape[2]
        elif len(input_shape) == 2:  # sequence: (steps, features)
            features = input_shape[1]
        else:
            raise ConfigError(
                f"model=lstm needs sequences (steps, features) or images (C, H, W); "
                f"this data gives samples of shape {input_shape}"
            )
        self.rnn = CELLS[cell](
            features,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x):
        if self.embed is not None:  # (B, steps) -> (B, steps, embedding_dim)
            x = self.embed(x)
        elif x.dim() == 4:  # (B, C, H, W) -> (B, H, C*W)
            x = x.permute(0, 2, 1, 3).flatten(2)
        out, _ = self.rnn(x)  # (B, steps, hidden * directions)
        if self.rnn.bidirectional:  # forward's last step, backward's first
            half = self.rnn.hidden_size
            last = torch.cat([out[:, -1, :half], out[:, 0, half:]], dim=1)
        else:
            last = out[:, -1]
        return self.head(self.dropout(last))
