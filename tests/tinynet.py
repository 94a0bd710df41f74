"""model.arch=tiny_resnet: a ResNet of one 8-channel block, registered with torchvision for this
test process, so that freezing, learning-rate groups and the unfreeze switch are tested in
milliseconds (ResNet-18: 11.7M parameters, 135 MB of checkpoint a run). Its tensors carry ResNet's
names (conv1, bn1, layer1.0.conv1, fc) and its head is a Linear with 1000 outputs, as nnrun finds it."""

from torch import nn
from torchvision.models import resnet
from torchvision.models._api import BUILTIN_MODELS  # torchvision has no public way to add an architecture

WIDTH = 8  # channels of the stem and the block: the head is fc (8 -> 1000)


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(resnet.BasicBlock(WIDTH, WIDTH))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, x):  # (B, 3, H, W) -> (B, num_classes)
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def tiny_resnet(weights=None, num_classes: int = 1000) -> TinyResNet:
    assert weights is None  # nnrun builds with fresh weights and loads model.weights itself
    return TinyResNet(num_classes)


tiny_resnet.__module__ = "torchvision.models.tinynet"  # list_models(module=torchvision.models) lists it
BUILTIN_MODELS.setdefault("tiny_resnet", tiny_resnet)
