"""FedAvg and FedProx: aggregation on hand-made updates and equality of FedProx(mu=0) and FedAvg."""

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

import fedsim
from fedsim.runtimes.inprocess import _set_task_identity
from fedsim.strategies.fedavg import FedAvg


def reply(node, arrays, n):
    instr = Message(RecordDict(), dst_node_id=node, message_type="train")
    instr.metadata.__dict__["_message_id"] = f"m{node}"
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0})})
    return Message(content, reply_to=instr)


def test_fedavg_aggregate_is_the_example_weighted_mean():
    _set_task_identity(123)
    rng = np.random.default_rng(0)
    ups = [{"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)} for _ in range(3)]
    sizes = [10, 30, 60]
    arrays, metrics = FedAvg(seed=0).aggregate_train(1, [reply(i + 10, [u["w"], u["b"]], n) for i, (u, n) in enumerate(zip(ups, sizes))])
    got = arrays.to_numpy_ndarrays()
    w = np.array(sizes) / sum(sizes)
    np.testing.assert_allclose(got[0], sum(wi * u["w"] for wi, u in zip(w, ups)), rtol=1e-6)
    np.testing.assert_allclose(got[1], sum(wi * u["b"] for wi, u in zip(w, ups)), rtol=1e-6)
    assert metrics["train_loss"] == 1.0


def test_fedprox_with_mu_zero_is_exactly_fedavg(tiny):
    a = fedsim.run(tiny)
    b = fedsim.run(tiny, strategy__name="fedprox", strategy__mu=0.0)
    cols = ["train_loss", "test_loss", "test_acc", "clients_sampled", "bytes_up"]
    pd.testing.assert_frame_equal(a.metrics[cols], b.metrics[cols])
    c = fedsim.run(tiny, strategy__name="fedprox", strategy__mu=1.0)
    assert not np.allclose(a.metrics["train_loss"], c.metrics["train_loss"])


def test_fast_weighted_mean_is_bit_identical_to_flowers():
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    _set_task_identity(123)
    rng = np.random.default_rng(1)
    replies = [reply(i + 10, [rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=3).astype(np.float32)], n)
               for i, n in enumerate([3, 17, 8, 40])]
    ours, _ = FedAvg(seed=0).aggregate_train(1, replies)
    theirs = aggregate_arrayrecords([r.content for r in replies], "num-examples")
    for key in theirs:
        assert ours[key].data == theirs[key].data
