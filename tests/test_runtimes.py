"""Runtimes: the in-process grid and Flower's Ray Simulation Engine give identical runs."""

import pandas as pd
import pytest
from flwr.app import Message, RecordDict
from flwr.clientapp import ClientApp

import fedsim
from fedsim.runtimes.inprocess import InProcessGrid

METRICS = ["round", "train_loss", "test_loss", "test_acc", "clients_sampled", "clients_replied", "bytes_down", "bytes_up"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["actors", "flower"])
def test_inprocess_and_ray_give_identical_per_round_metrics(tiny, engine):
    tiny["evaluation"] = {"federated": True}
    a = fedsim.run(tiny)
    b = fedsim.run(tiny, runtime={"name": "ray", "engine": engine, "client_resources": {"num_cpus": 1}})
    pd.testing.assert_frame_equal(a.metrics[METRICS + ["fed_acc"]], b.metrics[METRICS + ["fed_acc"]])
    assert a.metrics["clients_sampled"].tolist() == [3, 3, 3]


@pytest.mark.slow
def test_client_state_persists_in_the_ray_worker_that_owns_the_client(tiny):
    """SCAFFOLD keeps c_i in each client's Context.state: on 3 workers, each client always
    served by the same one, the run equals inprocess, state norms included."""
    tiny["strategy"] = {"name": "scaffold", "fraction_train": 0.75}
    tiny["rounds"] = 4
    cols = METRICS + ["client_state_norm", "client_state_bytes"]
    a = fedsim.run(tiny)
    b = fedsim.run(tiny, runtime={"name": "ray", "workers": 3, "client_resources": {"num_cpus": 0.5}})
    pd.testing.assert_frame_equal(a.metrics[cols], b.metrics[cols])
    assert a.metrics["client_state_norm"].iloc[-1] > 0


def test_sampling_is_a_function_of_seed_and_round_not_node_ids(tiny):
    """Two grids with different node ids sample the same partitions every round."""
    a = fedsim.run(tiny)
    b = fedsim.run(tiny)
    pd.testing.assert_frame_equal(a.metrics[METRICS], b.metrics[METRICS])
    c = fedsim.run(tiny, seed=4)
    assert not a.metrics["train_loss"].equals(c.metrics["train_loss"])


def test_inprocess_grid_turns_client_exceptions_into_error_replies():
    app = ClientApp()

    @app.train()
    def boom(msg, context):
        if context.node_config["partition-id"] == 1:
            raise ValueError("disk on fire")
        return Message(RecordDict(), reply_to=msg)

    grid = InProcessGrid(app, 3, seed=0)
    nodes = grid.get_node_ids()
    assert nodes == InProcessGrid(app, 3, seed=0).get_node_ids()  # deterministic node ids
    replies = grid.send_and_receive([Message(RecordDict(), n, "train") for n in nodes])
    assert [r.has_error() for r in replies] == [False, True, False]
    assert "disk on fire" in replies[1].error.reason


def test_context_state_persists_across_rounds_on_the_inprocess_grid():
    app = ClientApp()

    @app.train()
    def count(msg, context):
        from flwr.app import MetricRecord

        c = int(context.state["c"]["n"]) + 1 if "c" in context.state else 1
        context.state["c"] = MetricRecord({"n": c})
        return Message(RecordDict({"m": MetricRecord({"n": c})}), reply_to=msg)

    grid = InProcessGrid(app, 2)
    for expected in (1, 2, 3):
        replies = grid.send_and_receive([Message(RecordDict(), n, "train") for n in grid.get_node_ids()])
        assert [int(r.content["m"]["n"]) for r in replies] == [expected, expected]


def test_flower_internals_used_by_the_adapter_match_the_pinned_minor():
    """fedsim/runtimes/inprocess.py uses Run and TaskIdentity (internal): pinned to flwr 1.42."""
    import flwr
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    assert flwr.__version__.startswith("1.42."), flwr.__version__
    assert SUPERLINK_NODE_ID == 1
    assert Run.create_empty(7).run_id == 7
    TaskIdentity.run_id = 7
    assert TaskIdentity.run_id == 7


def test_dropout_masks_are_seeded_per_round_and_client(tiny):
    """Two runs in one process (global torch RNG advanced in between) agree exactly."""
    import torch

    tiny["model"] = {"name": "mlp", "hidden": [32], "dropout": 0.5}
    a = fedsim.run(tiny)
    torch.rand(100)  # move the global RNG: results must not depend on it
    b = fedsim.run(tiny)
    pd.testing.assert_frame_equal(a.metrics[METRICS], b.metrics[METRICS])


class CountingGrid(InProcessGrid):
    """An in-process grid that counts the messages it delivers, by type."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delivered: list[str] = []

    def push_messages(self, messages):
        messages = list(messages)
        self.delivered += [m.metadata.message_type for m in messages]
        return super().push_messages(messages)


@pytest.mark.parametrize("num_clients", [10, 1000])
def test_start_up_sends_no_message_and_a_round_sets_up_only_its_cohort(num_clients):
    """Node set-up is O(cohort): connecting sends nothing, whatever N; each node is set up
    once, just before its first message; idle nodes have no Context at all."""
    import json

    from fedsim.apps import client
    from fedsim.apps.setup import prepare
    from fedsim.scenario import load
    from fedsim.world.base import Fleet

    sc = load({"name": "scale", "rounds": 1, "num_clients": num_clients, "partition": {"name": "iid"}})
    grid = CountingGrid(client.app, num_clients, sc.seed)
    fleet = Fleet(grid, num_clients)
    fleet.connect(json.dumps(sc.to_dict()), prepare(sc).partitions)
    assert grid.delivered == [] and grid.contexts == {}
    cohort = [fleet.get_node_ids()[pid] for pid in (0, 3, 7)]
    query = [Message(RecordDict(), nid, "query.checkpoint") for nid in cohort]
    assert [fleet.partition_of(r) for r in fleet.send_and_receive(query)] == [0, 3, 7]
    assert grid.delivered == ["query.setup"] * 3 + ["query.checkpoint"] * 3
    fleet.send_and_receive([Message(RecordDict(), nid, "query.checkpoint") for nid in cohort[:2]])
    assert grid.delivered[6:] == ["query.checkpoint"] * 2  # no second set-up
    assert sorted(grid.contexts) == sorted(cohort)


def test_a_run_leaves_torch_global_rng_where_it_was(tiny):
    """Clients seed torch's global RNG (dropout masks); the in-process grid restores the
    host's stream after each batch of clients, so a run does not move it."""
    import torch

    tiny["model"] = {"name": "mlp", "hidden": [32], "dropout": 0.5}
    torch.manual_seed(11)
    fedsim.run(tiny)
    after_run = torch.rand(8)
    torch.manual_seed(11)
    assert torch.equal(after_run, torch.rand(8))


def test_a_node_keeps_its_client_env_while_its_state_is_the_same(tiny, tmp_path):
    """The ClientEnv of a node is made once per (scenario, partition) and reused; a Context
    whose state is a new object (a SuperNode's ClientApp process gets one per message)
    gets a fresh env in the same slot, so the cache does not grow."""
    import json

    import torch
    from flwr.app import Context, RecordDict

    from fedsim.apps import client

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny))

    def context() -> Context:
        return Context(run_id=1, node_id=5, node_config={"partition-id": 2}, state=RecordDict(),
                       run_config={client.SCENARIO_CONFIG: str(path)})

    first = context()
    env = client._env(first)
    assert client._env(first) is env and env.partition_id == 2
    size = len(client._envs)
    second = context()
    other = client._env(second)
    assert other is not env and other.state is second.state and torch.equal(other.x, env.x)
    assert len(client._envs) == size
