"""Datasets: the embedded scikit-learn digits and diabetes (regression), LEAF synthetic,
MNIST, Fashion-MNIST, CIFAR-10 and any Hugging Face / parquet / CSV dataset loaded through flwr-datasets.

Every dataset is registered as a ``dataset`` component whose factory takes
``(params, seed)`` and returns a :class:`Dataset` of numpy arrays. Runs load datasets
through :func:`load_dataset`, which validates the params and caches the result per
process, so the arrays of a returned :class:`Dataset` are shared and must not be
modified in place.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from fedsim.registry import Params, get, register

# Work offline unless the user asked otherwise: a hub name that is not in the local
# cache then fails at once with a clear message instead of waiting on the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Dataset:
    """A train/test split held in memory."""

    x_train: np.ndarray  # float32, shape (n, *input_shape)
    y_train: np.ndarray  # int64 labels, shape (n,); float32 targets for regression
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # the model's output width: the number of classes, 1 for regression
    input_shape: tuple[int, ...]  # (D,) for vectors, (C, H, W) for images
    groups: np.ndarray | None = None  # natural client id of each train sample, else None


def load_dataset(name: str, params_dict: dict, seed: int) -> Dataset:
    """Validate ``params_dict`` against dataset ``name``'s params and build it (cached)."""
    params = get("dataset", name).params.model_validate(params_dict)
    return _load_cached(name, json.dumps(params.model_dump(mode="json"), sort_keys=True), seed)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, params_json: str, seed: int) -> Dataset:
    entry = get("dataset", name)
    return entry.factory(entry.params.model_validate_json(params_json), seed)


def _finish(x_train, y_train, x_test, y_test, num_classes, groups=None, regression=False) -> Dataset:
    """Build a :class:`Dataset` with the canonical dtypes (float32 inputs, int64 labels;
    float32 targets and one output for ``regression``)."""
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    y_dtype = np.float32 if regression else np.int64
    return Dataset(
        x_train=x_train,
        y_train=np.asarray(y_train, dtype=y_dtype),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.asarray(y_test, dtype=y_dtype),
        num_classes=int(num_classes),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        groups=None if groups is None else np.asarray(groups, dtype=np.int64),
    )


# --------------------------------------------------------------------------- digits


def _held_in(n: int, test_fraction: float) -> int:
    """Training examples scikit-learn's ``train_test_split`` keeps: n - ceil(test_fraction·n)."""
    return n - math.ceil(test_fraction * n)


class DigitsParams(Params):
    test_fraction: float = Field(0.2, gt=0, lt=1)


# The held-out split does not depend on the run's seed: every run tests on the same
# examples, so results of different seeds are comparable.
_DIGITS_SPLIT_SEED = 0


@register("dataset", "digits", params=DigitsParams, train_size=lambda p: _held_in(1797, p.test_fraction))
def digits(params: DigitsParams, seed: int) -> Dataset:
    """scikit-learn 8x8 handwritten digits (1797 images, 10 classes), fixed test split."""
    return _digits(params.test_fraction)


@functools.lru_cache(maxsize=4)
def _digits(test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel intensities of load_digits are integers 0..16 (UCI optdigits).
    x = (bunch.images / 16.0).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=test_fraction, stratify=bunch.target,
        random_state=_DIGITS_SPLIT_SEED,
    )
    return _finish(x_train, y_train, x_test, y_test, num_classes=10)


# ------------------------------------------------------------------------- diabetes


class DiabetesParams(Params):
    test_fraction: float = Field(0.2, gt=0, lt=1)


_DIABETES_SPLIT_SEED = 0  # fixed, like digits': every run tests on the same patients


@register("dataset", "diabetes", params=DiabetesParams, train_size=lambda p: _held_in(442, p.test_fraction))
def diabetes(params: DiabetesParams, seed: int) -> Dataset:
    """scikit-learn diabetes regression (442 patients, 10 features, disease progression
    after one year), a fixed seeded split; features and target standardised with the
    training split's mean and std. A regression dataset: float32 targets, one output."""
    return _diabetes(params.test_fraction)


@functools.lru_cache(maxsize=4)
def _diabetes(test_fraction: float) -> Dataset:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    bunch = load_diabetes(scaled=False)
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=test_fraction, random_state=_DIABETES_SPLIT_SEED
    )
    mean, std = x_train.mean(0), x_train.std(0)
    y_mean, y_std = y_train.mean(), y_train.std()
    return _finish(
        (x_train - mean) / std, (y_train - y_mean) / y_std, (x_test - mean) / std, (y_test - y_mean) / y_std,
        num_classes=1, regression=True,
    )


# ------------------------------------------------------------------------ synthetic


class SyntheticParams(Params):
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    num_users: int = Field(30, ge=1)
    dim: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    iid: bool = False


# Samples per user: floor(lognormal(4, 2)) + 50 as in the FedProx generator; the
# lognormal draw is clipped here so that its heavy tail (e^10 at 3 sigma) cannot put
# almost all samples on one user.
_SYNTHETIC_MIN_SAMPLES = 50
_SYNTHETIC_MAX_EXTRA_SAMPLES = 1000


@register("dataset", "synthetic", params=SyntheticParams)
def synthetic(params: SyntheticParams, seed: int) -> Dataset:
    """LEAF/FedProx Synthetic(alpha, beta): per-user softmax-regression data, natural users.

    Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx,
    arXiv:1812.06127, Sec. 5 "Synthetic data"), also the LEAF synthetic benchmark. For
    user k:

        u_k ~ N(0, alpha),  W_k ~ N(u_k, 1) (dim x classes),  b_k ~ N(u_k, 1)
        B_k ~ N(0, beta),   v_k ~ N(B_k, 1) (dim)
        x ~ N(v_k, Sigma),  Sigma diagonal with Sigma_jj = j^(-1.2), j = 1..dim
        y = argmax(softmax(W_k^T x + b_k))   (= argmax of the logits)

    alpha controls how much the local models differ, beta how much the local inputs
    differ; as in the FedProx generator they are used as standard deviations. With
    ``iid`` every user shares W, b ~ N(0, 1) and v = 0 (the paper's Synthetic-IID).
    Each user draws floor(lognormal(4, 2)) + 50 samples (lognormal part clipped at
    1000) and holds out ``test_fraction`` of them; ``groups`` gives each train
    sample's user.
    """
    rng = np.random.default_rng(seed)
    k, dim, classes = params.num_users, params.dim, params.num_classes
    counts = np.minimum(rng.lognormal(4, 2, k).astype(np.int64), _SYNTHETIC_MAX_EXTRA_SAMPLES)
    counts += _SYNTHETIC_MIN_SAMPLES
    std_x = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)  # sqrt(Sigma_jj)

    if params.iid:
        shared = (rng.normal(0, 1, (dim, classes)), rng.normal(0, 1, classes), np.zeros(dim))
        user_models = [shared] * k
    else:
        u = rng.normal(0, params.alpha, k)
        big_b = rng.normal(0, params.beta, k)
        user_models = [
            (rng.normal(u[i], 1, (dim, classes)), rng.normal(u[i], 1, classes), rng.normal(big_b[i], 1, dim))
            for i in range(k)
        ]

    x_train, y_train, x_test, y_test, groups = [], [], [], [], []
    for user, (w, b, v) in enumerate(user_models):
        n = int(counts[user])
        x = v + rng.standard_normal((n, dim)) * std_x
        y = np.argmax(x @ w + b, axis=1)
        n_test = min(max(round(params.test_fraction * n), 1), n - 1)
        x_train.append(x[: n - n_test])
        y_train.append(y[: n - n_test])
        x_test.append(x[n - n_test :])
        y_test.append(y[n - n_test :])
        groups.append(np.full(n - n_test, user))

    return _finish(
        np.concatenate(x_train), np.concatenate(y_train),
        np.concatenate(x_test), np.concatenate(y_test),
        num_classes=classes, groups=np.concatenate(groups),
    )


# ---------------------------------------------------------------------------- mnist


class FileDatasetParams(Params):
    path: str
    limit_train: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)


# IDX element types (LeCun et al., http://yann.lecun.com/exdb/mnist/, "THE IDX FILE
# FORMAT"): the third magic byte; all multi-byte values are big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_file(directory: Path, name: str) -> Path:
    """``directory/name`` or its gzipped ``name.gz``."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"missing file {name} (or {name}.gz) in {directory}")


def read_idx(file: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) holding an array of ``ndim`` dimensions.

    Layout: magic = two zero bytes, a type byte, a dimension-count byte; then one
    big-endian uint32 per dimension; then the data in C order.
    """
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # unreadable, or a .gz that is not gzip
        raise ValueError(f"{file}: cannot read it ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{file}: not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[3] != ndim:
        raise ValueError(f"{file}: expected {ndim} dimensions, the header says {raw[3]}")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{file}: header announces shape {shape} ({expected} bytes of data), "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _mnist_split(directory: Path, prefix: str, limit: int | None):
    images_file = _find_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_file = _find_file(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise ValueError(f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels")
    images, labels = images[:limit], labels[:limit]
    return images[:, None].astype(np.float32) / 255.0, labels


@register("dataset", "mnist", params=FileDatasetParams, train_size=lambda p: min(p.limit_train or 60000, 60000))
def mnist(params: FileDatasetParams, seed: int) -> Dataset:
    """MNIST from the four original IDX files (optionally .gz) in directory ``path``."""
    directory = Path(params.path).expanduser()
    x_train, y_train = _mnist_split(directory, "train", params.limit_train)
    x_test, y_test = _mnist_split(directory, "t10k", params.limit_test)
    return _finish(x_train, y_train, x_test, y_test, num_classes=10)


# -------------------------------------------------------------------- fashion-mnist


# Where Debian's dataset-fashion-mnist package installs the four gzipped IDX files
# (`dpkg -L dataset-fashion-mnist`).
FASHION_MNIST_DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"


class FashionMNISTParams(Params):
    path: str = FASHION_MNIST_DEBIAN_PATH
    limit_train: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)


@register("dataset", "fashion_mnist", params=FashionMNISTParams)
def fashion_mnist(params: FashionMNISTParams, seed: int) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747): 70,000 28x28 grey images of
    10 clothing classes in MNIST's IDX layout (60,000 train, 10,000 test), read from the
    four IDX files (optionally .gz) in ``path``, by default where Debian's
    ``dataset-fashion-mnist`` package installs them."""
    directory = Path(params.path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST: no directory {directory}. Install Debian's package "
            f"(`apt-get install dataset-fashion-mnist`, files in {FASHION_MNIST_DEBIAN_PATH}) or put "
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            "t10k-labels-idx1-ubyte (optionally .gz, from https://github.com/zalandoresearch/fashion-mnist) "
            "in a directory and give it as the dataset's `path`"
        )
    x_train, y_train = _mnist_split(directory, "train", params.limit_train)
    x_test, y_test = _mnist_split(directory, "t10k", params.limit_test)
    return _finish(x_train, y_train, x_test, y_test, num_classes=10)


# -------------------------------------------------------------------------- cifar10


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for plain data: dicts, lists, bytes, numbers and numpy arrays.

    The CIFAR-10 batches are pickles; a pickle may name any importable callable and
    have it called while loading. Only the globals needed to rebuild numpy arrays
    are resolved here, everything else is refused before anything runs.
    """

    _ALLOWED = {
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_cifar_batch(file: Path):
    """One CIFAR-10 python batch: dict with b"data" (n, 3072) uint8 and b"labels".

    Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html: each row holds a 32x32
    image as 1024 red, then 1024 green, then 1024 blue values, each channel row-major.
    """
    if not file.is_file():
        raise FileNotFoundError(f"missing CIFAR-10 batch {file}")
    try:
        with open(file, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a pickle of garbage fails in many ways (int(), struct, memory)
        raise ValueError(f"{file}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{file}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{file}: expected uint8 data of shape (n, 3072) and n labels, "
            f"got {data.dtype} {data.shape} and {len(labels)} labels"
        )
    return data, labels


def _cifar_split(files: list[Path], limit: int | None):
    data, labels = [], []
    for file in files:
        d, y = _read_cifar_batch(file)
        data.append(d)
        labels.append(y)
    x = np.concatenate(data)[:limit].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, np.concatenate(labels)[:limit]


@register("dataset", "cifar10", params=FileDatasetParams, train_size=lambda p: min(p.limit_train or 50000, 50000))
def cifar10(params: FileDatasetParams, seed: int) -> Dataset:
    """CIFAR-10 from the python batches in ``path`` (the extracted cifar-10-batches-py)."""
    directory = Path(params.path).expanduser()
    train_files = [directory / f"data_batch_{i}" for i in range(1, 6)]
    x_train, y_train = _cifar_split(train_files, params.limit_train)
    x_test, y_test = _cifar_split([directory / "test_batch"], params.limit_test)
    return _finish(x_train, y_train, x_test, y_test, num_classes=10)


# ------------------------------------------------------------------------------- hf


class HFParams(Params):
    path: str
    test_path: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    label_column: str = "label"
    feature_columns: list[str] | None = None
    image_shape: list[int] | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _check_splits(self) -> HFParams:
        if self.train_split == self.test_split:
            raise ValueError("train_split and test_split must differ")
        return self


# Packaged `datasets` builders for local files, by file suffix.
_LOCAL_BUILDERS = {".parquet": "parquet", ".csv": "csv"}

# Seed of the held-out split when a dataset has no test split: fixed, like digits'.
_HF_SPLIT_SEED = 0


def _local_builder(path: str) -> str | None:
    """The builder for a local data file, or None when ``path`` names a hub dataset."""
    builder = _LOCAL_BUILDERS.get(Path(path).suffix.lower())
    if builder is not None and not Path(path).expanduser().is_file():
        raise ValueError(f"cannot load dataset {path!r}: no such file")
    return builder


def _load_hf_split(path: str, split: str, missing_ok: bool = False):
    """One split of ``path`` (hub name or local file) through flwr-datasets.

    A local file is read with the packaged builder of its format, ``data_files``
    naming it as split ``split``; ``FederatedDataset`` hands extra keyword arguments
    to ``datasets.load_dataset``. Order is kept (``shuffle=False``): partitioning is
    fedsim's business. Returns None for a missing split when ``missing_ok``.
    """
    from flwr_datasets import FederatedDataset

    builder = _local_builder(path)
    if builder is None:
        fds = FederatedDataset(dataset=path, partitioners={split: 1}, shuffle=False)
    else:
        data_files = {split: str(Path(path).expanduser())}
        fds = FederatedDataset(dataset=builder, partitioners={split: 1}, shuffle=False, data_files=data_files)
    try:
        return fds.load_split(split)
    except ValueError as exc:
        # flwr-datasets raises ValueError("The given split: ... is not present ...").
        if missing_ok and "not present" in str(exc):
            return None
        raise ValueError(f"cannot load dataset {path!r}: {exc}") from exc
    except Exception as exc:  # datasets / hub errors of every kind
        raise ValueError(f"cannot load dataset {path!r}: {exc}") from exc


def _leaf_dtype(feature) -> str | None:
    """Element dtype of a `datasets` feature (nested lists/arrays unwrapped)."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "uint8"
    while not hasattr(feature, "dtype") and hasattr(feature, "feature"):
        feature = feature.feature
    return getattr(feature, "dtype", None)


def _hf_arrays(split, columns: list[str], label_column: str, path: str):
    """(x, y) of one split: float32 inputs and the raw label values.

    Inputs are the numeric ``columns`` stacked into vectors, or a single image/array
    column kept in its shape (images as (C, H, W)); uint8 pixels are scaled to [0, 1].
    """
    import datasets

    for column in [*columns, label_column]:
        if column not in split.features:
            raise ValueError(f"dataset {path!r} has no column {column!r}; columns: {list(split.features)}")
    batch = split.select_columns([*columns, label_column]).with_format("numpy")[:]
    y = batch[label_column]
    if len(columns) == 1 and batch[columns[0]].ndim > 1:
        feature = split.features[columns[0]]
        x = batch[columns[0]]
        if isinstance(feature, datasets.Image):
            # PIL decodes to (H, W) or (H, W, C); models expect (C, H, W).
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        x = x.astype(np.float32)
        return (x / 255.0 if _leaf_dtype(feature) == "uint8" else x), y
    for column in columns:
        values = batch[column]
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise ValueError(
                f"dataset {path!r}: column {column!r} is not numeric ({values.dtype}); "
                "choose numeric columns with feature_columns, or a single image/array column"
            )
    return np.stack([batch[c].astype(np.float32) for c in columns], axis=1), y


@register("dataset", "hf", params=HFParams)
def hf(params: HFParams, seed: int) -> Dataset:
    """A Hugging Face hub dataset or a local parquet/CSV file, loaded with flwr-datasets."""
    train = _load_hf_split(params.path, params.train_split)
    if params.test_path is not None:
        if _local_builder(params.test_path) is None:
            raise ValueError(f"test_path {params.test_path!r} must be a local .parquet or .csv file")
        test = _load_hf_split(params.test_path, params.test_split)
    elif _local_builder(params.path) is None:
        test = _load_hf_split(params.path, params.test_split, missing_ok=True)
    else:
        test = None

    columns = params.feature_columns or [c for c in train.features if c != params.label_column]
    x_train, y_train = _hf_arrays(train, columns, params.label_column, params.path)
    if test is None:
        # No test split: hold out test_fraction of train, chosen with a fixed seed.
        order = np.random.default_rng(_HF_SPLIT_SEED).permutation(len(y_train))
        n_test = min(max(round(params.test_fraction * len(y_train)), 1), len(y_train) - 1)
        test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
        x_test, y_test = x_train[test_idx], y_train[test_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
    else:
        x_test, y_test = _hf_arrays(test, columns, params.label_column, params.test_path or params.path)

    y_train, y_test, num_classes = _encode_labels(y_train, y_test, train.features[params.label_column])
    if params.image_shape is not None:
        shape = tuple(params.image_shape)
        if int(np.prod(shape)) != int(np.prod(x_train.shape[1:])):
            raise ValueError(f"image_shape {list(shape)} does not fit features of shape {x_train.shape[1:]}")
        x_train = x_train.reshape(-1, *shape)
        x_test = x_test.reshape(-1, *shape)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train features {x_train.shape[1:]} and test features {x_test.shape[1:]} differ")
    return _finish(x_train, y_train, x_test, y_test, num_classes)


def _encode_labels(y_train: np.ndarray, y_test: np.ndarray, feature):
    """Integer labels are kept (class count from a ClassLabel feature or max + 1);
    any other labels map their sorted distinct values to 0..C-1."""
    import datasets

    if np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer):
        if min(y_train.min(), y_test.min()) < 0:
            raise ValueError("integer labels must be non-negative")
        if isinstance(feature, datasets.ClassLabel):
            return y_train, y_test, feature.num_classes
        return y_train, y_test, int(max(y_train.max(), y_test.max())) + 1
    values = np.unique(np.concatenate([y_train, y_test]))
    return np.searchsorted(values, y_train), np.searchsorted(values, y_test), len(values)
