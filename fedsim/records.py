"""Fast, exact conversions between torch state dicts and Flower ``ArrayRecord``s.

A Flower ``Array`` holds its data in NumPy's ``.npy`` format. ``Array.numpy()`` re-parses
the text header of every array with ``ast.literal_eval`` and ``Array.from_numpy_ndarray``
writes one with ``np.save``: for small models that costs more than local training. The
functions here produce and read byte-identical ``.npy`` payloads, parsing or writing each
distinct header once per process (cached by dtype and shape). Records also convert to and
from flat vectors, so that robust rules and Byzantine attacks work on rows of a matrix.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import weakref
from collections import OrderedDict
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.serverapp import Grid
from flwr.supercore.date import now as flwr_now

_MAGIC = b"\x93NUMPY"
R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord, RecordDict)


@functools.lru_cache(maxsize=4096)
def _header_for(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[bytes, str]:
    """``np.save``'s header for (dtype, shape), and the dtype's name as ``Array.dtype``."""
    buf = io.BytesIO()
    np.save(buf, np.empty(shape, dtype=dtype), allow_pickle=False)
    return buf.getvalue()[: buf.tell() - int(np.prod(shape, dtype=np.int64)) * dtype.itemsize], str(dtype)


@functools.lru_cache(maxsize=4096)
def _parse_header(header: bytes) -> tuple[np.dtype, bool, tuple[int, ...]]:
    meta = ast.literal_eval(header.decode("latin1"))
    return np.dtype(meta["descr"]), bool(meta["fortran_order"]), tuple(meta["shape"])


def _new_array(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    """``Array(dtype=..., shape=..., stype="numpy.ndarray", data=...)`` without its argument
    dispatch (~50 µs, more than the copy of a small layer): the same attributes, set
    directly (checked against Flower's constructor in tests/test_records.py)."""
    array = Array.__new__(Array)
    array.__dict__.update(_is_dirty=True, dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
    return array


def prebuilt(cls: type[R], items: dict) -> R:
    """A Flower record of type ``cls`` (``ArrayRecord``, ``MetricRecord``, ``ConfigRecord``
    or ``RecordDict``) holding exactly ``items``, for items fedsim has just built itself.

    Flower's constructors re-check every key and value (``TypedDict.__setitem__``, a few
    µs an item, paid for every reply of every round); these items are of the right type by
    construction. Same object as the constructor gives (tests/test_records.py compares
    ``vars``, equality and the deflated bytes)."""
    record = cls()
    record.__dict__["_data"].update(items)
    return record


def reply_message(content: RecordDict, reply_to: Message) -> Message:
    """``Message(content, reply_to=reply_to)`` without the constructor's argument dispatch
    and its re-validation of the message type (the instruction's, checked when it was
    made): the same metadata, a reply TTL that ends when the instruction's does (Flower's
    default), ~2 µs instead of ~7 for each client's reply (tests/test_records.py compares
    it with Flower's constructor)."""
    md = reply_to.metadata.__dict__
    current = flwr_now().timestamp()
    metadata = Metadata.__new__(Metadata)
    metadata.__dict__.update(
        _run_id=md["_run_id"], _message_id="", _src_node_id=md["_dst_node_id"], _dst_node_id=md["_src_node_id"],
        _src_task_id=md["_dst_task_id"], _dst_task_id=md["_src_task_id"], _reply_to_message_id=md["_message_id"],
        _group_id=md["_group_id"], _created_at=current, _ttl=md["_created_at"] + md["_ttl"] - current,
        _message_type=md["_message_type"], _delivered_at="",
    )
    message = Message.__new__(Message)
    message.__dict__.update(_metadata=metadata, _content=content, _error=None)
    return message


def put(content: RecordDict, key: str, record: ArrayRecord | MetricRecord | ConfigRecord) -> None:
    """``content[key] = record`` for a record fedsim has just built. Under a new key the
    record goes in without Flower's per-item checks (as :func:`prebuilt`); an existing key
    is replaced through ``RecordDict.__setitem__`` (which warns when the kind changes)."""
    if key in content:
        content[key] = record
    else:
        content.__dict__["_data"][key] = record


def record_of(arrays: dict[str, Array]) -> ArrayRecord:
    """An ArrayRecord holding these very ``Array`` objects (``ArrayRecord(dict)`` copies each)."""
    return prebuilt(ArrayRecord, arrays)


def records_in(content: RecordDict, kind: type[R]) -> list[R]:
    """The records of type ``kind`` in ``content``, in order. Flower's typed views
    (``content.array_records`` ...) re-insert every record into ``content`` while they
    build a synced dict; fedsim only reads, and reads them for every reply."""
    return [record for record in content.values() if isinstance(record, kind)]


def encode(array: np.ndarray) -> Array:
    """A Flower ``Array`` with exactly ``np.save``'s bytes for ``array``."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)  # (keeps 0-d arrays 0-d, unlike calling it always)
    header, name = _header_for(array.dtype, array.shape)
    return _new_array(name, tuple(array.shape), b"".join((header, array)))  # one copy of the data


def _view(array: Array) -> np.ndarray:
    """A read-only ndarray over an ``Array``'s bytes (no copy)."""
    data = array.data
    if array.stype != "numpy.ndarray" or data[:6] != _MAGIC:
        return array.numpy()
    if data[6] == 1:
        start = 10 + int.from_bytes(data[8:10], "little")
        header = data[10:start]
    else:
        start = 12 + int.from_bytes(data[8:12], "little")
        header = data[12:start]
    dtype, fortran, shape = _parse_header(header)
    if dtype.hasobject:
        return array.numpy()
    flat = np.frombuffer(data, dtype=dtype, offset=start, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran else "C")


def decode(array: Array) -> np.ndarray:
    """The ndarray of a Flower ``Array`` (a writable copy, as ``np.load`` gives)."""
    view = _view(array)
    return view.copy(order="K") if not view.flags.writeable else view


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(state_dict)`` (same keys, same bytes), without re-writing headers."""
    return record_of({k: encode(numpy_view(v)) for k, v in state.items()})


# id of a CPU parameter -> (a weak reference to it, its data pointer, an ndarray view of
# it): a client's model is encoded every round from the same parameter tensors
_views: dict[int, tuple[weakref.ref, int, np.ndarray]] = {}


def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """``tensor.detach().cpu().numpy()`` (for a CPU tensor, a view of its memory). For a
    CPU parameter (``requires_grad``) the view is made once and reused while the parameter
    keeps its storage (``param.data = ...`` gives it a new one); the entry goes with the
    parameter."""
    if not (tensor.is_cpu and tensor.requires_grad):
        return tensor.detach().cpu().numpy()
    ptr = tensor.data_ptr()
    hit = _views.get(id(tensor))
    if hit is None or hit[0]() is not tensor or hit[1] != ptr:
        if hit is None or hit[0]() is not tensor:
            weakref.finalize(tensor, _views.pop, id(tensor), None)
        hit = _views[id(tensor)] = (weakref.ref(tensor), ptr, tensor.detach().numpy())
    return hit[2]


def to_state_dict(record: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, without re-parsing headers."""
    return OrderedDict((k, torch.from_numpy(decode(v))) for k, v in record.items())


def weighted_mean(records: list[ArrayRecord], weights: list[float]) -> ArrayRecord:
    """Σ_i (w_i / Σ_j w_j) · record_i, key by key, in the given order (float64 weights)."""
    total = float(sum(weights))
    out: dict[str, np.ndarray] = {}
    for record, w in zip(records, weights, strict=True):
        for key, value in record.items():
            arr = _view(value) * (w / total)
            if key in out:
                out[key] += arr
            else:
                out[key] = arr
    return record_of({k: encode(np.asarray(v)) for k, v in out.items()})


def stack(records: list[ArrayRecord]) -> torch.Tensor:
    """n records as the rows of one (n × d) tensor: each record's arrays raveled in record order.

    Every array is decoded once, straight into its row (no per-record concatenation).
    """
    first = list(records[0].values())
    out = np.empty((len(records), sum(math.prod(a.shape) for a in first)), dtype=first[0].dtype)
    for row, record in zip(out, records):
        start = 0
        for arr in record.values():
            a = _view(arr)
            row[start : start + a.size] = a.ravel()
            start += a.size
    return torch.from_numpy(out)


def flatten(record: ArrayRecord) -> torch.Tensor:
    """The arrays of a record, raveled and concatenated in record order."""
    return stack([record])[0]


def unflatten(vector: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """Inverse of ``flatten``: keys, shapes and dtypes from ``like``."""
    out, start = ArrayRecord(), 0
    for key, arr in like.items():
        size = math.prod(arr.shape)
        out[key] = encode(vector[start : start + size].numpy().reshape(arr.shape).astype(arr.dtype))
        start += size
    return out


def only_arrays(content: RecordDict) -> tuple[str, ArrayRecord]:
    """(key, record) of a reply's one ArrayRecord (Flower's strategies require exactly one)."""
    return next((key, record) for key, record in content.items() if isinstance(record, ArrayRecord))


def metric(content: RecordDict, key: str) -> float:
    """``key`` of a reply's (first) MetricRecord."""
    return float(records_in(content, MetricRecord)[0][key])


def num_examples(content: RecordDict, key: str = "num-examples") -> float:
    """A reply's weight: ``key`` of its (one) MetricRecord."""
    return metric(content, key)


class ReplyView:
    """A reply's content as Flower's strategy helpers read it (``array_records``,
    ``metric_records``, ``config_records``, ``[key]``, ``get``), with the typed views made
    once, as plain dicts. ``RecordDict``'s own views are rebuilt on every access by
    re-inserting each record, and Flower's reply checks and metric averaging read them
    several times per reply: a good part of the in-process runtime's per-client cost."""

    __slots__ = ("content", "array_records", "metric_records", "config_records")

    def __init__(self, content: RecordDict):
        self.content = content
        self.array_records = {k: v for k, v in content.items() if isinstance(v, ArrayRecord)}
        self.metric_records = {k: v for k, v in content.items() if isinstance(v, MetricRecord)}
        self.config_records = {k: v for k, v in content.items() if isinstance(v, ConfigRecord)}

    def __getitem__(self, key: str):
        return self.content[key]

    def get(self, key: str, default=None):
        return self.content.get(key, default)


def checked_replies(strategy, replies, is_train: bool = True) -> tuple[list[Message], list[ReplyView]]:
    """A Flower Message-API strategy's ``_check_and_log_replies`` (errors split off and
    logged, then ``validate_message_reply_consistency``), run on :class:`ReplyView`s:
    the same checks, the same exceptions. Returns (valid replies, their views)."""
    from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

    valid, _ = strategy._check_and_log_replies(list(replies), is_train=is_train, validate=False)
    views = [ReplyView(msg.content) for msg in valid]
    if views:
        validate_message_reply_consistency(views, strategy.weighted_by_key, check_arrayrecord=is_train)
    return valid, views


def train_metrics(strategy, views: list[ReplyView]):
    """``strategy.train_metrics_aggr_fn`` over the replies: Flower's default
    (``aggregate_metricrecords``) reads the views, a user's function gets the RecordDicts."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    fn = strategy.train_metrics_aggr_fn
    return fn(views if fn is aggregate_metricrecords else [v.content for v in views], strategy.weighted_by_key)


def index_array(indices: np.ndarray) -> Array:
    """A partition's example indices as an int64 ``Array`` (the setup message's payload)."""
    return Array(np.ascontiguousarray(indices, dtype=np.int64))


# ------------------------------------------------------------------ client identity

PARTITION_ID = "partition-id"  # Flower's node_config key: the data partition a node holds


def reported_partition(message: Message) -> int | None:
    """The partition id a client put in its reply: ``"partition-id"`` in any config or
    metric record (fedsim's ClientApp adds ``ConfigRecord({"partition-id": ...})`` under
    ``"node"``, read from Flower's ``context.node_config``); None if it reported none."""
    if message.has_error():
        return None
    for record in (*records_in(message.content, ConfigRecord), *records_in(message.content, MetricRecord)):
        if PARTITION_ID in record:
            return int(record[PARTITION_ID])
    return None


class ClientIndex:
    """Partition ids of replies on any Flower Grid, for strategies that keep state per client.

    A reply's id is the ``"partition-id"`` it reports (:func:`reported_partition`); a client
    that reports none is given a stable index by node id, in the order the grid first
    listed the nodes (``see``). Nothing beyond Flower's own ``Grid`` API is needed.
    """

    def __init__(self) -> None:
        self._by_node: dict[int, int] = {}

    def see(self, grid: Grid) -> None:
        for node_id in grid.get_node_ids():
            self._by_node.setdefault(int(node_id), len(self._by_node))

    def __call__(self, reply: Message) -> int:
        pid = reported_partition(reply)
        if pid is None:
            pid = self._by_node.setdefault(int(reply.metadata.src_node_id), len(self._by_node))
        return pid
