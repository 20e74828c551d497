"""One client step, attacked standalone: ``fedsim attack SCENARIO``.

Without running the federation, the scenario's target clients each receive the initial
global model (round 1), run the strategy's real client handler on their partition, and the
server's :class:`~fedsim.attacks.eavesdropper.Attacker` inverts the reply exactly as the
eavesdropper layer does inside a run (same observation, same attack, same metrics).
Writes ``attack.jsonl``, the image grid and the resolved scenario into a run directory.
"""

from __future__ import annotations

import copy

import torch
import yaml
from flwr.app import ConfigRecord, RecordDict

from fedsim.attacks.eavesdropper import Attacker, round_metrics
from fedsim import atomic, registry
from fedsim.apps.client import ClientEnv, fedavg_train
from fedsim.apps.setup import prepare
from fedsim.recorder import new_run_dir
from fedsim.records import to_record
from fedsim.scenario import Scenario


registry.add_kind("command")


@registry.register("command", "attack", description="attack one client step standalone (`fedsim attack`)")
def attack_one_step(scenario: Scenario) -> tuple[list[dict], dict, object]:
    """Attack each target's round-1 upload; returns (results, summary metrics, run dir).

    Runs with the in-process runtime's ``threads`` torch threads (one by default), as a run does.
    """
    if scenario.eavesdropper is None:
        raise ValueError("the scenario has no 'eavesdropper' section naming an attack")
    saved = torch.get_num_threads()
    torch.set_num_threads(getattr(scenario.runtime, "threads", saved))
    try:
        return _attack_one_step(scenario)
    finally:
        torch.set_num_threads(saved)


def _attack_one_step(scenario: Scenario) -> tuple[list[dict], dict, object]:
    setup = prepare(scenario)
    run_dir = new_run_dir(scenario.output.dir, scenario.name)
    atomic.write_text(run_dir / "scenario.yaml", yaml.safe_dump(scenario.to_dict(), sort_keys=False))
    attacker = Attacker(scenario, setup.dataset, setup.partitions, setup.model, run_dir)
    handler = registry.get("strategy", scenario.strategy.name).extras.get("client", fedavg_train)
    sent = RecordDict({"arrays": to_record(setup.model.state_dict()), "config": ConfigRecord({"server-round": 1})})
    x_all, y_all = torch.from_numpy(setup.dataset.x_train), torch.from_numpy(setup.dataset.y_train)
    results = []
    for client in attacker.params.targets:
        idx = torch.from_numpy(setup.partitions[client])
        model = copy.deepcopy(setup.model)
        env = ClientEnv(scenario, client, model, x_all[idx], y_all[idx], RecordDict(), model.state_dict(keep_vars=True),
                        setup.dataset.num_classes)
        state = RecordDict(dict(env.state.items()))  # before training (informed views)
        reply = handler(sent, env)
        results.append(attacker.run(1, client, sent, reply, state))
    attacker.save_grid(1, results)
    return results, round_metrics(results), run_dir
