"""fedsim.records: byte-identical to Flower's own (np.save / np.load) conversions."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedsim.records import decode, encode, to_record, to_state_dict


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "uint8", "float16", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 5), (4, 1, 3, 3)])
def test_encode_matches_np_save_and_decode_matches_np_load(dtype, shape):
    arr = np.asarray(np.random.default_rng(0).normal(size=shape) * 10).astype(dtype)
    flower = Array(arr)  # Flower's own np.save path
    ours = encode(arr)
    assert ours.data == flower.data and ours.dtype == flower.dtype and tuple(ours.shape) == tuple(flower.shape)
    out = decode(flower)
    assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr)
    assert out.flags.writeable


def test_fortran_ordered_and_big_endian_arrays_decode_like_np_load():
    for arr in (np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)), np.arange(5, dtype=">i4")):
        flower = Array(arr)
        assert np.array_equal(decode(flower), flower.numpy())


def test_state_dict_round_trip_equals_flowers_arrayrecord():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ours, theirs = to_record(model.state_dict()), ArrayRecord(model.state_dict())
    assert list(ours.keys()) == list(theirs.keys())
    assert all(ours[k].data == theirs[k].data for k in ours)
    back = to_state_dict(ours)
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v) and back[k].dtype == v.dtype


def test_fast_arrays_are_flowers_own():
    """records builds Arrays without Flower's argument dispatch: same attributes, same
    object id and bytes as Flower's constructor; a record keeps the very Arrays it is given."""
    import numpy as np
    from flwr.app import Array

    from fedsim.records import encode, record_of

    for value in (np.arange(12, dtype=np.float32).reshape(3, 4), np.array(7, dtype=np.int64), np.zeros(0, np.float64)):
        ours, flowers = encode(value), Array(value)
        assert vars(ours) == vars(flowers)
        assert ours.object_id == flowers.object_id and np.array_equal(ours.numpy(), value)
    arrays = {"w": encode(np.ones(3, np.float32))}
    assert record_of(arrays)["w"] is arrays["w"]


def test_prebuilt_records_are_what_flowers_constructors_build():
    """records.prebuilt skips Flower's per-item checks: the same record as the constructor
    (attributes, equality, deflated bytes, so the same object id on any transport)."""
    import numpy as np
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from fedsim.records import encode, prebuilt, records_in

    arrays = {"w": encode(np.arange(6, dtype=np.float32).reshape(2, 3)), "b": encode(np.ones(3, np.float32))}
    metrics = {"train_loss": 0.25, "num-examples": 72}
    built = [
        (prebuilt(ArrayRecord, arrays), ArrayRecord(arrays)),
        (prebuilt(MetricRecord, metrics), MetricRecord(metrics)),
        (prebuilt(ConfigRecord, {"partition-id": 3}), ConfigRecord({"partition-id": 3})),
    ]
    for ours, flowers in built:
        assert type(ours) is type(flowers) and ours == flowers and list(ours) == list(flowers)
        assert ours.deflate() == flowers.deflate()
    content = {"arrays": built[0][0], "metrics": built[1][0], "node": built[2][0]}
    ours, flowers = prebuilt(RecordDict, content), RecordDict(content)
    assert ours == flowers and ours.deflate() == flowers.deflate() and ours.object_id == flowers.object_id
    # records_in reads what Flower's typed views hold, in the same order
    for kind, view in ((ArrayRecord, flowers.array_records), (MetricRecord, flowers.metric_records),
                       (ConfigRecord, flowers.config_records)):
        assert records_in(ours, kind) == list(view.values())
    assert records_in(RecordDict({"metrics": built[1][0]}), ArrayRecord) == []


def test_reply_message_is_what_flowers_constructor_builds():
    """records.reply_message skips the constructor's dispatch: the same metadata as
    ``Message(content, reply_to=...)`` (times aside) and a TTL ending with the instruction's."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedsim.records import reply_message
    from fedsim.runtimes.inprocess import InProcessGrid

    InProcessGrid(None, 3, seed=1)  # sets Flower's task identity, as every run does
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 2})}), 17, "train.custom", ttl=600.0)
    instruction.metadata.__dict__.update(_message_id="m-1", _src_task_id=4, _dst_task_id=9, _group_id="g")
    content = RecordDict({"node": ConfigRecord({"partition-id": 3})})
    ours, flowers = reply_message(content, instruction), Message(content, reply_to=instruction)
    mine, theirs = vars(ours.metadata), vars(flowers.metadata)
    assert mine.keys() == theirs.keys()
    timed = ("_created_at", "_ttl")
    assert {k: v for k, v in mine.items() if k not in timed} == {k: v for k, v in theirs.items() if k not in timed}
    assert mine["_reply_to_message_id"] == "m-1" and mine["_dst_node_id"] == instruction.metadata.src_node_id
    assert mine["_src_task_id"] == 9 and mine["_dst_task_id"] == 4
    expiry = instruction.metadata.created_at + 600.0
    assert ours.metadata.created_at + ours.metadata.ttl == pytest.approx(expiry)
    assert abs(ours.metadata.created_at - flowers.metadata.created_at) < 5.0
    assert ours.content is content and not ours.has_error()


def test_put_skips_checks_only_for_new_keys():
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from fedsim.records import put

    content = RecordDict({"metrics": MetricRecord({"a": 1.0})})
    put(content, "node", ConfigRecord({"partition-id": 2}))
    assert content == RecordDict({"metrics": MetricRecord({"a": 1.0}), "node": ConfigRecord({"partition-id": 2})})
    put(content, "node", ConfigRecord({"partition-id": 5}))  # replaced through RecordDict.__setitem__
    assert content["node"]["partition-id"] == 5 and list(content) == ["metrics", "node"]
    with pytest.raises(TypeError):
        put(content, "metrics", "not a record")


def test_to_record_follows_parameters_updated_in_place_and_replaced():
    """The encoded bytes of a parameter are its current values: after in-place steps (the
    cached view) and after ``param.data = ...`` (a new storage)."""
    from fedsim.records import _views

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    state = model.state_dict(keep_vars=True)
    first = to_record(state)
    with torch.no_grad():
        model[0].weight.mul_(-2.0)
    model[1].running_mean += 1.0
    second = to_record(state)
    assert all(second[k].data == ArrayRecord(model.state_dict())[k].data for k in second)
    assert second["0.weight"].data != first["0.weight"].data
    model[0].weight.data = torch.arange(12.0).reshape(3, 4)
    third = to_record(model.state_dict(keep_vars=True))
    assert np.array_equal(decode(third["0.weight"]), np.arange(12.0, dtype=np.float32).reshape(3, 4))
    ids = {id(p) for p in model.parameters()}
    assert ids <= set(_views)
    del model, state
    import gc

    gc.collect()
    assert not ids & set(_views)  # entries go with their parameters
