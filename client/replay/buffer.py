"""A buffer of the device's own earlier examples, kept across rounds and sessions.

By default Vitter's Algorithm R keeps a uniform sample of everything the device has trained
on, in bounded space: the n-th example enters with probability capacity/n and replaces a
random slot. ``replay-buffer-selection = k-centre`` keeps instead the core-set that covers
what was kept and what came in best (:mod:`.coreset`). A byte bound shrinks the capacity
(evicting uniformly at random). The buffer, its count of examples seen and its random state
live in the client's state store, so a restarted device continues the same sample; none of
it is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from stamen.shared.examples import Example

from ..state_store import ClientStateStore
from .sources import ReplayInputs, ReplaySource, register

REPLAY_BUFFER = "replay-buffer"


def example_bytes(example: Example) -> int:
    """What an example costs in the stored buffer (its UTF-8 text)."""
    return sum(len(text.encode()) for text in (example.response, example.prompt or "",
                                               *(content for _, content in example.history)))


@dataclass
class ReplayBuffer:
    """At most ``capacity`` examples and ``max_bytes`` bytes of text: a uniform sample, or what ``select``
    (pool, capacity -> kept) keeps."""

    capacity: int
    max_bytes: int
    seed: int = 0
    items: list[Example] = field(default_factory=list)
    seen: int = 0
    select: Callable[[list[Example], int], list[Example]] | None = None
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.max_bytes < 1:
            raise ValueError(
                f"a replay buffer needs capacity >= 1 and max_bytes >= 1, got {self.capacity}, {self.max_bytes}"
            )
        self._rng = np.random.default_rng(self.seed)

    @property
    def nbytes(self) -> int:
        return sum(example_bytes(e) for e in self.items)

    def add(self, examples: Iterable[Example]) -> None:
        if self.select is not None:
            arriving = list(examples)
            self.seen += len(arriving)
            self.items = self.select([*self.items, *arriving], self.capacity)
            self._respect_byte_bound()
            return
        for example in examples:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(example)
            else:
                slot = int(self._rng.integers(self.seen))
                if slot < self.capacity:
                    self.items[slot] = example
            self._respect_byte_bound()

    def _respect_byte_bound(self) -> None:
        total = self.nbytes
        while total > self.max_bytes and self.items:
            evicted = self.items.pop(int(self._rng.integers(len(self.items))))
            total -= example_bytes(evicted)
            self.capacity = max(1, len(self.items))

    def save(self, store: ClientStateStore, server_round: int) -> None:
        store.save_document(REPLAY_BUFFER, server_round, {
            "capacity": self.capacity, "max_bytes": self.max_bytes, "seen": self.seen,
            "rng": json.loads(json.dumps(self._rng.bit_generator.state)),
            "items": [{"response": e.response, "prompt": e.prompt, "history": e.history} for e in self.items],
        })

    @classmethod
    def load(
        cls, store: ClientStateStore, before_round: int, capacity: int, max_bytes: int, seed: int,
        select: Callable[[list[Example], int], list[Example]] | None = None,
    ) -> ReplayBuffer:
        """The buffer as saved before ``before_round``, or a new one. A smaller configured bound applies at once."""
        document = store.load_document(REPLAY_BUFFER, before_round)
        if document is None:
            return cls(capacity, max_bytes, seed, select=select)
        buffer = cls(min(capacity, document["capacity"]), max_bytes, seed,
                     [_example(item) for item in document["items"]], document["seen"], select)
        buffer._rng.bit_generator.state = document["rng"]
        if len(buffer.items) > buffer.capacity and select is not None:
            buffer.items = select(buffer.items, buffer.capacity)
        elif len(buffer.items) > buffer.capacity:  # keep a uniform subset
            keep = sorted(buffer._rng.choice(len(buffer.items), size=buffer.capacity, replace=False))
            buffer.items = [buffer.items[i] for i in keep]
        buffer._respect_byte_bound()
        return buffer


@register("buffer")
class BufferReplay(ReplaySource):
    """The device's own earlier training examples, so new local data does not erase older local data."""

    uses_buffer = True

    @classmethod
    def replay(cls, inputs: ReplayInputs) -> tuple[list[Example], tuple]:
        return list(inputs.buffer.items), ()


def _example(item: dict) -> Example:
    """An example as :meth:`ReplayBuffer.save` stored it (JSON turns its history's tuples into lists)."""
    return Example(item["response"], item["prompt"], tuple(tuple(turn) for turn in item.get("history", ())))
