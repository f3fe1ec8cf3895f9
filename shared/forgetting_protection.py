"""Forgetting protection by name, and the one switch that turns the default off.

A protection is a set of values of the replay and WiSE keys (``replay``, ``replay-ratio``, ``replay-loss``,
``wise-alpha``, ...). ``forgetting-protection`` picks how a run protects what the base knew:

- ``custom`` (the schema's default): as the replay and WiSE keys themselves say;
- ``none``: nothing (no replay, the adapter as trained);
- ``default``: the protection chosen on the tuning scenario (``simulations/forgetting.toml``) and measured once on
  the validation scenarios fixed before that choice (``simulations/forgetting-*.toml``); the personalisation
  preset and ``PersonalModel`` use it;
- the name of any protection below.

A named protection sets its keys; a run that sets one of them to another value as well is a configuration error
naming both, never a silent override.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OFF = {"replay": "none", "wise-alpha": 1.0, "wise-keep-gain": 0.0, "wise-keep-retention": 0.0}
PROTECTIONS: dict[str, dict[str, Any]] = {
    "none": OFF,
    # the frozen base's own answers to neutral prompts (generative self-replay, written once per base and cached)
    # mixed into a quarter of every batch as text
    "self-replay": {**OFF, "replay": "self", "replay-loss": "text", "replay-ratio": 0.25},
    # the same prompts, the model's distribution held to the base's (LwF)
    "self-distill": {**OFF, "replay": "self", "replay-loss": "distill", "replay-ratio": 0.25},
    # self-replay, and the model in use half way back toward the base (WiSE-FT at a fixed alpha of 0.5)
    "self-replay-wise-50": {**OFF, "replay": "self", "replay-loss": "text", "replay-ratio": 0.25, "wise-alpha": 0.5},
    # the device's own earlier data
    "buffer": {**OFF, "replay": "buffer", "replay-loss": "text", "replay-ratio": 0.25},
    # no replay: the model in use is base + a quarter of the adapter (WiSE-FT)
    "wise-25": {**OFF, "wise-alpha": 0.25},
}
# Chosen on the tuning scenario by the rule in benchmarks/README.md ("Forgetting protection, tuning scenario"):
# of the replay-based candidates that keep >= 90% of the gain at <= 10% extra client time, the highest 95% lower
# bound of the retention-loss cut.
DEFAULT = "self-replay-wise-50"
CUSTOM = "custom"
KEY = "forgetting-protection"


def protection_settings(values: Mapping[str, Any], schema_defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (a flat config) with its ``forgetting-protection`` applied: the named protection's keys set, or
    an error naming a key the run sets otherwise. Returns the values unchanged for ``custom``."""
    from .config import ConfigError  # config imports this module to apply it

    name = values.get(KEY, CUSTOM)
    if name == CUSTOM:
        return dict(values)
    chosen = PROTECTIONS.get(DEFAULT if name == "default" else name)
    if chosen is None:
        raise ConfigError(f"configuration key '{KEY}' = {name!r} must be one of "
                          f"{[CUSTOM, 'default', *PROTECTIONS]}")
    clashing = sorted(key for key, value in chosen.items()
                      if key in values and values[key] != value and values[key] != schema_defaults[key])
    if clashing:
        wanted = ", ".join(f"{key} = {chosen[key]!r}" for key in clashing)
        given = ", ".join(f"{key} = {values[key]!r}" for key in clashing)
        raise ConfigError(f"configuration key '{KEY}' = {name!r} sets {wanted}; the run also sets {given}: drop "
                          f"those, or use {KEY} = {CUSTOM!r} to set them yourself")
    return {**values, **chosen}


def owned_keys(name: str) -> tuple[str, ...]:
    """The keys protection ``name`` sets (none for ``custom``)."""
    return tuple(PROTECTIONS.get(DEFAULT if name == "default" else name, {}))
