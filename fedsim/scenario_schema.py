"""The JSON Schema of a scenario file, with every registered component's parameters.

pydantic writes the schema of the scenario's own structure; a component section
(``dataset``, ``strategy``, ``participation``, ...) there is only ``name`` plus anything.
Here each component section becomes a ``oneOf`` over the components registered for its
kind: each alternative is that component's params model with ``name`` fixed to its
registered name, so an editor completes the names and then that component's keys, and
flags unknown keys. ``fedsim schema`` prints it; ``make schema`` writes the shipped copy,
``schema/scenario.schema.json``.

Rules that span sections (a defense fits the strategy, a topology fits ``num_clients``)
stay in :func:`fedsim.scenario.validate`; the schema is what an editor can check alone.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import models_json_schema

from fedsim import registry
from fedsim.scenario import COMPONENTS, Component, Scenario

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _component_def(entry: registry.Entry, params_schema: dict[str, Any]) -> dict[str, Any]:
    """One alternative: the params model's schema with ``name`` fixed to the entry's name."""
    schema = copy.deepcopy(params_schema)
    title = schema.pop("title", entry.params.__name__)
    properties = {"name": {"const": entry.name, "description": entry.description}, **schema.get("properties", {})}
    return {
        "title": f"{entry.kind} '{entry.name}' ({title})",
        "type": "object",
        "properties": properties,
        "required": ["name", *schema.get("required", [])],
        "additionalProperties": False,
        **({"description": schema["description"]} if "description" in schema else {}),
    }


def _replace_refs(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        if node.get("$ref") == old:
            return {**node, "$ref": new}
        return {k: _replace_refs(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, old, new) for v in node]
    return node


def scenario_schema() -> dict[str, Any]:
    """The whole scenario's JSON Schema (draft 2020-12), components resolved by ``name``."""
    entries = {kind: registry.entries().get(kind, []) for kind in set(COMPONENTS.values())}
    models = [(Scenario, "validation")] + [(e.params, "validation") for es in entries.values() for e in es]
    refs, top = models_json_schema(models, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top["$defs"]
    scenario_ref = refs[(Scenario, "validation")]["$ref"]
    schema = defs.pop(scenario_ref.rsplit("/", 1)[1])
    component_ref = f"#/$defs/{Component.__name__}"
    defs.pop(Component.__name__)

    properties = schema["properties"]
    for section, kind in COMPONENTS.items():
        alternatives = []
        for entry in entries[kind]:
            params_ref = refs[(entry.params, "validation")]["$ref"]
            params_schema = defs[params_ref.rsplit("/", 1)[1]]
            key = f"{kind}.{entry.name}"
            defs[key] = _component_def(entry, params_schema)
            alternatives.append({"$ref": f"#/$defs/{key}"})
        defs[f"{kind}-component"] = {
            "title": f"a registered {kind}",
            "description": f"'name' picks one of the registered {kind} components; the other keys are its parameters",
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"enum": [e.name for e in entries[kind]]}},
            "oneOf": alternatives,
        }
        properties[section] = _replace_refs(properties[section], component_ref, f"#/$defs/{kind}-component")
    return {
        "$schema": SCHEMA_DIALECT,
        **schema,
        "$defs": _reachable(properties, defs),
    }


def _reachable(root: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The definitions ``root`` refers to, directly or through other definitions, sorted."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/") and ref[8:] not in seen:
                seen.add(ref[8:])
                todo.append(defs[ref[8:]])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return {name: defs[name] for name in sorted(seen)}
