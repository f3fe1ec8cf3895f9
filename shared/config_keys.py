"""Every configuration key as declared in :mod:`stamen.shared.config`, for people and for Flower.

``stamen keys`` prints them grouped by concern; ``docs/configuration.md`` and ``pyproject.toml``'s
``[tool.flwr.app.config]`` (what ``flwr run .`` reads) are written from here (``stamen keys --markdown`` /
``--toml``) and a test keeps both equal to the declaration, so a new key is one line in its spec.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .config import RunConfig


@dataclass(frozen=True)
class KeyDoc:
    """One flat key: its group (the spec declaring it), default and what it does."""

    group: str
    key: str
    default: Any
    help: str
    simulation_only: bool  # a device never reads it


def documented_keys() -> list[KeyDoc]:
    """Every key in declaration order (the order of :meth:`RunConfig.to_flat`)."""
    return list(_keys(RunConfig(), "run", False))


def _keys(spec: Any, group: str, simulation_only: bool):
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if dataclasses.is_dataclass(value):
            yield from _keys(value, field.name, getattr(value, "SIMULATION_ONLY", False))
        else:
            shown = ",".join(value) if isinstance(value, tuple) else value
            yield KeyDoc(group, field.metadata["key"], shown, field.metadata["help"], simulation_only)


def keys_markdown() -> str:
    """docs/configuration.md: one table per group."""
    lines = ["# Configuration keys", "",
             "Written by `stamen keys --markdown` from `shared/config.py`; do not edit by hand. Every key works in "
             "`--set key=value`, a `--preset` TOML and Flower's run config.", ""]
    groups: dict[str, list[KeyDoc]] = {}
    for doc in documented_keys():
        groups.setdefault(doc.group, []).append(doc)
    for group, docs in groups.items():
        suffix = " (simulation only: a device never reads these)" if docs[0].simulation_only else ""
        lines += [f"## {group}{suffix}", "", "| key | default | what it does |", "|---|---|---|"]
        lines += [f"| `{doc.key}` | `{json.dumps(doc.default)}` | {doc.help.replace('|', '/')} |" for doc in docs]
        lines.append("")
    return "\n".join(lines)


def keys_toml() -> str:
    """The ``[tool.flwr.app.config]`` table: every key at its default, in declaration order."""
    return "\n".join(["[tool.flwr.app.config]", *(f"{doc.key} = {_toml(doc.default)}" for doc in documented_keys())])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)
