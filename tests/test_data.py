"""Tests of fedsim.data.datasets: every dataset's contents, splits and error handling."""

import gzip
import math
import os
import pickle
import struct

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fedsim import registry
from fedsim.data import datasets as data
from fedsim.data.datasets import load_dataset


@pytest.mark.parametrize("name", ["digits", "synthetic", "mnist", "cifar10", "hf"])
def test_datasets_are_registered_with_a_description(name):
    entry = registry.get("dataset", name)
    assert entry.description and "\n" not in entry.description


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_values():
    ds = load_dataset("digits", {}, seed=0)
    assert ds.input_shape == (1, 8, 8)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_test.shape[1:] == (1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 10 and ds.groups is None
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    assert len(ds.y_test) == math.ceil(0.2 * 1797)  # scikit-learn rounds the test size up


def test_digits_test_split_is_fixed_and_partitions_the_data():
    from sklearn.datasets import load_digits

    a = data.digits(data.DigitsParams(), seed=0)
    b = data.digits(data.DigitsParams(), seed=12345)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)

    assert len(a.y_train) + len(a.y_test) == 1797
    # Train and test together are exactly the 1797 examples (as a multiset): nothing
    # lost, nothing duplicated across the split.
    full = load_digits()
    rows = lambda x, y: sorted(map(bytes, np.column_stack([np.round(x.reshape(len(x), -1) * 16), y]).astype(np.uint8)))
    split_rows = rows(np.concatenate([a.x_train, a.x_test]), np.concatenate([a.y_train, a.y_test]))
    assert split_rows == rows(full.images / 16.0, full.target)


def test_load_dataset_validates_and_caches():
    assert load_dataset("digits", {}, 0) is load_dataset("digits", {"test_fraction": 0.2}, 0)
    assert len(load_dataset("digits", {"test_fraction": 0.5}, 0).y_test) == math.ceil(0.5 * 1797)
    with pytest.raises(ValidationError):
        load_dataset("digits", {"test_fraction": 0.2, "bogus": 1}, 0)
    with pytest.raises(ValidationError):
        load_dataset("digits", {"test_fraction": 1.5}, 0)
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("no-such-dataset", {}, 0)


# ------------------------------------------------------------------------ synthetic


def _synthetic(seed, **kw):
    return data.synthetic(data.SyntheticParams(**kw), seed)


def test_synthetic_is_deterministic_per_seed():
    a, b, c = _synthetic(3, num_users=10), _synthetic(3, num_users=10), _synthetic(4, num_users=10)
    for field in ("x_train", "y_train", "x_test", "y_test", "groups"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.x_train.shape != c.x_train.shape or not np.array_equal(a.x_train, c.x_train)


def test_synthetic_users_and_shapes():
    ds = _synthetic(0, num_users=12, dim=20, num_classes=5)
    assert ds.input_shape == (20,) and ds.num_classes == 5
    assert ds.groups.shape == ds.y_train.shape
    assert sorted(np.unique(ds.groups)) == list(range(12))
    assert ds.y_train.min() >= 0 and max(ds.y_train.max(), ds.y_test.max()) < 5
    # Every user has at least the generator's 50 samples, 20% of them held out.
    train_counts = np.bincount(ds.groups)
    total = len(ds.y_train) + len(ds.y_test)
    assert train_counts.min() >= 40 and len(ds.y_test) == pytest.approx(0.2 * total, abs=12)


def test_synthetic_input_covariance_follows_power_law():
    # With iid the input mean is 0 and Var(x_j) = j^(-1.2) (FedProx, Sec. 5).
    ds = _synthetic(1, iid=True, num_users=40)
    x = np.concatenate([ds.x_train, ds.x_test])
    expected = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(x.var(axis=0), expected, rtol=0.15)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=4 * np.sqrt(expected / len(x)).max())


def _mean_label_tv(ds):
    """Mean total-variation distance between each user's label histogram and the global one."""
    overall = np.bincount(ds.y_train, minlength=ds.num_classes) / len(ds.y_train)
    distances = []
    for user in np.unique(ds.groups):
        hist = np.bincount(ds.y_train[ds.groups == user], minlength=ds.num_classes)
        distances.append(0.5 * np.abs(hist / hist.sum() - overall).sum())
    return float(np.mean(distances))


def test_synthetic_heterogeneity():
    iid = _mean_label_tv(_synthetic(0, iid=True))
    non_iid = _mean_label_tv(_synthetic(0, alpha=1.0, beta=1.0))
    assert iid < 0.25
    assert non_iid > iid + 0.3


# ---------------------------------------------------------------------------- mnist


def _write_idx(path, array, gz=False):
    array = np.asarray(array, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def _write_mnist(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (12, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    labels = {"train": np.arange(12) % 10, "t10k": np.array([9, 8, 7, 6, 5])}
    for prefix, gz in (("train", False), ("t10k", True)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images[prefix], gz=gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels[prefix], gz=gz)
    return images, labels


def test_mnist_reads_plain_and_gzipped_idx(tmp_path):
    images, labels = _write_mnist(tmp_path)
    ds = load_dataset("mnist", {"path": str(tmp_path)}, 0)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(ds.x_train[:, 0], images["train"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test[:, 0], images["t10k"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, labels["train"])
    np.testing.assert_array_equal(ds.y_test, labels["t10k"])

    limited = load_dataset("mnist", {"path": str(tmp_path), "limit_train": 4, "limit_test": 2}, 0)
    np.testing.assert_array_equal(limited.x_train, ds.x_train[:4])
    np.testing.assert_array_equal(limited.y_test, labels["t10k"][:2])


def test_mnist_bad_magic_names_the_file(tmp_path):
    _write_mnist(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + bad.read_bytes()[4:])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*magic"):
        data.mnist(data.FileDatasetParams(path=str(tmp_path)), 0)


def test_mnist_truncated_or_missing_file(tmp_path):
    _write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        data.mnist(data.FileDatasetParams(path=str(tmp_path)), 0)
    images.unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.mnist(data.FileDatasetParams(path=str(tmp_path)), 0)


# -------------------------------------------------------------------------- cifar10


def _write_cifar(tmp_path, sizes=(2, 2, 2, 2, 2), test_size=3):
    """Batches in the real layout; returns the raw train/test rows and labels."""
    rng = np.random.default_rng(1)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, [*sizes, test_size]):
        rows = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = (rows, labels)
    return written


def test_cifar10_reads_batches_in_channel_major_layout(tmp_path):
    written = _write_cifar(tmp_path)
    ds = load_dataset("cifar10", {"path": str(tmp_path)}, 0)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    train_rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(ds.y_train, train_labels)
    np.testing.assert_array_equal(ds.y_test, written["test_batch"][1])
    # Row layout: 1024 red values, then green, then blue, each row-major 32x32.
    for x, rows in ((ds.x_train, train_rows), (ds.x_test, written["test_batch"][0])):
        np.testing.assert_allclose(x[:, 0], rows[:, :1024].reshape(-1, 32, 32) / 255.0, rtol=1e-6)
        np.testing.assert_allclose(x[:, 2], rows[:, 2048:].reshape(-1, 32, 32) / 255.0, rtol=1e-6)
    assert ds.x_train[0, 0, 0, 1] == np.float32(train_rows[0, 1] / 255.0)
    assert ds.x_train[0, 1, 1, 0] == np.float32(train_rows[0, 1024 + 32] / 255.0)

    limited = data.cifar10(data.FileDatasetParams(path=str(tmp_path), limit_train=3, limit_test=1), 0)
    np.testing.assert_array_equal(limited.x_train, ds.x_train[:3])
    assert limited.x_test.shape == (1, 3, 32, 32)


class _Exploit:
    """Unpickling this would create a directory."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar10_refuses_pickles_with_foreign_globals(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Exploit(str(marker)), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="data_batch_3.*mkdir"):
        data.cifar10(data.FileDatasetParams(path=str(tmp_path)), 0)
    assert not marker.exists()

    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": os.system, b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing"):
        data.cifar10(data.FileDatasetParams(path=str(tmp_path)), 0)


def test_cifar10_missing_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        data.cifar10(data.FileDatasetParams(path=str(tmp_path)), 0)


# ------------------------------------------------------------------------------- hf


def _frame(n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "f1": rng.normal(size=n).astype(np.float32),
        "f2": rng.integers(-5, 5, n),
        "f3": rng.normal(size=n).astype(np.float32),
        "f4": rng.normal(size=n).astype(np.float32),
        "species": rng.choice(["emu", "cat", "dog"], n),
    })


def _hf(**params):
    return data.hf(data.HFParams(label_column="species", **params), seed=0)


def test_hf_parquet_with_csv_test_file(tmp_path):
    train, test = _frame(30, 0), _frame(8, 1)
    train.to_parquet(tmp_path / "train.parquet")
    test.to_csv(tmp_path / "test.csv", index=False)
    ds = _hf(path=str(tmp_path / "train.parquet"), test_path=str(tmp_path / "test.csv"))
    features = ["f1", "f2", "f3", "f4"]
    assert ds.input_shape == (4,) and ds.num_classes == 3
    np.testing.assert_allclose(ds.x_train, train[features].to_numpy(np.float32), rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, test[features].to_numpy(np.float32), rtol=1e-6)
    # String labels map to the index of their sorted value: cat 0, dog 1, emu 2.
    codes = {"cat": 0, "dog": 1, "emu": 2}
    np.testing.assert_array_equal(ds.y_train, train["species"].map(codes))
    np.testing.assert_array_equal(ds.y_test, test["species"].map(codes))


def test_hf_holds_out_a_fixed_test_fraction(tmp_path):
    frame = _frame(50, 2)
    frame.to_csv(tmp_path / "all.csv", index=False)
    ds = _hf(path=str(tmp_path / "all.csv"), test_fraction=0.2)
    assert len(ds.y_test) == 10 and len(ds.y_train) == 40
    written = {tuple(r) for r in frame[["f1", "f2", "f3", "f4"]].to_numpy(np.float32)}
    train_rows = {tuple(r) for r in ds.x_train}
    test_rows = {tuple(r) for r in ds.x_test}
    assert train_rows | test_rows == written and not train_rows & test_rows
    again = data.hf(data.HFParams(path=str(tmp_path / "all.csv"), label_column="species"), seed=99)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_hf_feature_columns_and_image_shape(tmp_path):
    frame = _frame(10, 3)
    frame.to_parquet(tmp_path / "d.parquet")
    ds = _hf(path=str(tmp_path / "d.parquet"), feature_columns=["f4", "f1"])
    np.testing.assert_allclose(np.concatenate([ds.x_train, ds.x_test])[:, 0].sum(), frame["f4"].sum(), rtol=1e-5)
    assert ds.input_shape == (2,)
    shaped = _hf(path=str(tmp_path / "d.parquet"), image_shape=[1, 2, 2])
    assert shaped.input_shape == (1, 2, 2)
    with pytest.raises(ValueError, match="image_shape"):
        _hf(path=str(tmp_path / "d.parquet"), image_shape=[1, 3, 3])
    with pytest.raises(ValueError, match="no column 'nope'"):
        _hf(path=str(tmp_path / "d.parquet"), feature_columns=["nope"])


def test_hf_image_column_becomes_scaled_chw(tmp_path):
    import datasets
    from PIL import Image

    pixels = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)
    table = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p) for p in pixels], "label": [0, 2, 0]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}),
    )
    table.to_parquet(str(tmp_path / "img.parquet"))
    table.to_parquet(str(tmp_path / "img_test.parquet"))
    ds = data.hf(data.HFParams(path=str(tmp_path / "img.parquet"), test_path=str(tmp_path / "img_test.parquet")), 0)
    assert ds.input_shape == (3, 4, 5)
    np.testing.assert_allclose(ds.x_train, pixels.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, [0, 2, 0])
    assert ds.num_classes == 3  # from the ClassLabel feature, not the labels present


def test_hf_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        _hf(path=str(tmp_path / "missing.parquet"))
    _frame(5, 0).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError, match="'species'.*not numeric"):
        data.hf(data.HFParams(path=str(tmp_path / "d.csv"), label_column="f1"), 0)
    with pytest.raises(ValidationError):
        data.HFParams(path="x.csv", unknown=1)


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs offline mode")
def test_hf_unknown_hub_name_fails_clearly_offline():
    with pytest.raises(ValueError, match="cannot load dataset 'no-such-owner/no-such-dataset'"):
        _hf(path="no-such-owner/no-such-dataset")
