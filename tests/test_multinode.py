"""Multi-node runtimes for real: a SuperLink with 3 SuperNodes, and a Ray cluster (127.0.0.1).

Deployment (TLS, SuperNode authentication): one submitted run serves two tests (a deployment round costs seconds: Flower polls every
3 s and starts a ClientApp process per message). The run is the main job reduced to 3
clients, every client training each round, one local epoch, 4 rounds:

- rounds 1-2 run normally and must equal the ``inprocess`` runtime's rows;
- after round 2, SuperNode 2 is killed by process id: round 3 waits until the SuperLink
  reports the node unavailable (its heartbeat lapses) or ``round_timeout`` runs out,
  goes on with the other two, and records client 2 in ``failed_clients``;
- after round 3, the SuperLink is killed by process id: ``fedsim.run`` stops with a clear
  ``DeploymentError`` and rounds 1-3 stay in the run directory (with the CSV).

Checkpoints are not covered: checkpointing is a separate issue.
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.runtimes.certs import generate
from fedsim.runtimes.cluster import LocalCluster, tagged_processes
from fedsim.runtimes.deployment import DeploymentError, control_client, online_nodes, register_nodes
from fedsim.recorder import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "noniid.yaml"
REDUCED = {"num_clients": 3, "strategy.fraction_train": 1.0, "client.epochs": 1, "output.progress": False}
ROUND_TIMEOUT = 90.0  # above a normal round here (15-60 s on 2 busy cores)
COLUMNS = ["train_loss", "test_loss", "test_acc"]
EXACT = ["round", "clients_sampled", "clients_replied", "bytes_down", "bytes_up"]


def _wait_rows(runs: Path, n: int, stop: threading.Event) -> None:
    """Until the run has recorded ``n`` rounds; gives up once the run has returned."""
    while not stop.is_set():
        if any(len(p.read_text().splitlines()) >= n for p in runs.glob("noniid/*/metrics.jsonl")):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the run ended before round {n} was recorded")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Run the reduced scenario on the cluster, killing a SuperNode and then the SuperLink."""
    root = tmp_path_factory.mktemp("multinode")
    certs = generate(root / "certs", nodes=3)
    cluster = LocalCluster(root / "cluster", 3, certs, node_auth=True)
    cluster.start()
    client = control_client(cluster.superlink, certs.ca_cert)
    try:  # registering again (compose's `register` on a restart) is harmless
        keys = [certs.node_public_key(i) for i in range(3)]
        assert register_nodes(client, keys) == [f"{k}: already registered" for k in keys]
        assert online_nodes(client) == 3
    finally:
        client.close()
    events: dict = {}
    returned = threading.Event()

    def saboteur():
        try:
            _wait_rows(root / "runs", 2, returned)
            cluster.kill("supernode-2")  # os.kill(pid, SIGKILL): a crash between rounds 2 and 3
            _wait_rows(root / "runs", 3, returned)
            cluster.kill("superlink")
        except Exception as exc:  # reported by the tests
            events["saboteur"] = exc

    thread = threading.Thread(target=saboteur, daemon=True)
    try:
        thread.start()
        with pytest.raises(DeploymentError) as info:
            fedsim.run(SCENARIO, {**REDUCED, "rounds": 4, "output.dir": str(root / "runs")},
                       runtime=cluster.runtime(round_timeout=ROUND_TIMEOUT))
    finally:
        returned.set()
        thread.join()
        cluster.stop()
    assert tagged_processes(cluster.token) == []  # every process the cluster started is gone
    assert "saboteur" not in events, events.get("saboteur")
    (run_dir,) = [p.parent for p in (root / "runs").glob("noniid/*/metrics.jsonl")]
    return {"error": str(info.value), "run_dir": run_dir, "metrics": read_metrics(run_dir), "root": root}


def test_two_rounds_over_tls_match_the_inprocess_runtime(deployed):
    local = fedsim.run(SCENARIO, {**REDUCED, "rounds": 2, "output.dir": str(deployed["root"] / "local")})
    remote = deployed["metrics"].iloc[:2].reset_index(drop=True)
    assert remote["failed_clients"].tolist() == [[], []]
    assert remote[EXACT].equals(local.metrics[EXACT])
    np.testing.assert_allclose(remote[COLUMNS].to_numpy(float), local.metrics[COLUMNS].to_numpy(float), rtol=1e-6)
    assert local.metrics["clients_replied"].tolist() == [3, 3]


def test_a_killed_supernode_fails_its_round_and_a_lost_superlink_stops_the_run(deployed):
    rows = deployed["metrics"]
    assert rows["round"].tolist() == [1, 2, 3]  # round 4 never ran; nothing recorded was lost
    assert rows["failed_clients"].tolist() == [[], [], [2]]
    assert rows["clients_replied"].tolist() == [3, 3, 2]
    assert rows["test_acc"].notna().all()
    assert "lost the SuperLink at 127.0.0.1:" in deployed["error"]
    assert f"rounds 1-3 are kept in {deployed['run_dir']}" in deployed["error"]
    assert read_metrics(deployed["run_dir"]).equals(rows)
    assert (deployed["run_dir"] / "metrics.csv").exists()


@pytest.mark.parametrize(("engine", "actor_class"), [("actors", "ClientWorker"), ("flower", "ClientAppActor")])
def test_the_ray_runtime_attaches_to_a_running_cluster_and_respects_client_resources(tiny, monkeypatch, engine,
                                                                                      actor_class):
    """A Ray cluster of two 1-CPU nodes on 127.0.0.1; clients need 1 CPU: one actor per node,
    for fedsim's worker actors and for Flower's Simulation Engine alike."""
    import os
    import signal

    import pandas as pd
    import ray
    import ray._private.ray_constants as ray_constants
    from ray._private import state
    from ray.cluster_utils import Cluster

    # Ray turns a loopback bootstrap address into this host's external IP (ray/_private/
    # services.py, resolve_ip_for_localhost) unless multi-node clusters are off; off, the
    # driver, the head and the worker node all stay on 127.0.0.1.
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    loopback = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args=loopback | {"include_dashboard": False})
    actors = []
    try:
        cluster.add_node(**loopback)
        local = fedsim.run(tiny)
        remote = fedsim.run(tiny, runtime={"name": "ray", "address": cluster.address, "engine": engine,
                                           "client_resources": {"num_cpus": 1}})
        ray.init(address=cluster.address)
        try:
            actors = [a for a in state.actors().values() if a["ActorClassName"] == actor_class]
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()  # stops the nodes it started, by their processes
        deadline = time.monotonic() + 15
        while (left := [a["Pid"] for a in actors if os.path.exists(f"/proc/{a['Pid']}")]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:  # actor workers outliving their raylet
            os.kill(pid, signal.SIGKILL)
    columns = ["round", "train_loss", "test_loss", "test_acc", "clients_sampled", "clients_replied", "bytes_up"]
    pd.testing.assert_frame_equal(local.metrics[columns], remote.metrics[columns])
    # both size the pool as floor(CPUs / client num_cpus) over the cluster: 1 + 1
    assert len(actors) == 2
    assert len({a["Address"]["NodeID"] for a in actors}) == 2  # one on each node
    assert {a["Address"]["IPAddress"] for a in actors} == {"127.0.0.1"}
    assert len({a["Pid"] for a in actors}) == 2  # two worker processes
