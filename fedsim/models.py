"""Models: an MLP, DIFF2's FC_10, a LeNet-style CNN and a GroupNorm ResNet-8, in plain torch.

Every model is registered as a ``model`` component whose factory takes
``(params, input_shape, num_classes)`` and returns an ``nn.Module`` mapping a batch of
inputs of shape ``(batch, *input_shape)`` to logits of shape ``(batch, num_classes)``.
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator
from torch import nn

from fedsim.registry import Params, get, register


def build_model(name: str, params_dict: dict, input_shape, num_classes: int) -> nn.Module:
    """Validate ``params_dict`` against model ``name``'s params and build the model."""
    entry = get("model", name)
    return entry.factory(entry.params.model_validate(params_dict), tuple(input_shape), num_classes)


def _image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model {model!r} needs image inputs (C, H, W), got input shape {input_shape}")
    return input_shape


def _dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []


# ------------------------------------------------------------------------------ mlp


class MLPParams(Params):
    hidden: list[int] = [64]
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_hidden(self) -> MLPParams:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be positive")
        return self


@register("model", "mlp", params=MLPParams)
def mlp(params: MLPParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multilayer perceptron on the flattened input: Linear-ReLU(-Dropout) per hidden layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in params.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU(), *_dropout(params.dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- fc10


class FC10Params(Params):
    hidden: int = Field(10, ge=1)


@register("model", "fc10", params=FC10Params)
def fc10(params: FC10Params, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """FC_10 of DIFF2's experiments (Murata & Suzuki, ICML 2023, Sec. 6):
    Linear(d_in, 10) → softplus → Linear(10, out) on the flattened input; ``out`` is the
    number of classes, 1 for a regression dataset."""
    width = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(width, params.hidden), nn.Softplus(), nn.Linear(params.hidden, num_classes))


# ------------------------------------------------------------------------------ cnn


class CNNParams(Params):
    dropout: float = Field(0.0, ge=0, lt=1)
    channels: list[int] = Field([6, 16], min_length=2, max_length=2)

    @model_validator(mode="after")
    def _check_channels(self) -> CNNParams:
        if any(c < 1 for c in self.channels):
            raise ValueError("channel counts must be positive")
        return self


# LeNet-5 feeds its first fully connected layer 16 maps of 5x5 (LeCun et al. 1998).
_LENET_MAP_SIZE = 5


@register("model", "cnn", params=CNNParams)
def cnn(params: CNNParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5-style CNN: two 5x5 conv + max-pool stages, then FC 120-84-classes.

    LeCun et al., "Gradient-based learning applied to document recognition" (1998).
    The convolutions use padding 2 so that they keep the spatial size, and a 2x2
    max-pool halves it only where it is at least 2, so 8x8 digits work as well as
    28x28 and 32x32 images. An adaptive average pool then brings the maps down to at
    most LeNet's 5x5 before the fully connected layers; with ``dropout`` > 0 a
    dropout layer precedes each fully connected layer.
    """
    channels, height, width = _image_shape("cnn", input_shape)
    layers: list[nn.Module] = []
    for out in params.channels:
        layers += [nn.Conv2d(channels, out, kernel_size=5, padding=2), nn.ReLU()]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out
    height, width = min(height, _LENET_MAP_SIZE), min(width, _LENET_MAP_SIZE)
    layers += [nn.AdaptiveAvgPool2d((height, width)), nn.Flatten()]
    features = channels * height * width
    for out in (120, 84):
        layers += [*_dropout(params.dropout), nn.Linear(features, out), nn.ReLU()]
        features = out
    layers += [*_dropout(params.dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


# -------------------------------------------------------------------------- resnet8


class ResNet8Params(Params):
    width: int = Field(16, ge=1)
    groups: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check_groups(self) -> ResNet8Params:
        if self.width % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide width ({self.width})")
        return self


class _BasicBlock(nn.Module):
    """He et al. 2016 basic block (two 3x3 convs, identity or 1x1 projection shortcut),
    with GroupNorm in place of BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(groups, cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(groups, cout),
        )
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(groups, cout)
            )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


@register("model", "resnet8", params=ResNet8Params)
def resnet8(params: ResNet8Params, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ResNet-8 with GroupNorm: 3x3 stem, three one-block stages, global pool, linear.

    The CIFAR ResNet layout of He et al., "Deep Residual Learning for Image
    Recognition" (2016, Sec. 4.2: stages of width w, 2w, 4w, strides 1, 2, 2) with
    one basic block per stage: 1 stem + 3 x 2 block convolutions + 1 linear = 8
    weighted layers. BatchNorm is replaced by GroupNorm (Wu & He, "Group
    Normalization", 2018), which keeps no batch statistics, since those are biased
    under non-IID client data (Hsieh et al., "The Non-IID Data Quagmire of
    Decentralized Machine Learning", ICML 2020). Every GroupNorm has ``groups``
    groups, 2 by default as in the GroupNorm ResNets of Reddi et al., "Adaptive
    Federated Optimization" (ICLR 2021); ``groups`` must divide ``width``.
    """
    channels, _, _ = _image_shape("resnet8", input_shape)
    w, g = params.width, params.groups
    return nn.Sequential(
        nn.Conv2d(channels, w, 3, padding=1, bias=False),
        nn.GroupNorm(g, w),
        nn.ReLU(),
        _BasicBlock(w, w, stride=1, groups=g),
        _BasicBlock(w, 2 * w, stride=2, groups=g),
        _BasicBlock(2 * w, 4 * w, stride=2, groups=g),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )
