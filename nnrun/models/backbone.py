"""model=torchvision: a torchvision classification architecture by name, for transfer learning.
Pretrained weights by name or from a file, the classifier head replaced for the data's classes,
and the backbone frozen for the first epochs when asked (model.freeze, model.unfreeze_at_epoch)."""

import contextlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

from nnrun.errors import ConfigError, suggest
from nnrun.models.base import MODELS
from nnrun.torchload import load_tensors

log = logging.getLogger("nnrun")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mean, std: what a weights file is assumed to expect
FILE_SUFFIXES = (".pt", ".pth", ".safetensors")
SIDE_HEADS = ("googlenet", "inception_v3")  # built without their training-only auxiliary classifiers
SIDE_KEYS = ("aux1.", "aux2.", "AuxLogits.")  # those classifiers' tensors in a weights file
FREEZE = ("none", "backbone")


def architectures() -> list:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def unit_pixels(model_conf: dict) -> bool:
    """Whether this model takes pixels in [0, 1]: a pretrained backbone normalizes its inputs itself,
    with its weights' mean and std, so the data step scales them instead of standardizing."""
    return model_conf.get("name") == "torchvision" and model_conf.get("weights") is not None


@MODELS.register("torchvision")
class Backbone(nn.Module):
    """A torchvision architecture whose last Linear layer (its classifier head) is replaced by one
    for this data's classes. Grey images are repeated to the 3 channels the stem takes; with
    pretrained weights the model normalizes its inputs ([0, 1] pixels) with the weights' mean and std."""

    def __init__(self, input_shape, num_classes, arch="resnet18", weights=None, freeze="none", unfreeze_at_epoch=None):
        super().__init__()
        if len(input_shape) != 3 or input_shape[0] not in (1, 3):
            raise ConfigError(
                f"model=torchvision needs images of 1 or 3 channels (C, H, W); this data gives samples of shape "
                f"{tuple(input_shape)}: use model=mlp, cnn or lstm"
            )
        names = architectures()
        if arch not in names:
            raise ConfigError(
                f"model.arch={arch} is not a torchvision classification architecture{suggest(arch, names)}; "
                f"choose one of: {', '.join(names)}"
            )
        if freeze not in FREEZE:
            raise ConfigError(f"model.freeze={freeze} is not one of {', '.join(FREEZE)}{suggest(freeze, FREEZE)}")
        if unfreeze_at_epoch is not None:
            if freeze != "backbone":
                raise ConfigError(
                    f"model.unfreeze_at_epoch={unfreeze_at_epoch} unfreezes a frozen backbone: "
                    f"add model.freeze=backbone"
                )
            if isinstance(unfreeze_at_epoch, bool) or not isinstance(unfreeze_at_epoch, int) or unfreeze_at_epoch < 2:
                raise ConfigError(
                    f"model.unfreeze_at_epoch={unfreeze_at_epoch}: use an epoch number >= 2 (the epoch whose start "
                    f"unfreezes the backbone), or model.freeze=none to train it from the first epoch"
                )
        self.arch, self.weights, self.freeze, self.unfreeze_at_epoch = arch, weights, freeze, unfreeze_at_epoch
        self.named = named_weights(arch, weights)  # a torchvision weights entry, or None (none, or a file)
        self.net = build_arch(arch, pretrained=weights is not None)
        self.head_name, self.original_head = replace_head(self.net, arch, num_classes)
        self.grey = input_shape[0] == 1  # repeated to 3 channels: the stem's (pretrained) filters stay as they are
        self.normalize = weights is not None
        if self.normalize:
            mean, std = weights_stats(self.named)
            self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1))
        self.lr_scale = None  # the backbone's share of optimizer.lr, set by param_groups()
        self.frozen = False
        self.set_frozen(freeze == "backbone")  # the first epoch's stage; train_stage() sets each epoch's
        check_input(self, arch, input_shape)

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes) logits
        if self.grey:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W), a view
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.net(x)

    @property
    def head(self) -> nn.Linear:
        return self.net.get_submodule(self.head_name)

    # --- fine-tuning ----------------------------------------------------------------------------
    def backbone_parameters(self) -> list:
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    def param_groups(self, lr: float, scale=None) -> list:
        """The optimizer's parameter groups: the head at lr, the backbone at lr x scale (null: 0.1
        with pretrained weights, 1.0 from scratch), named for lr.csv's columns (lr, lr_backbone)."""
        self.lr_scale = scale if scale is not None else (0.1 if self.weights is not None else 1.0)
        return [
            {"params": list(self.head.parameters()), "lr": lr, "name": "head"},
            {"params": self.backbone_parameters(), "lr": lr * self.lr_scale, "name": "backbone"},
        ]

    def train_stage(self, epoch: int) -> bool:
        """Freeze or unfreeze the backbone as epoch (from 1) needs: derived from the epoch alone, so a
        resumed run is in the right stage. Returns whether the trainable parameters changed."""
        frozen = self.freeze == "backbone" and (self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch)
        if frozen == self.frozen:
            return False
        self.set_frozen(frozen)
        if not frozen:
            scale = f"optimizer.lr x {self.lr_scale:g} (optimizer.backbone_lr_scale)" if self.lr_scale else "its rate"
            log.info(f"epoch {epoch}: the backbone is unfrozen (model.unfreeze_at_epoch) and trains at {scale}")
        return True

    def set_frozen(self, frozen: bool) -> None:
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)
        self.frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True):
        """As nn.Module.train, but a frozen backbone's batch norm stays in inference mode (its running
        statistics unchanged), as Keras runs a layer with trainable=False."""
        super().train(mode)
        if mode and self.frozen:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # --- pretrained weights ---------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """Load model.weights into the backbone (nothing for null). Called by a new run only: a
        resumed or reloaded run has its own trained weights, so the file or download is not needed."""
        if self.weights is None:
            if self.freeze == "backbone":
                log.warning("model.freeze=backbone with model.weights=null: the frozen backbone keeps random weights")
            return
        state, source = self.read_weights()
        loaded, skipped = load_into(self.net, state, self.head_name, self.original_head, self.arch, self.weights)
        mean, std = weights_stats(self.named)
        head = f"; the file's {skipped} head left out: the new head ({self.head_name}) starts at random"
        log.info(
            f"model.weights={self.weights}: {loaded} tensors from {source} loaded into {self.arch}"
            + (head if skipped else "")
            + f". Inputs: pixels in [0, 1] normalized by the model with the weights' mean {list(mean)} and "
            f"std {list(std)}"
            + ("" if self.named else " (ImageNet's, assumed for a weights file)")
            + ("; grey images repeated to 3 channels" if self.grey else "")
        )

    def read_weights(self):
        """(state_dict, where it came from) for model.weights."""
        if self.named is not None:
            return download(self.named, self.weights), f"torchvision's {self.arch} {self.named.name}"
        path = Path(str(self.weights)).expanduser()
        if path.exists() and not path.is_file():  # /dev/zero, a FIFO, a folder (or a link to one)
            raise ConfigError(f"model.weights={self.weights}: not a regular file; give the state_dict file itself")
        if not path.is_file():
            raise ConfigError(
                f"model.weights={self.weights}: no such file; give a state_dict file ({', '.join(FILE_SUFFIXES)}) "
                f"or a torchvision weights name of {self.arch} ({', '.join(weight_names(self.arch))})"
            )
        return read_state_dict(path, f"model.weights={self.weights}"), str(path)


def named_weights(arch: str, weights):
    """The torchvision weights entry model.weights names, None for null or a file path."""
    if weights is None:
        return None
    text = str(weights)
    if text.endswith(FILE_SUFFIXES) or "/" in text or "\\" in text:
        return None
    names = weight_names(arch)
    if text not in names:
        raise ConfigError(
            f"model.weights={text} is neither one of {arch}'s weights names ({', '.join(names) or 'it has none'})"
            f"{suggest(text, names)} nor a state_dict file ({', '.join(FILE_SUFFIXES)})"
        )
    import torchvision.models

    return torchvision.models.get_model_weights(arch)[text]


def weight_names(arch: str) -> list:
    import torchvision.models

    try:
        return list(torchvision.models.get_model_weights(arch).__members__)
    except ValueError:
        return []


def weights_stats(named) -> tuple:
    """(mean, std) the weights were trained with: torchvision's transforms for a named entry."""
    if named is None:
        return IMAGENET
    preset = named.transforms()
    return tuple(preset.mean), tuple(preset.std)


def build_arch(arch: str, pretrained: bool) -> nn.Module:
    """The architecture with torchvision's 1000-class head and fresh weights."""
    import torchvision.models

    options = {}
    if arch in SIDE_HEADS:  # their pretrained weights expect transform_input, as torchvision builds them
        options = {"aux_logits": False, "init_weights": True, "transform_input": pretrained}
    try:
        return torchvision.models.get_model(arch, weights=None, **options)
    except NotImplementedError:  # regnet computes its widths with tensors, which the meta device cannot
        if torch.empty(0).device.type != "meta":
            raise
        with torch.device("cpu"):
            return torchvision.models.get_model(arch, weights=None, **options).to("meta")


def replace_head(net: nn.Module, arch: str, num_classes: int) -> tuple:
    """Put a new Linear for num_classes where the architecture's last Linear layer with 1000 outputs
    (its ImageNet classifier) is; says which one in the log. Returns (its name, the old one's shape)."""
    heads = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    if not heads:
        raise ConfigError(
            f"model.arch={arch} has no Linear classifier layer to replace (it ends in a convolution); "
            f"choose an architecture with one, e.g. resnet18, mobilenet_v3_small or efficientnet_b0"
        )
    name, old = heads[-1]
    head = nn.Linear(old.in_features, num_classes)
    net.set_submodule(name, head)
    log.info(f"model.arch={arch}: its classifier {name} ({old.in_features} -> 1000) replaced by one for {num_classes}")
    return name, tuple(old.weight.shape)


def check_input(model: Backbone, arch: str, input_shape) -> None:
    """One sample through the model (no gradients, inference mode), so that images the architecture
    cannot take fail here, in one line, not as torch's error in the first step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except (RuntimeError, AssertionError, ValueError) as exc:
        size = tuple(input_shape[1:])
        named = model.named or next(iter(torchvision_weights(arch)), None)
        least = tuple((named.meta.get("min_size") or ()) if named is not None else ())
        reason = (
            f"it takes at least {least[0]}x{least[1]}"
            if least and (size[0] < least[0] or size[1] < least[1])
            else next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        )
        raise ConfigError(
            f"model.arch={arch} cannot take this data's {size[0]}x{size[1]} images ({reason}); choose an "
            f"architecture that pools to any size, e.g. resnet18, mobilenet_v3_small or efficientnet_b0"
        ) from None
    finally:
        model.train(was_training)


def known_params(arch) -> int:
    """The most parameters torchvision's weights of arch record (its 1000-class model), or 0."""
    counts = [w.meta.get("num_params", 0) for w in torchvision_weights(arch)] if isinstance(arch, str) else []
    return max(counts, default=0)


def torchvision_weights(arch: str):
    import torchvision.models

    try:
        return list(torchvision.models.get_model_weights(arch))
    except ValueError:
        return []


def download(named, weights) -> dict:
    """The state_dict of a torchvision weights entry: from torchvision's cache, else downloaded
    into it. Offline with no cached file: one line naming the file, the cache and the way round."""
    import os
    from urllib.parse import urlparse

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = os.path.basename(urlparse(named.url).path)
    if not (folder / file).is_file():
        log.info(f"model.weights={weights}: downloading {named.url} into {folder}")
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # torch.hub's lines
            return named.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (offline, refused, a damaged download: all mean "not there")
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(
            f"model.weights={weights}: torchvision could not get {file} ({reason}) and it is not in its cache "
            f"{folder} (TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')}); put the file there, or give a local "
            f"state_dict file: model.weights=/path/to/{file}"
        ) from None


def read_state_dict(path: Path, key: str) -> dict:
    """A state_dict from a .safetensors file or a .pt/.pth file (torch.load with weights_only=True:
    tensors and plain values only, never code). A checkpoint dict holding one under "state_dict"
    or "model" (Lightning, nnrun's own) gives that one."""
    if path.suffix not in FILE_SUFFIXES:
        raise ConfigError(f"{key}: use a {', '.join(FILE_SUFFIXES)} file of a state_dict")
    if path.suffix != ".safetensors":  # torch's refusal in nnrun's words, never its advice to load unsafely
        state = load_tensors(path, key, "give a state_dict file saved with torch.save(model.state_dict(), path)")
    else:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own types)
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ConfigError(f"{key}: the file cannot be read as a state_dict ({reason})") from None
    if isinstance(state, dict):
        for inner in ("state_dict", "model"):
            if isinstance(state.get(inner), dict):
                state = state[inner]
                break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(
            f"{key}: the file holds no state_dict (a mapping of names to tensors); save model.state_dict()"
        )
    return state


def load_into(net: nn.Module, state: dict, head: str, original_head: tuple, arch: str, weights) -> tuple:
    """Copy state into net, checked key by key: the head's tensors load when they have this data's
    shape, and are left out when they have the architecture's original (1000-class) shape. An nnrun
    run's model.safetensors (keys under net.) loads too. Returns (tensors loaded, "1000-class" or "")."""
    if state and all(k.startswith("net.") or k in ("mean", "std") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    state = {k: v for k, v in state.items() if not k.startswith(SIDE_KEYS)}
    own = net.state_dict()
    head_keys = {f"{head}.weight": original_head, f"{head}.bias": original_head[:1]}
    skipped = ""
    for key, tensor in own.items():
        if key not in state:
            problem = f"it has no {key}"
        elif tuple(state[key].shape) == tuple(tensor.shape):
            continue
        elif key in head_keys and tuple(state[key].shape) == head_keys[key]:
            skipped = f"{original_head[0]}-class"
            continue
        else:
            problem = f"its {key} has shape {tuple(state[key].shape)}, the model's {tuple(tensor.shape)}"
        raise ConfigError(
            f"model.weights={weights} does not fit model.arch={arch}: {problem}; give a state_dict of {arch}"
        )
    extra = [k for k in state if k not in own]
    if extra:
        raise ConfigError(
            f"model.weights={weights} does not fit model.arch={arch}: its {extra[0]} is not in the model "
            f"({len(extra)} such keys); give a state_dict of {arch}"
        )
    loading = {k: v for k, v in state.items() if not (skipped and k in head_keys)}
    net.load_state_dict(loading, strict=False)
    return len(loading), skipped
