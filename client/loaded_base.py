"""One loaded base + adapter per client process, reused across rounds and virtual clients.

Loading (and quantising) the base is the expensive part of a client; a process
keeps it for as long as the run's base, quantisation and adapter stay the same.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from stamen.shared.adapters import adapter_state, attach_adapter, shared_state
from stamen.shared.base_model import LoadedBase, load_base
from stamen.shared.config import RunConfig
from stamen.shared.lora_layers import lora_layers
from stamen.shared.wire import AdapterSchema

from .evaluation.neutral_probes import Fact, known_facts
from .lora_corrections import LayerCorrections

log = logging.getLogger(__name__)


@dataclass
class ClientRuntime:
    """The frozen base with its adapter, and the schema updates must follow."""

    base: LoadedBase
    model: torch.nn.Module
    schema: AdapterSchema  # the shared part of the adapter: what travels
    initial: dict[str, np.ndarray]  # the seeded initial adapter, whole (personal parts start here)
    corrections: LayerCorrections | None  # exact-LoRA corrections, when the run uses them
    _known: tuple[list[Fact], list[Fact]] | None = None

    def known_facts(self) -> list[Fact]:
        """The probe questions the frozen base answers correctly that retention is measured on (cached on disk
        after the first call)."""
        return self._base_knows()[0]

    def guard_facts(self) -> list[Fact]:
        """More questions the frozen base answers correctly, none of them measured: what a client may steer by."""
        return self._base_knows()[1]

    def _base_knows(self) -> tuple[list[Fact], list[Fact]]:
        if self._known is None:
            self._known = known_facts(self.model, self.base.tokenizer, self.base.fingerprint,
                                      self.base.quantisation.mode)
        return self._known


_current: tuple[tuple, ClientRuntime] | None = None


def client_runtime(config: RunConfig, rank: int | None = None, device: str | None = None) -> ClientRuntime:
    """The process's runtime for ``config`` (with this client's LoRA ``rank``), loaded on first use.

    A change of adapter alone re-wraps the loaded base; only a change of base reloads it.
    """
    global _current
    spec = replace(config.adapter, rank=rank or config.adapter.rank)
    base_key = (config.base_model, config.quantisation, device)
    key = (base_key, spec, config.wire_dtype, config.seed)
    if _current is not None and _current[0] == key:
        return _current[1]
    base = None
    if _current is not None and _current[0][0] == base_key:
        base = _current[1].base
        base.model = _current[1].model.unload()  # the frozen base without the old adapter
    _current = None
    gc.collect()
    if base is None:
        started = time.perf_counter()
        base = load_base(config.base_model, config.quantisation, device)
        log.info("loaded base %s (%s) in %.1f s", config.base_model, base.quantisation.mode,
                 time.perf_counter() - started)
    model = attach_adapter(base.model, spec, config.seed)
    initial = {k: v.numpy() for k, v in adapter_state(model).items()}
    schema = AdapterSchema.from_state(shared_state(initial, spec), config.wire_dtype)
    corrections = None
    if spec.lora_mode().corrects_products:
        corrections = LayerCorrections(model, lora_layers(initial), config.wire_dtype)
    runtime = ClientRuntime(base, model, schema, initial, corrections)
    _current = (key, runtime)
    return runtime


def release_runtime() -> None:
    """Drop the process's loaded base, so the next client loads it afresh (what a stateless
    client function does; the simulation-scale benchmark measures that cost)."""
    global _current
    _current = None
    gc.collect()
