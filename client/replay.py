"""Forgetting protection on the device: which earlier examples a round replays, and keeping them.

``buffer``: the reservoir of the device's own earlier training examples
(:mod:`.replay_buffer`); a round trains on its new data with ``replay-ratio`` of every
batch drawn from the buffer, then adds the new data to it. Everything stays in the
client's state store; nothing here is sent to the server.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

from stamen.shared.config import ReplaySpec

from .data import Example
from .replay_buffer import ReservoirBuffer
from .state_store import ClientStateStore


@dataclass
class RoundReplay:
    """The replay examples of one round and what keeping them costs."""

    spec: ReplaySpec
    buffer: ReservoirBuffer | None
    seconds: float

    @property
    def examples(self) -> list[Example]:
        return list(self.buffer.items) if self.buffer else []

    def remember(self, store: ClientStateStore, server_round: int, trained_on: list[Example]) -> None:
        """Add this round's training data to the buffer and save it as of ``server_round``."""
        started = time.perf_counter()
        if self.buffer:
            self.buffer.add(trained_on)
            self.buffer.save(store, server_round)
        self.seconds += time.perf_counter() - started


def round_replay(spec: ReplaySpec, store: ClientStateStore, server_round: int, client_name: str) -> RoundReplay:
    """The replay state a round starts from: the buffer as saved before ``server_round``."""
    started = time.perf_counter()
    buffer = None
    if "buffer" in spec.enabled():
        seed = zlib.crc32(f"replay/{client_name}".encode())
        buffer = ReservoirBuffer.load(store, server_round, spec.buffer_size, spec.buffer_bytes, seed)
    return RoundReplay(spec, buffer, time.perf_counter() - started)
