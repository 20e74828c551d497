"""MkDocs hook: generate ``reference/scenario.md`` at build time from the scenario's JSON
Schema (``fedsim.scenario_schema``, itself generated from the pydantic models and the
registry), so the reference cannot drift from the code: every section and key with its
type, default, bounds and description, and every registered component with its own
parameters. Nothing is written to the source tree."""

from __future__ import annotations

import json
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference/scenario.md"


def _anchor(name: str) -> str:
    return name.lower().replace(".", "-").replace("_", "-")


def _type(node: dict[str, Any]) -> str:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        label = name.removesuffix("-component") if name.endswith("-component") else name
        return f"[{label}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in node:
            return " or ".join(dict.fromkeys(_type(n) for n in node[key]))
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        inner = node.get("items") or node.get("prefixItems")
        if isinstance(inner, list):
            return "[" + ", ".join(_type(n) for n in inner) + "]"
        return f"list of {_type(inner)}" if inner else "list"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"mapping to {_type(node['additionalProperties'])}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return kind or "any"


BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
          ("minItems", "items ≥"), ("maxItems", "items ≤"), ("minLength", "length ≥"), ("pattern", "matches"))


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for branch in [node, *node.get("anyOf", [])]:
        for key, sign in BOUNDS:
            if key in branch:
                value = f"`{branch[key]}`" if key == "pattern" else json.dumps(branch[key])
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(schema: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in skip}
    if not props:
        return ["No parameters.", ""]
    required = set(schema.get("required", []))
    lines = ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
    for key, node in props.items():
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ("required" if key in required else "")
        lines.append(f"| `{key}` | {_cell(_type(node))} | {_cell(default)} | {_cell(_bounds(node))} "
                     f"| {_cell(node.get('description', ''))} |")
    return [*lines, ""]


def render(schema: dict[str, Any]) -> str:
    defs = schema["$defs"]
    out = [
        "# Scenario reference",
        "",
        "Generated at build time from the scenario's pydantic models and the component registry",
        "(`fedsim schema` prints the same as JSON Schema). Unknown keys are errors everywhere.",
        "Cross-section rules (a defense that must fit the strategy, a topology that must fit",
        "`num_clients`) are checked by `fedsim validate`.",
        "",
        "## Top level",
        "",
        *_table(schema),
    ]
    components = sorted(n for n in defs if n.endswith("-component"))
    sections = sorted(n for n in defs if "." not in n and not n.endswith("-component"))
    out += ["## Sections and nested types", ""]
    for name in sections:
        out += [f"### {name} {{#{_anchor(name)}}}", "", _cell(defs[name].get("description", "")), "", *_table(defs[name])]
    out += ["## Components", "",
            "A component section is `name:` plus that component's own keys.", ""]
    for comp in components:
        kind = comp.removesuffix("-component")
        names = defs[comp]["properties"]["name"]["enum"]
        links = ", ".join(f"[`{n}`](#{_anchor(f'{kind}.{n}')})" for n in names)
        out += [f"### {kind} {{#{_anchor(comp)}}}", "", f"Registered: {links}.", ""]
        for n in names:
            entry = defs[f"{kind}.{n}"]
            out += [f"#### `{n}` {{#{_anchor(f'{kind}.{n}')}}}", "",
                    _cell(entry["properties"]["name"].get("description", "")), ""]
            if entry.get("description"):
                out += [_cell(entry["description"]), ""]
            out += _table(entry, skip=("name",))
    return "\n".join(out) + "\n"


def on_files(files: Files, config) -> Files:
    from fedsim.scenario_schema import scenario_schema

    files.append(File.generated(config, PAGE, content=render(scenario_schema())))
    return files
