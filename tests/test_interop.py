"""fedsim's parts under stock Flower apps: Flower's FedAvg driving fedsim's ClientApp, and
fedsim's strategies (FedAU, Fed-NGA, SGM) inside a plain Flower ServerApp, with no fedsim
Grid (the partition id comes from Flower's node_config, reported in each reply).

Each run is compared with the same scenario run by fedsim itself: same clients, same
seeds, so the final models agree up to the order of floating-point sums."""

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim import registry
from fedsim.apps import client as fedsim_client
from fedsim.apps.setup import connect_nodes, prepare
from fedsim.models import build_model
from fedsim.records import ClientIndex
from fedsim.runtimes.inprocess import InProcessGrid
from fedsim.scenario import load
from fedsim.training import local_sgd, torch_generator


@pytest.fixture
def base(tiny):
    tiny = dict(tiny, rounds=2)
    tiny["partition"] = {"name": "iid"}
    return tiny


def drive(client_app: ClientApp, num_nodes: int, seed: int, main, run_config=None) -> InProcessGrid:
    """Run a plain Flower ServerApp whose ``main(grid, context)`` is given, on fedsim's
    in-process grid (a Flower ``Grid``: push/pull/send_and_receive, nothing else)."""
    grid = InProcessGrid(client_app, num_nodes, seed)
    for node_id in grid.get_node_ids():
        grid.context(node_id).run_config = dict(run_config or {})
    app = ServerApp()
    app.main()(main)
    app(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    return grid


def assert_same_model(arrays: ArrayRecord, model: torch.nn.Module):
    ours = arrays.to_torch_state_dict()
    theirs = model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def flower_fedavg(rounds):
    return FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)


# ------------------------------------------------- Flower's FedAvg, fedsim's ClientApp


def test_fedsim_clientapp_not_set_up_replies_an_error_saying_what_is_missing(base):
    sc = load(base)
    setup = prepare(sc)
    replies = []

    def main(grid, context):
        msgs = [Message(RecordDict({"arrays": ArrayRecord(setup.model.state_dict())}), nid, MessageType.TRAIN)
                for nid in grid.get_node_ids()]
        replies.extend(grid.send_and_receive(msgs))

    drive(fedsim_client.app, sc.num_clients, sc.seed, main)
    assert len(replies) == 4 and all(r.has_error() for r in replies)
    reason = replies[0].error.reason
    assert "was not set up" in reason
    assert "fedsim.apps.setup.connect_nodes(grid, scenario)" in reason and "fedsim-scenario=FILE" in reason


def test_flower_fedavg_with_fedsim_clientapp_set_up_by_connect_nodes(base):
    """The bring-your-own-ServerApp helper: equal to fedsim's own FedAvg run."""
    base["strategy"] = {"name": "fedavg", "fraction_train": 1.0}
    expected = fedsim.run(base).model
    out = {}

    def main(grid, context):
        setup = connect_nodes(grid, base)
        result = flower_fedavg(2).start(grid, ArrayRecord(setup.model.state_dict()), num_rounds=2)
        out["arrays"] = result.arrays

    drive(fedsim_client.app, 4, base["seed"], main)
    assert_same_model(out["arrays"], expected)


def test_flower_fedavg_with_fedsim_clientapp_set_up_from_the_run_config(base, tmp_path):
    """No set-up messages at all: the nodes read the scenario named in the run config."""
    base["strategy"] = {"name": "fedavg", "fraction_train": 1.0}
    expected = fedsim.run(base).model
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base))
    initial = prepare(load(base)).model.state_dict()
    out = {}

    def main(grid, context):
        out["arrays"] = flower_fedavg(2).start(grid, ArrayRecord(initial), num_rounds=2).arrays

    drive(fedsim_client.app, 4, base["seed"], main, {"fedsim-scenario": str(path)})
    assert_same_model(out["arrays"], expected)


# --------------------------------------------- fedsim's strategies, plain ClientApps


def plain_client_app(sc, upload: str) -> ClientApp:
    """A Flower ClientApp written without fedsim's app: its own model, its partition by
    node_config, local SGD; reports its partition id in its metrics. ``upload``: "model"
    (the trained model) or "update" (start − trained, Fed-NGA's local_sgd upload)."""
    setup = prepare(sc)
    x, y = torch.from_numpy(setup.dataset.x_train), torch.from_numpy(setup.dataset.y_train)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        idx = torch.from_numpy(setup.partitions[pid])
        model = build_model(sc.model.name, sc.model.raw_params(), setup.dataset.input_shape, setup.dataset.num_classes)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rnd = int(msg.content["config"]["server-round"])
        loss, _ = local_sgd(model, x[idx], y[idx], **sc.client.model_dump(), gen=torch_generator(sc.seed, rnd, pid, "shuffle"))
        state = model.state_dict()
        arrays = state if upload == "model" else {k: start[k] - state[k] for k in state}
        metrics = MetricRecord({"train_loss": loss, "num-examples": len(idx), "partition-id": pid})
        return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)

    return app


@pytest.mark.parametrize(
    "strategy, upload",
    [
        ({"name": "fedau", "fraction_evaluate": 0.0}, "model"),
        ({"name": "fednga", "client_update": "local_sgd", "fraction_evaluate": 0.0}, "update"),
    ],
)
def test_fedsim_strategy_in_a_plain_serverapp_with_a_plain_clientapp(base, strategy, upload):
    base["strategy"] = strategy
    sc = load(base)
    expected = fedsim.run(base).model
    setup = prepare(sc)
    strat = registry.get("strategy", sc.strategy.name).factory(sc.strategy.params, setup)
    out = {}

    def main(grid, context):
        out["arrays"] = strat.start(grid, ArrayRecord(setup.model.state_dict()), num_rounds=sc.rounds).arrays

    drive(plain_client_app(sc, upload), sc.num_clients, sc.seed, main)
    assert_same_model(out["arrays"], expected)


def test_sgm_in_a_plain_serverapp(base):
    """SGM's server side in a plain Flower ServerApp; fedsim's ClientApp (SGM's sketching
    client) set up with connect_nodes. The de-sketch query goes to the lowest partition id
    among the round's repliers, read from the replies, not from a fedsim grid."""
    base["strategy"] = {"name": "sgm", "fraction_train": 0.5, "clip": 1.0, "sketch_dim": 512,
                        "sigma_g": 0.5, "server_opt": "adam", "server_lr": 0.1, "fraction_evaluate": 0.0}
    sc = load(base)
    expected = fedsim.run(base).model
    out = {}

    def main(grid, context):
        setup = connect_nodes(grid, sc)
        strat = registry.get("strategy", "sgm").factory(sc.strategy.params, setup)
        out["arrays"] = strat.start(grid, ArrayRecord(setup.model.state_dict()), num_rounds=sc.rounds).arrays

    drive(fedsim_client.app, sc.num_clients, sc.seed, main)
    assert_same_model(out["arrays"], expected)


def test_client_index_falls_back_to_node_order_without_a_reported_partition():
    grid = InProcessGrid(ClientApp(), 3, seed=5)
    index = ClientIndex()
    index.see(grid)
    nodes = grid.get_node_ids()
    reply = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), nodes[2], MessageType.TRAIN)
    reply.metadata.__dict__["_src_node_id"] = nodes[2]
    assert index(reply) == 2
    reported = Message(RecordDict({"metrics": MetricRecord({"partition-id": 7})}), nodes[0], MessageType.TRAIN)
    assert index(reported) == 7
    assert np.array_equal(sorted(index._by_node.values()), [0, 1, 2])
