"""The server's own update on a small clean root set, for rules that judge client updates by it (FLTrust).

The root set is the embedded corpus's ``root`` sample: general dialogue no client holds
and the forgetting probe does not use. The server trains it with the same loop and
settings as a client round, from the current global adapter.
"""

from __future__ import annotations

import zlib

import numpy as np

from stamen.shared.adapters import adapter_state, attach_adapter, load_adapter_state
from stamen.shared.base_model import load_base
from stamen.shared.config import RunConfig
from stamen.shared.training import train_adapter


class RootTrainer:
    def __init__(self, config: RunConfig) -> None:
        from stamen.shared.corpus import natural_split

        base = load_base(config.base_model, quantisation="none")
        self.model = attach_adapter(base.model, config.adapter, config.seed)
        self.tokenizer, self.config = base.tokenizer, config
        self.examples = list(natural_split(1, config.seed).root)

    def update(self, global_adapter: dict[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        """Trained minus received, for the adapter part the server aggregates."""
        load_adapter_state(self.model, global_adapter, partial=True)
        seed = zlib.crc32(f"{self.config.seed}/root/{server_round}".encode())
        train_adapter(self.model, self.tokenizer, self.examples, self.config.training, seed)
        trained = adapter_state(self.model)
        return {name: trained[name].numpy() - value for name, value in global_adapter.items()}
