"""Flower processes for the ``deployment`` runtime: one command builder for every launcher.

``superlink_command`` and ``supernode_command`` are the only place the ``flower-superlink``
and ``flower-supernode`` command lines are written. ``LocalCluster`` (``fedsim cluster up``)
runs them on 127.0.0.1; ``compose_file`` (``fedsim compose``) writes them into the Docker
compose file, and a test checks that ``compose.yaml`` holds exactly these commands.

Security defaults: TLS with fedsim's own CA (``fedsim certs``) and SuperNode
authentication (each node's public key is registered with the SuperLink before the node
starts); ``insecure`` only when asked, and ``LocalCluster`` binds to 127.0.0.1 only.

A local cluster is stopped by process id: every process it starts, and every process
those start, carries the cluster's token in its environment; ``stop`` signals exactly the
live processes with that token (Linux ``/proc``), so a reused pid is never hit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from fedsim.runtimes.certs import Certs
from fedsim.runtimes.deployment import FLOWER_ENV, control_client, online_nodes, register_nodes

SUPERLINK_PORT = 8000  # Flower 1.42's SuperLink: Control, ServerAppIo and Fleet HTTP APIs on one port
SUPERNODE_PORT = 9094  # a SuperNode's own Runtime API, for the ClientApp processes it starts
HEALTH_ADDRESS = "127.0.0.1:9099"  # gRPC health service in each container (`fedsim health`)
STATE_FILE = "cluster.json"
TOKEN_VAR = "FEDSIM_CLUSTER"  # in the environment of every process a LocalCluster starts


def superlink_command(*, host: str, port: int, certs: Certs | None, node_auth: bool, health: str | None = None) -> list[str]:
    """``flower-superlink``: TLS with ``certs`` (plain HTTP when None), optional node authentication."""
    cmd = ["flower-superlink", "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key)]
        cmd += ["--ssl-ca-certfile", str(certs.ca_cert)]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    if health:
        cmd += ["--health-server-address", health]
    return cmd


def supernode_command(
    *,
    superlink: str,
    partition_id: int,
    num_partitions: int,
    port: int,
    certs: Certs | None,
    node_auth: bool,
    health: str | None = None,
) -> list[str]:
    """``flower-supernode`` holding partition ``partition_id`` of ``num_partitions``."""
    cmd = ["flower-supernode", "--superlink", superlink, "--port", str(port)]
    cmd += ["--node-config", f"partition-id={partition_id} num-partitions={num_partitions}"]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(certs.ca_cert)]
        if node_auth:
            cmd += ["--auth-supernode-private-key", str(certs.node_key(partition_id))]
    if health:
        cmd += ["--health-server-address", health]
    return cmd


def runtime_overrides(superlink: str, certs: Certs | None) -> dict[str, object]:
    """The scenario's ``runtime`` section for a SuperLink started with ``certs``."""
    rt: dict[str, object] = {"name": "deployment", "superlink": superlink}
    if certs is None:
        rt["insecure"] = True
    else:
        rt["root_certificates"] = str(certs.ca_cert.resolve())
    return rt


def wait_for_superlink(superlink: str, root_certificates: Path | None, timeout: float, alive=lambda: True):
    """A Control API client once the SuperLink answers (``alive()`` False: it has exited).

    ``root_certificates`` None means plain HTTP."""
    deadline = time.monotonic() + timeout
    while True:
        client = control_client(superlink, root_certificates, insecure=root_certificates is None)
        try:
            online_nodes(client)
            return client
        except httpx.TransportError as exc:
            client.close()
            if not alive():
                raise RuntimeError(f"the SuperLink at {superlink} exited") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no SuperLink answered at {superlink} within {timeout:.0f} s ({exc})") from None
            time.sleep(0.5)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, is not alive)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def tagged_processes(token: str) -> list[int]:
    """Live processes started by a cluster: they and their descendants carry its token.

    Flower detaches some children into sessions of their own (the SuperLink's SuperExec
    and ServerApp), so neither parent links nor process groups reach them all; the
    environment they inherit does, and no other process has this token."""
    needle = f"{TOKEN_VAR}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Process:
    name: str
    command: list[str]
    pid: int = 0
    log: str = ""
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)


class LocalCluster:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1, for tests, benchmarks and trying things.

    ``certs`` None means plain HTTP (insecure, loopback only); with ``node_auth`` each
    SuperNode's key ``certs.node_key(i)`` is registered before the node starts.
    """

    def __init__(
        self, directory: str | Path, nodes: int, certs: Certs | None, node_auth: bool = True, port: int = 0,
        token: str | None = None,
    ):
        if node_auth and certs is None:
            raise ValueError("SuperNode authentication needs TLS certificates and node keys (fedsim certs)")
        self.dir = Path(directory).resolve()
        self.nodes = nodes
        self.certs = certs
        self.node_auth = node_auth
        self.port = port or free_port()
        self.token = token or uuid.uuid4().hex
        self.processes: dict[str, Process] = {}

    @property
    def superlink(self) -> str:
        return f"127.0.0.1:{self.port}"

    def runtime(self, **extra) -> dict[str, object]:
        """The scenario's ``runtime`` section that submits to this cluster."""
        return runtime_overrides(self.superlink, self.certs) | extra

    def node_name(self, i: int) -> str:
        return f"supernode-{i}"

    def superlink_command(self) -> list[str]:
        health = f"127.0.0.1:{free_port()}"
        return superlink_command(host="127.0.0.1", port=self.port, certs=self.certs, node_auth=self.node_auth, health=health)

    def supernode_command(self, i: int, port: int) -> list[str]:
        return supernode_command(
            superlink=self.superlink, partition_id=i, num_partitions=self.nodes, port=port,
            certs=self.certs, node_auth=self.node_auth, health=f"127.0.0.1:{free_port()}",
        )

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ) | FLOWER_ENV
        # Flower's commands from this Python environment first (the SuperLink starts flower-superexec)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["FLWR_HOME"] = str(self.dir / "flwr" / name)  # one Flower state dir per process
        env["OMP_NUM_THREADS"] = "1"  # N nodes share this host's cores; one torch thread each
        env[TOKEN_VAR] = self.token
        return env

    def _spawn(self, name: str, command: list[str]) -> None:
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                command, env=self.env(name), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = Process(name, command, popen.pid, str(log), popen)
        self.save()

    def start(self, timeout: float = 180.0) -> None:
        """Start the SuperLink, register node keys, start the SuperNodes, wait until all are online."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._spawn("superlink", self.superlink_command())
            superlink = self.processes["superlink"]
            ca = self.certs.ca_cert if self.certs else None
            client = wait_for_superlink(self.superlink, ca, timeout, alive=lambda: _alive(superlink.pid))
            try:
                if self.node_auth:
                    register_nodes(client, [self.certs.node_public_key(i) for i in range(self.nodes)])
                for i in range(self.nodes):
                    self._spawn(self.node_name(i), self.supernode_command(i, free_port()))
                deadline = time.monotonic() + timeout
                while (online := online_nodes(client)) < self.nodes:
                    dead = [p.name for p in self.processes.values() if not _alive(p.pid)]
                    if dead:
                        raise RuntimeError(f"{', '.join(dead)} exited; see {self.dir / 'logs'}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{online} of {self.nodes} SuperNodes online after {timeout:.0f} s")
                    time.sleep(0.5)
            finally:
                client.close()
        except BaseException:
            self.stop()
            raise

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one process (not its group): a crash, as a failure test wants it."""
        os.kill(self.pid(name), sig)

    def stop(self, grace: float = 10.0) -> None:
        """TERM the SuperNodes, then the SuperLink, then whatever they started; KILL what is
        left after ``grace`` seconds. Forgets the state file."""
        for proc in reversed(list(self.processes.values())):
            if proc.pid in tagged_processes(self.token):  # still ours (not a reused pid)
                _signal([proc.pid], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (left := tagged_processes(self.token)) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal(left, signal.SIGTERM)
        time.sleep(min(1.0, grace))
        # KILL until none is left: a killed process takes a moment to exit, and one
        # started in the meantime (a SuperExec spawning an app) must go too.
        deadline = time.monotonic() + grace
        while (left := tagged_processes(self.token)) and time.monotonic() < deadline:
            _signal(left, signal.SIGKILL)
            time.sleep(0.2)
        for proc in self.processes.values():
            if proc.popen is not None:
                proc.popen.wait()
        self.processes.clear()
        (self.dir / STATE_FILE).unlink(missing_ok=True)

    # ---- the state file that `fedsim cluster down` reads

    def save(self) -> None:
        state = {
            "superlink": self.superlink,
            "certs": str(self.certs.dir) if self.certs else None,
            "node_auth": self.node_auth,
            "nodes": self.nodes,
            "token": self.token,
            "processes": [{"name": p.name, "pid": p.pid, "command": p.command, "log": p.log} for p in self.processes.values()],
        }
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> LocalCluster:
        path = Path(directory) / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except OSError:
            raise FileNotFoundError(f"no cluster state in {path}: is a cluster up there?") from None
        certs = Certs(Path(state["certs"])) if state["certs"] else None
        port = int(state["superlink"].rsplit(":", 1)[1])
        cluster = cls(directory, state["nodes"], certs, state["node_auth"], port=port, token=state["token"])
        for p in state["processes"]:
            cluster.processes[p["name"]] = Process(p["name"], p["command"], p["pid"], p["log"])
        return cluster


# --------------------------------------------------------------------------- Docker compose

COMPOSE_CERTS = Certs(Path("/certs"))  # the `certs` volume, as every container sees it
COMPOSE_SUPERLINK = f"superlink:{SUPERLINK_PORT}"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def compose_file(scenario_file: str, overrides: list[str], num_clients: int, image: str = "fedsim:latest") -> dict:
    """The compose project that runs a scenario on a SuperLink and ``num_clients`` SuperNodes.

    Services: ``certs`` (CA, SuperLink certificate and node keys into the ``certs``
    volume), ``superlink`` (TLS, SuperNode authentication), ``register`` (registers the
    node keys), ``supernode-<i>`` (partition i), ``run`` (submits the scenario; the
    ServerApp writes ``./runs``). Builds the image once, from ``certs``.
    """
    one_shot = {"image": image, "pull_policy": "never", "healthcheck": {"disable": True}}
    flower = {"image": image, "pull_policy": "never"}
    nodes = [f"supernode-{i}" for i in range(num_clients)]
    services: dict[str, dict] = {
        "certs": {
            "image": image,
            "build": ".",
            "command": ["fedsim", "certs", str(COMPOSE_CERTS.dir), "--nodes", str(num_clients)],
            "volumes": [f"certs:{COMPOSE_CERTS.dir}"],
            "healthcheck": {"disable": True},
        },
        "superlink": flower | {
            "command": superlink_command(
                host="0.0.0.0", port=SUPERLINK_PORT, certs=COMPOSE_CERTS, node_auth=True, health=HEALTH_ADDRESS
            ),
            "volumes": [f"certs:{COMPOSE_CERTS.dir}:ro", "./runs:/app/runs"],
            "ports": [f"127.0.0.1:{SUPERLINK_PORT}:{SUPERLINK_PORT}"],
            "depends_on": {"certs": {"condition": "service_completed_successfully"}},
        },
        "register": one_shot | {
            "command": ["fedsim", "cluster", "register", "--superlink", COMPOSE_SUPERLINK,
                        "--root-certificates", str(COMPOSE_CERTS.ca_cert),
                        *(str(COMPOSE_CERTS.node_public_key(i)) for i in range(num_clients))],
            "volumes": [f"certs:{COMPOSE_CERTS.dir}:ro"],
            "depends_on": {"superlink": {"condition": "service_healthy"}},
        },
    }
    for i, name in enumerate(nodes):
        services[name] = flower | {
            "command": supernode_command(
                superlink=COMPOSE_SUPERLINK, partition_id=i, num_partitions=num_clients, port=SUPERNODE_PORT,
                certs=COMPOSE_CERTS, node_auth=True, health=HEALTH_ADDRESS,
            ),
            "volumes": [f"certs:{COMPOSE_CERTS.dir}:ro"],
            "depends_on": {"register": {"condition": "service_completed_successfully"}},
        }
    services["run"] = one_shot | {
        "command": ["fedsim", "run", scenario_file, *overrides, "runtime.name=deployment",
                    f"runtime.superlink={COMPOSE_SUPERLINK}", f"runtime.root_certificates={COMPOSE_CERTS.ca_cert}"],
        "volumes": [f"certs:{COMPOSE_CERTS.dir}:ro", "./runs:/app/runs"],
        "depends_on": {name: {"condition": "service_healthy"} for name in nodes},
    }
    return {"name": "fedsim", "services": services, "volumes": {"certs": {}}}


def compose_yaml(scenario_file: str, overrides: list[str], num_clients: int, image: str = "fedsim:latest") -> str:
    command = " ".join(["fedsim", "compose", scenario_file, *overrides])
    header = (
        f"# Generated by `{command} > compose.yaml`; fedsim/cluster.py builds every command.\n"
        "# mkdir -p runs && chmod a+w runs   (the containers run as uid 49999)\n"
        "# docker compose up --build --exit-code-from run\n"
        "# Another scenario or number of SuperNodes: run `fedsim compose` again.\n"
    )
    body = yaml.dump(compose_file(scenario_file, overrides, num_clients, image), Dumper=_NoAliases, sort_keys=False, width=120, default_flow_style=None)
    return header + body
