"""Deployment runtime without a cluster: settings, round timeouts, certificates, compose, Docker.

The runs on a real SuperLink and SuperNodes are in tests/test_multinode.py (slow).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_private_key
from flwr.app import Context, Message, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from typer.testing import CliRunner

import fedsim
from fedsim.apps import client
from fedsim.runtimes.certs import generate, server_hosts
from fedsim.cli import app
from fedsim.runtimes.cluster import (
    COMPOSE_CERTS,
    HEALTH_ADDRESS,
    LocalCluster,
    compose_file,
    compose_yaml,
    superlink_command,
    supernode_command,
)
from fedsim.apps.server import execute
from fedsim.recorder import read_metrics
from fedsim.runtimes.inprocess import InProcessGrid
from fedsim.scenario import ScenarioError, load

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def deployment(**kw):
    return {"name": "deployment", **kw}


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "runtime, message",
    [
        (deployment(superlink="10.1.2.3:8000", insecure=True), "allowed only for a loopback SuperLink"),
        (deployment(superlink="superlink:8000", insecure=True), "allowed only for a loopback SuperLink"),
        (deployment(superlink="8000"), "expected HOST:PORT"),
        (deployment(superlink="127.0.0.1:99999"), "expected HOST:PORT"),
        (deployment(insecure=True, root_certificates="/ca.crt"), "contradicts root_certificates"),
        (deployment(round_timeout=0), "greater than 0"),
    ],
)
def test_deployment_settings_are_checked(tiny, runtime, message):
    with pytest.raises(ScenarioError, match=message) as info:
        load(tiny | {"runtime": runtime})
    assert "runtime." in str(info.value)


@pytest.mark.parametrize("address", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.2:1"])
def test_insecure_is_allowed_on_loopback_and_remote_only_when_asked(tiny, address):
    assert load(tiny | {"runtime": deployment(superlink=address, insecure=True)}).runtime.insecure
    remote = deployment(superlink="10.1.2.3:8000", insecure=True, allow_insecure_remote=True)
    assert load(tiny | {"runtime": remote}).runtime.superlink == "10.1.2.3:8000"
    assert not load(tiny | {"runtime": deployment(superlink="10.1.2.3:8000")}).runtime.insecure  # TLS by default


def test_an_unreachable_superlink_is_a_clear_error_with_exit_status_1(tmp_path):
    from fedsim.runtimes.cluster import free_port

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "rounds": 1, "num_clients": 2, "output": {"dir": str(tmp_path / "runs")}}))
    port = free_port()  # nothing listens there
    result = runner.invoke(
        app, ["run", str(path), "runtime.name=deployment", f"runtime.superlink=127.0.0.1:{port}", "runtime.insecure=true"]
    )
    assert result.exit_code == 1, result.output
    assert f"cannot submit the run to the SuperLink at 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "runs" / "t").iterdir())  # no run directory left behind


# --------------------------------------------------------------------------- failures


class FlakyGrid(InProcessGrid):
    """Partition ``down`` stops answering train messages from round ``from_round`` on: it
    stays silent (a killed SuperNode) or the SuperLink answers for it (node unavailable)."""

    def __init__(self, num_nodes, seed, down, from_round, superlink_answers):
        super().__init__(client.app, num_nodes, seed)
        self.down, self.from_round, self.superlink_answers = down, from_round, superlink_answers

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        for msg, mid in zip(messages, ids):
            pid = self.context(msg.metadata.dst_node_id).node_config["partition-id"]
            rnd = int(msg.content["config"]["server-round"]) if "config" in msg.content else 0
            if pid == self.down and msg.metadata.message_type == "train" and rnd >= self.from_round:
                del self._replies[mid]
                if self.superlink_answers:
                    self._replies[mid] = create_message_error_unavailable_res_message(msg.metadata, "node_unavail")
        return ids


@pytest.mark.parametrize("superlink_answers", [False, True])
def test_a_node_that_stops_answering_is_recorded_and_the_run_goes_on(tiny, superlink_answers):
    tiny |= {"strategy": {"name": "fedavg", "fraction_train": 1.0}}
    rt = deployment(superlink="127.0.0.1:9", insecure=True, round_timeout=0.5, poll_interval=0.01)
    sc = load(tiny | {"runtime": rt})
    grid = FlakyGrid(4, sc.seed, down=2, from_round=2, superlink_answers=superlink_answers)
    ctx = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the inprocess runtime trains (the sums' order depends on it)
    try:
        res = execute(sc, lambda server_app: server_app(grid, ctx))
    finally:
        torch.set_num_threads(threads)
    assert res.metrics["failed_clients"].tolist() == [[], [2], [2]]
    assert res.metrics["clients_replied"].tolist() == [4, 3, 3]
    assert read_metrics(res.run_dir)["round"].tolist() == [1, 2, 3]  # every round recorded
    healthy = fedsim.run(tiny, rounds=1)  # round 1 is the same as without the failure
    assert res.metrics["train_loss"][0] == healthy.metrics["train_loss"][0]
    assert res.metrics["bytes_up"][1] == 3 * res.metrics["bytes_up"][0] // 4  # three models came back


def test_a_silent_node_gets_a_timeout_reply_from_its_own_node_id():
    from fedsim.world.base import NODE_UNAVAILABLE, Fleet

    grid = FlakyGrid(3, 0, down=1, from_round=1, superlink_answers=False)
    fleet = Fleet(grid, 3, timeout=0.2, poll_interval=0.01)
    fleet.partition = {nid: i for i, nid in enumerate(grid.get_node_ids())}
    fleet.node = {i: nid for nid, i in fleet.partition.items()}
    msgs = [Message(RecordDict({"config": fedsim_config(1)}), nid, "train") for nid in fleet.get_node_ids()]
    replies = fleet.send_and_receive(msgs)
    assert [fleet.partition_of(r) for r in replies] == [0, 1, 2]
    assert [r.has_error() for r in replies] == [True, True, True]  # the others: not set up, but they answered
    assert replies[1].error.code == NODE_UNAVAILABLE and "no reply within 0.2 s" in replies[1].error.reason
    assert "not set up" in replies[0].error.reason


def fedsim_config(rnd):
    from flwr.app import ConfigRecord

    return ConfigRecord({"server-round": rnd})


# --------------------------------------------------------------------------- certificates


def test_certs_form_a_chain_for_the_superlink_and_node_keys_for_authentication(tmp_path):
    c = generate(tmp_path / "certs", nodes=2, hosts=("fl.example.org",))
    ca = x509.load_pem_x509_certificate(c.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(c.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server_hosts(c) == {"127.0.0.1", "::1", "localhost", "superlink", "fl.example.org"}
    assert c.server_key.stat().st_mode & 0o777 == 0o600
    for i in range(2):
        key = load_ssh_private_key(c.node_key(i).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        assert c.node_public_key(i).read_bytes().startswith(public)
    # again: the CA and node keys are kept; a new host re-issues only the server certificate
    before = c.ca_cert.read_bytes(), c.node_key(0).read_bytes(), c.server_cert.read_bytes()
    generate(tmp_path / "certs", nodes=2, hosts=("fl.example.org",))
    assert (c.ca_cert.read_bytes(), c.node_key(0).read_bytes(), c.server_cert.read_bytes()) == before
    generate(tmp_path / "certs", nodes=2, hosts=("10.0.0.7",))
    assert "10.0.0.7" in server_hosts(c) and c.server_cert.read_bytes() != before[2]
    x509.load_pem_x509_certificate(c.server_cert.read_bytes()).verify_directly_issued_by(ca)


# --------------------------------------------------------------------------- commands, compose


def test_the_command_builders_use_only_flags_the_installed_flower_knows():
    bin_dir = Path(sys.executable).parent
    commands = [
        superlink_command(host="0.0.0.0", port=8000, certs=COMPOSE_CERTS, node_auth=True, health=HEALTH_ADDRESS),
        supernode_command(superlink="superlink:8000", partition_id=0, num_partitions=2, port=9094,
                          certs=COMPOSE_CERTS, node_auth=True, health=HEALTH_ADDRESS),
        superlink_command(host="127.0.0.1", port=8000, certs=None, node_auth=False),
        supernode_command(superlink="127.0.0.1:8000", partition_id=1, num_partitions=2, port=9095, certs=None, node_auth=False),
    ]
    helps = {}
    for cmd in commands:
        if cmd[0] not in helps:
            exe = shutil.which(cmd[0]) or str(bin_dir / cmd[0])
            helps[cmd[0]] = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120).stdout
        flags = [part for part in cmd[1:] if part.startswith("--")]
        assert flags and all(f" {flag} " in helps[cmd[0]] or f" {flag}\n" in helps[cmd[0]] for flag in flags), cmd


def _run_command(compose: dict) -> tuple[str, list[str]]:
    cmd = compose["services"]["run"]["command"]
    assert cmd[:2] == ["fedsim", "run"]
    overrides = [c for c in cmd[3:] if not c.startswith("runtime.")]
    return cmd[2], overrides


def test_compose_yaml_runs_exactly_the_commands_fedsim_builds():
    text = (ROOT / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    scenario_file, overrides = _run_command(compose)
    n = load(ROOT / scenario_file, overrides).num_clients
    nodes = [s for s in compose["services"] if s.startswith("supernode-")]
    assert len(nodes) == n == 4
    assert compose == compose_file(scenario_file, overrides, n)  # every service, every command
    assert text == compose_yaml(scenario_file, overrides, n)  # and the file is what `fedsim compose` prints
    result = runner.invoke(app, ["compose", scenario_file, *overrides])
    assert result.exit_code == 0 and result.output == text
    for i in range(n):
        assert compose["services"][f"supernode-{i}"]["command"] == supernode_command(
            superlink="superlink:8000", partition_id=i, num_partitions=n, port=9094, certs=COMPOSE_CERTS,
            node_auth=True, health=HEALTH_ADDRESS,
        )


def test_the_local_cluster_and_compose_run_the_same_commands_up_to_addresses(tmp_path):
    """Same flags in the same order; only hosts, ports and certificate paths differ."""
    compose = compose_file("scenarios/noniid.yaml", ["num_clients=3"], 3)
    certs = generate(tmp_path / "certs", nodes=3)
    local = LocalCluster(tmp_path / "c", 3, certs)
    commands = {"superlink": local.superlink_command()} | {f"supernode-{i}": local.supernode_command(i, 9100 + i) for i in range(3)}
    for name, cmd in commands.items():
        theirs = compose["services"][name]["command"]
        assert [p for p in cmd if p.startswith("--")] == [p for p in theirs if p.startswith("--")], name
        assert cmd[0] == theirs[0]
    assert local.supernode_command(1, 9101)[local.supernode_command(1, 9101).index("--node-config") + 1] == (
        "partition-id=1 num-partitions=3"
    )


def test_cluster_down_without_a_cluster_says_so(tmp_path):
    result = runner.invoke(app, ["cluster", "down", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "no cluster state" in result.output


def _container_engine() -> str | None:
    for engine in ("docker", "podman"):
        exe = shutil.which(engine)
        if exe and subprocess.run([exe, "info"], capture_output=True, timeout=60).returncode == 0:
            return exe
    return None


def _base_images() -> list[str]:
    """The images the Dockerfile starts FROM (not its own earlier stages)."""
    stages, images = set(), []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] and words[0].upper() == "FROM":
            image = next(w for w in words[1:] if not w.startswith("--"))
            if image not in stages:
                images.append(image)
            if len(words) >= 4 and words[-2].upper() == "AS":
                stages.add(words[-1])
    return images


def _have_or_pull(engine: str, image: str) -> bool:
    if subprocess.run([engine, "image", "inspect", image], capture_output=True, timeout=60).returncode == 0:
        return True
    return subprocess.run([engine, "pull", image], capture_output=True, timeout=600).returncode == 0


def test_base_images_are_read_from_the_dockerfile():
    assert _base_images() and all(":" in image or "@" in image for image in _base_images())


@pytest.mark.slow
def test_the_image_builds_and_runs_fedsim_as_a_non_root_user():
    engine = _container_engine()
    if engine is None:
        pytest.skip("no working container engine here (docker/podman: no daemon or not installed)")
    missing = [image for image in _base_images() if not _have_or_pull(engine, image)]
    if missing:
        pytest.skip(f"base image {', '.join(missing)} cannot be pulled here (offline registry?)")
    subprocess.run([engine, "build", "-t", "fedsim:test", str(ROOT)], check=True, timeout=1800)
    out = subprocess.run([engine, "run", "--rm", "fedsim:test", "sh", "-c", "id -u && fedsim list"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.splitlines()[0] == "49999" and "fedavg" in out


def test_the_flower_app_and_control_api_internals_match_the_pinned_minor():
    """fedsim/deployment.py builds the FAB and talks to the Control API with flwr internals."""
    import flwr
    from flwr.common.config import get_fab_config
    from flwr.proto.control_pb2 import StartRunRequest

    from fedsim.runtimes.deployment import APP_DIR, build_fab_from_disk

    assert flwr.__version__.startswith("1.42."), flwr.__version__
    config = get_fab_config(build_fab_from_disk(APP_DIR))  # validates it as Flower does
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fedsim.runtimes.deployment:app", "clientapp": "fedsim.apps.client:app"
    }
    assert set(config["tool"]["flwr"]["app"]["config"]) == {"scenario", "run-dir"}
    assert {"fab", "override_config"} <= set(StartRunRequest.DESCRIPTOR.fields_by_name)
