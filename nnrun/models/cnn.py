"""Convolutional net: conv blocks that halve H and W, then a dense head."""

from torch import nn

from nnrun.errors import ConfigError
from nnrun.models.base import MODELS, check_dropout, dense_stack


@MODELS.register("cnn")
class CNN(nn.Sequential):
    """Conv blocks (conv, [batchnorm], relu, max-pool), flatten, [dropout], Dense head."""

    def __init__(
        self,
        input_shape,
        num_classes,
        channels=(32, 64),
        kernel_size=3,
        pool=2,
        batchnorm=True,
        dropout=0.25,
        hidden=(128,),
    ):
        if len(input_shape) != 3:
            raise ConfigError(f"model=cnn needs images (C, H, W); this data gives samples of shape {input_shape}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size={kernel_size}: use an odd size >= 1, so 'same' padding is exact")
        if pool < 1:
            raise ConfigError(f"model.pool={pool}: use 1 (no pooling) or more")
        dropout = check_dropout(dropout)
        c, h, w = input_shape
        layers = []
        for i, out in enumerate(channels):
            if pool > 1 and min(h, w) // pool < 1:
                raise ConfigError(
                    f"model.channels has {len(channels)} blocks, but a {input_shape[1]}x"
                    f"{input_shape[2]} input is pooled to nothing by block {i + 1}; "
                    f"use fewer blocks or model.pool=1"
                )
            layers.append(nn.Conv2d(c, int(out), kernel_size, padding=kernel_size // 2, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(int(out)))
            layers.append(nn.ReLU())
            if pool > 1:
                layers.append(nn.MaxPool2d(pool))
                h, w = h // pool, w // pool
            c = int(out)
        layers.append(nn.Flatten())
        head_in = c * h * w
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += dense_stack(head_in, hidden, "relu", dropout, batchnorm)
        layers.append(nn.Linear(int(hidden[-1]) if hidden else head_in, num_classes))
        super().__init__(*layers)
