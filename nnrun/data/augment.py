"""Image augmentation on whole batches of tensors, on the training device: random flips, crops
with padding (integer shifts, zero-filled), small rotations and translations (one affine warp).
Applied to training batches only. Each batch draws from its own generator seeded by (seed, epoch,
step), so a resumed run augments exactly as an uninterrupted one."""

import math

import torch
import torch.nn.functional as F

from nnrun.errors import ConfigError


class Augment:
    def __init__(self, flip: bool = False, crop: int = 0, rotate: float = 0.0, translate: float = 0.0):
        if crop < 0 or rotate < 0 or not 0 <= translate < 1:
            raise ConfigError(
                f"data.augment: crop={crop}, rotate={rotate}, translate={translate}: use crop >= 0 "
                f"(pixels of padding), rotate >= 0 (degrees), 0 <= translate < 1 (fraction of the size)"
            )
        self.flip, self.crop, self.rotate, self.translate = bool(flip), int(crop), float(rotate), float(translate)
        self.fill = 0.0  # what uncovered pixels get: build_data sets the scaled value of a black pixel

    def __bool__(self) -> bool:
        return self.flip or self.crop > 0 or self.rotate > 0 or self.translate > 0

    def describe(self) -> dict:
        return {"flip": self.flip, "crop": self.crop, "rotate": self.rotate, "translate": self.translate}

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """x: (B, C, H, W) images; returns a new batch of the same shape."""
        g = torch.Generator().manual_seed(seed)
        n = len(x)
        if self.flip:
            flipped = (torch.rand(n, generator=g) < 0.5).to(x.device, non_blocking=True)
            x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        if self.crop:
            x = random_crop(x, self.crop, g, self.fill)
        if self.rotate or self.translate:
            x = random_affine(x - self.fill, self.rotate, self.translate, g) + self.fill
        return x


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Pad each side with pad pixels of fill, then cut an HxW window at a random offset per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    top = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device, non_blocking=True)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device, non_blocking=True)
    # one gather over flattened pixels: 3x faster than indexing with four broadcast index tensors
    rows = top[:, None, None] + torch.arange(h, device=x.device)[None, :, None]
    cols = left[:, None, None] + torch.arange(w, device=x.device)[None, None, :]
    index = (rows * (w + 2 * pad) + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).reshape(n, c, h, w)


def random_affine(x: torch.Tensor, degrees: float, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Rotate by up to +-degrees and shift by up to +-fraction of the size, bilinear, zero-filled."""
    n = len(x)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 2 * fraction  # grid units: the image spans 2
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
