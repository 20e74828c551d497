"""Tests of fedsim.models: output shapes, dropout, normalisation, params, learning."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from fedsim import registry
from fedsim.data.datasets import load_dataset
from fedsim.models import build_model

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
MODELS = ["mlp", "cnn", "resnet8"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_logits_shape(name, shape):
    torch.manual_seed(0)
    model = build_model(name, {}, shape, num_classes=7)
    logits = model(torch.rand(5, *shape))
    assert logits.shape == (5, 7) and torch.isfinite(logits).all()
    assert registry.get("model", name).description


def test_mlp_on_vectors_and_layer_sizes():
    model = build_model("mlp", {"hidden": [32, 16]}, (60,), num_classes=10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(60, 32), (32, 16), (16, 10)]
    assert model(torch.rand(3, 60)).shape == (3, 10)


@pytest.mark.parametrize("name", ["cnn", "resnet8"])
def test_image_models_reject_vector_inputs(name):
    with pytest.raises(ValueError, match="image inputs"):
        build_model(name, {}, (60,), num_classes=10)


@pytest.mark.parametrize("shape, fc_inputs", [((3, 32, 32), 16 * 5 * 5), ((1, 28, 28), 16 * 5 * 5), ((1, 8, 8), 16 * 2 * 2)])
def test_cnn_is_lenet_sized(shape, fc_inputs):
    model = build_model("cnn", {}, shape, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(shape[0], 6, (5, 5)), (6, 16, (5, 5))]
    assert [(m.in_features, m.out_features) for m in linears] == [(fc_inputs, 120), (120, 84), (84, 10)]


@pytest.mark.parametrize("name, shape", [("mlp", (1, 8, 8)), ("cnn", (1, 28, 28))])
def test_dropout_is_active_only_in_train_mode(name, shape):
    torch.manual_seed(0)
    x = torch.rand(4, *shape)
    model = build_model(name, {"dropout": 0.5}, shape, num_classes=10)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == (1 if name == "mlp" else 3)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))

    plain = build_model(name, {}, shape, num_classes=10).train()
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    assert torch.equal(plain(x), plain(x))


@pytest.mark.parametrize("width, groups", [(16, 2), (8, 4)])
def test_resnet8_uses_groupnorm_only(width, groups):
    model = build_model("resnet8", {"width": width, "groups": groups}, (3, 32, 32), num_classes=10)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    # stem + 2 per block + the projection shortcuts of the two strided stages
    assert len(norms) == 1 + 3 * 2 + 2
    assert all(m.num_groups == groups for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 8  # the "8" of ResNet-8
    assert linears[0].in_features == 4 * width


@pytest.mark.parametrize(
    "name, params",
    [
        ("mlp", {"hiden": [8]}),
        ("mlp", {"hidden": [0]}),
        ("mlp", {"dropout": 1.0}),
        ("cnn", {"channels": [6, 16, 32]}),
        ("cnn", {"kernel": 3}),
        ("resnet8", {"width": 16, "groups": 3}),
        ("resnet8", {"depth": 20}),
    ],
)
def test_invalid_params_are_rejected(name, params):
    with pytest.raises(ValidationError):
        build_model(name, params, (1, 8, 8), num_classes=10)




@pytest.mark.parametrize("name", MODELS)
def test_models_learn_digits(name, torch_one_thread):
    ds = load_dataset("digits", {}, seed=0)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    torch.manual_seed(0)
    model = build_model(name, {}, ds.input_shape, ds.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):
        for idx in torch.randperm(len(y)).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean()
    assert accuracy > 0.8
