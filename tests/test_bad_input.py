"""Nothing a user types crashes fedsim: bad files, bad parameters and disk faults each get
one clear message and exit 2 (bad input) or 1 (the run or the machine failed), never a
traceback; nothing recorded is lost."""

import os
import pickle

import pytest
import torch
import yaml
from typer.testing import CliRunner

import fedsim
from fedsim import checkpoint
from fedsim.cli import app
from fedsim.scenario import ScenarioError, load

runner = CliRunner()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = os.path.join(ROOT, "scenarios")


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def write(tmp_path, data, name="s.yaml"):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------ unreadable files


def test_random_bytes_are_not_a_scenario(tmp_path):
    path = write(tmp_path, bytes(range(128, 256)) * 4)
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}: not a text file (byte 0 is not UTF-8)" in result.output


def test_deeply_nested_yaml(tmp_path):
    path = write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    result = cli("validate", path)
    assert result.exit_code == 2 and f"{path}: nested too deeply" in result.output


def test_aliases_do_not_blow_up(tmp_path):
    """A 'billion laughs' document: the message stays short and comes at once."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    path = write(tmp_path, "name: t\nrounds: 1\nnum_clients: 2\n" + "\n".join(lines) + "\n")
    result = cli("validate", path)
    assert result.exit_code == 2 and "key 'a11': unknown key" in result.output
    assert len(result.output) < 4000


# ------------------------------------------------------------ partitioner parameters


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["partition.alpha=-1"], "partition.alpha", "greater than 0"),
        (["partition.alpha=0"], "partition.alpha", "greater than 0"),
        (["partition.name=pathological", "~partition.alpha", "partition.classes_per_client=0"],
         "partition.classes_per_client", "greater than or equal to 1"),
        (["partition.name=pathological", "~partition.alpha", "partition.class_assignment_mode=bogus"],
         "partition.class_assignment_mode", "choices: random, deterministic, first-deterministic"),
        (["partition.name=shard", "~partition.alpha", "partition.shards_per_client=-1"],
         "partition.shards_per_client", "greater than or equal to 1"),
    ],
)
def test_partitioner_parameters_are_validated_by_their_params_model(tiny, tmp_path, overrides, key, words):
    tiny["partition"] = {"name": "dirichlet", "alpha": 0.5}
    if "~partition.alpha" in overrides:  # the dirichlet key does not belong to the others
        tiny["partition"] = {"name": "dirichlet"}
    path = write(tmp_path, tiny)
    result = cli("validate", path, *[o for o in overrides if not o.startswith("~")])
    assert result.exit_code == 2, result.output
    override = next(o for o in overrides if o.startswith(key + "="))
    assert f"override {override}: key '{key}'" in result.output and words in result.output


@pytest.mark.parametrize("num_clients", [1438, 5000, 10**9])
def test_more_clients_than_examples_is_refused_at_validation(tiny, tmp_path, num_clients):
    """digits keeps 1797 - ceil(0.2 * 1797) = 1437 training examples."""
    tiny["partition"] = {"name": "iid"}
    path = write(tmp_path, tiny)
    result = cli("validate", path, f"num_clients={num_clients}")
    assert result.exit_code == 2
    assert "dataset 'digits' has 1437 training examples" in result.output
    assert cli("validate", path, "num_clients=1437").exit_code == 0


def test_partition_minimum_sizes_count_against_the_data(tiny, tmp_path):
    """dirichlet with min_partition_size 5 needs 5 examples per client: 288 * 5 > 1437."""
    path = write(tmp_path, tiny)
    assert cli("validate", path, "num_clients=287").exit_code == 0
    result = cli("validate", path, "num_clients=288")
    assert result.exit_code == 2 and "partition 'dirichlet' needs 1440 for 288 clients" in result.output


def test_run_time_partition_failures_are_exit_2_naming_num_clients(tiny):
    from fedsim.data.partition import make_partitions
    from fedsim.data.partition import IidParams

    with pytest.raises(ValueError, match="num_clients=20 exceeds the dataset's 10 training examples"):
        make_partitions("iid", IidParams(), torch.arange(10).numpy(), 20, 0)


# ----------------------------------------------------------------- rounds in range


def test_attack_rounds_beyond_the_last_round():
    with pytest.raises(ScenarioError, match=r"attack_ig.yaml:24: key 'eavesdropper.rounds': \[3\] out of range"):
        load(os.path.join(SCENARIOS, "attack_ig.yaml"), ["rounds=2"])
    load(os.path.join(SCENARIOS, "attack_ig.yaml"), ["rounds=3"])


def test_churn_rounds_beyond_the_last_round():
    with pytest.raises(ScenarioError) as info:
        load(os.path.join(SCENARIOS, "modest_churn.yaml"), ["rounds=5"])
    assert "key 'churn.0.round': churn at round 20 never happens" in str(info.value)
    assert "key 'churn.1.round': churn at round 40 never happens" in str(info.value)
    load(os.path.join(SCENARIOS, "modest_churn.yaml"), ["rounds=40"])


# --------------------------------------------------------------------- dataset files


def test_cifar10_garbage_files_are_named(tmp_path, tiny):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(b"I1x\n.")  # a protocol-0 pickle that fails inside int()
    from fedsim.data.datasets import load_dataset

    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR-10 batch \(ValueError: "):
        load_dataset("cifar10", {"path": str(tmp_path)}, 0)
    tiny.update(dataset={"name": "cifar10", "path": str(tmp_path)}, model={"name": "mlp"})
    result = cli("run", write(tmp_path, tiny))
    assert result.exit_code == 2 and "data_batch_1: not a CIFAR-10 batch" in result.output


def test_mnist_non_gzip_gz_is_named(tmp_path):
    from fedsim.data.datasets import read_idx

    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"x.gz: cannot read it"):
        read_idx(tmp_path / "x.gz", 3)


# ------------------------------------------------------------------------- resume


@pytest.fixture
def checkpointed(tiny):
    tiny["output"]["checkpoint_every"] = 1
    return fedsim.run(tiny, rounds=2).run_dir


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not-fedsim"])
def test_resume_on_a_damaged_checkpoint_exits_2(checkpointed, damage):
    path = checkpointed / checkpoint.FILE
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        torch.save({"round": 1}, path)
    result = cli("resume", checkpointed)
    assert result.exit_code == 2, result.output
    assert str(path) in result.output.replace("\n", "")
    assert ("not a readable checkpoint" if damage != "not-fedsim" else "not a fedsim checkpoint") in result.output


@pytest.mark.parametrize("text", ["rounds: [\n", "name: t\nrounds: 0\nnum_clients: 4\n", "\xff"])
def test_resume_with_a_broken_scenario_yaml_exits_2(checkpointed, text):
    (checkpointed / "scenario.yaml").write_text(text)
    result = cli("resume", checkpointed)
    assert result.exit_code == 2, result.output
    assert "scenario.yaml" in result.output


# -------------------------------------------------------------------- disk faults


def test_output_path_under_a_regular_file_exits_1(tiny, tmp_path):
    (tmp_path / "blocker").write_text("a file, not a directory")
    tiny["output"]["dir"] = str(tmp_path / "blocker" / "runs")
    result = cli("run", write(tmp_path, tiny))
    assert result.exit_code == 1, result.output
    assert "cannot write" in result.output and "blocker" in result.output


def test_read_only_output_dir_exits_1(tiny, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make mkdir fail as it would for a user
        from pathlib import Path

        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if str(self).startswith(str(out)):
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    tiny["output"]["dir"] = str(out)
    result = cli("run", write(tmp_path, tiny))
    out.chmod(0o755)
    assert result.exit_code == 1, result.output
    assert "cannot write" in result.output and "Permission denied" in result.output


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tiny, tmp_path, monkeypatch):
    """The round-2 checkpoint fails half-way (ENOSPC): exit 1, no checkpoint.pt.tmp, and
    checkpoint.pt still holds round 1."""
    real = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("checkpoint.pt.tmp"):
            calls.append(obj["round"])
            if obj["round"] == 2:
                with open(f, "wb") as fh:
                    fh.write(b"half a checkpoint")
                raise OSError(28, "No space left on device", str(f))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    tiny["output"]["checkpoint_every"] = 1
    result = cli("run", write(tmp_path, tiny))
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert calls == [1, 2]
    assert not list(run_dir.glob("*.tmp"))
    assert checkpoint.load(run_dir)["round"] == 1
    monkeypatch.setattr(torch, "save", real)
    assert cli("resume", run_dir).exit_code == 0  # and the run goes on from there


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    from fedsim import atomic

    path = atomic.write_text(tmp_path / "a.json", "old")

    def fail(tmp):
        tmp.write_text("ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_with(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_pickle_is_still_refused_in_checkpoints(tmp_path):
    """weights_only loading: a checkpoint that would run code is a CheckpointError."""
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / checkpoint.FILE).write_bytes(pickle.dumps({"round": Evil()}))
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path)
