"""Fashion-MNIST: the named dataset over the four IDX files (Debian's dataset-fashion-mnist)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.data import datasets as data
from fedsim.data.datasets import FASHION_MNIST_DEBIAN_PATH, load_dataset
from fedsim.models import build_model

_INSTALLED = all(
    (Path(FASHION_MNIST_DEBIAN_PATH) / f"{p}-{k}-idx{n}-ubyte.gz").is_file()
    for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))
)
needs_files = pytest.mark.skipif(
    not _INSTALLED,
    reason=f"Fashion-MNIST IDX files not in {FASHION_MNIST_DEBIAN_PATH} "
           "(apt-get install dataset-fashion-mnist; .ci/run installs it where apt is available)",
)


def test_missing_directory_says_how_to_get_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(data.FashionMNISTParams(path=str(tmp_path / "nowhere")), 0)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.fashion_mnist(data.FashionMNISTParams(path=str(tmp_path)), 0)


@needs_files
def test_the_debian_files_hold_the_published_splits():
    # Xiao et al. 2017 (arXiv:1708.07747), Sec. 2 and the dataset's README: 60,000 train and
    # 10,000 test 28x28 grey images, 10 classes of 6,000 / 1,000 each; the first image of
    # both files is class 9 ("Ankle boot").
    ds = load_dataset("fashion_mnist", {}, 0)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    assert ds.y_train[0] == 9 and ds.y_test[0] == 9
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


@needs_files
def test_lenet_cnn_learns_fashion_mnist_on_a_limited_split():
    ds = load_dataset("fashion_mnist", {"limit_train": 2000, "limit_test": 1000}, 0)
    model = build_model("cnn", {}, ds.input_shape, ds.num_classes)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    for _ in range(3):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean()
    assert acc > 0.5  # chance is 0.10 (0.62 measured at 3 epochs of 2,000 images)
