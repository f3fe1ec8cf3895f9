"""What every handler starts from: the instruction read, the base checked, the adapter loaded, the data found."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Message

from stamen.shared.adapters import load_adapter_state
from stamen.shared.config import RunConfig
from stamen.shared.fingerprint import check_same_base
from stamen.shared.lora_ranks import pad_to_rank, padded_schema, truncate_to_rank
from stamen.shared.protocol import ARRAYS, CORRECTIONS, Instruction, check_server_records, read_instruction
from stamen.shared.run_folder import RunFolder
from stamen.shared.wire import AdapterSchema, decode_adapter

from .loaded_base import ClientRuntime, client_runtime
from .local_data import DataSource, LocalData
from .state_store import PERSONAL, ClientStateStore, client_folder


@dataclass
class RoundSetup:
    """What a handler works with once a message is read and the adapter is loaded."""

    instruction: Instruction
    runtime: ClientRuntime
    global_adapter: dict[str, np.ndarray]  # the shared part, at this client's rank
    data: LocalData
    rank: int
    store: ClientStateStore

    @property
    def config(self) -> RunConfig:
        return self.instruction.config

    @property
    def server_round(self) -> int:
        return self.instruction.server_round

    def at_server_rank(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrays at this client's rank, zero-padded to the server's rank."""
        server_rank = self.config.adapter.rank
        return pad_to_rank(arrays, self.rank, server_rank) if self.rank < server_rank else arrays

    def server_schema(self) -> AdapterSchema:
        server_rank = self.config.adapter.rank
        return padded_schema(self.runtime.schema, server_rank) if self.rank < server_rank else self.runtime.schema


def prepare(msg: Message, context: Context, data_source: DataSource, training_round: bool) -> RoundSetup:
    """Parse the instruction, refuse records its config does not call for, check the base, and load the adapter
    this client runs with: the received global part (cut to this client's rank), its personal part (``fedsa``)
    and any exact-LoRA corrections."""
    instruction = read_instruction(msg.content)
    config = instruction.config
    check_server_records(msg.content, config, msg.metadata.message_type)  # hooks switch on from the config only
    rank = _client_rank(context, config)
    runtime = client_runtime(_on_this_device(context, config), rank)
    check_same_base(instruction.fingerprint, runtime.base.fingerprint, "server's base vs this client's base")
    data = data_source(context, config, instruction.server_round)
    store = state_store(context, config, data.name)
    if rank < config.adapter.rank:
        received = decode_adapter(msg.content[ARRAYS], padded_schema(runtime.schema, config.adapter.rank))
        global_adapter = truncate_to_rank(received, rank, config.adapter.rank)
    else:
        global_adapter = decode_adapter(msg.content[ARRAYS], runtime.schema)
    personal = {}
    if len(runtime.schema.shapes) < len(runtime.initial):  # part of the adapter never leaves the device
        # evaluation follows the round's training, so it reads the state that training saved
        before = instruction.server_round + (0 if training_round else 1)
        stored = store.load(PERSONAL, before)
        personal = stored or {k: v for k, v in runtime.initial.items() if k not in global_adapter}
    load_adapter_state(runtime.model, {**global_adapter, **personal})
    if runtime.corrections:
        records = msg.content.array_records
        corrections = (
            decode_adapter(records[CORRECTIONS], runtime.corrections.schema) if CORRECTIONS in records else None
        )
        runtime.corrections.set(corrections)
    return RoundSetup(instruction, runtime, global_adapter, data, rank, store)


def state_store(context: Context, config: RunConfig, client_name: str) -> ClientStateStore:
    """Where this device keeps state the server never sees: the node's ``state-dir``,
    or (simulation) one folder per client under the run folder's ``clients/``."""
    if "state-dir" in context.node_config:
        root = Path(str(context.node_config["state-dir"]))
    else:
        root = RunFolder.of(config).clients
    return ClientStateStore(client_folder(root, client_name))


def _on_this_device(context: Context, config: RunConfig) -> RunConfig:
    """The run config with the device's own copy of the base (node config ``base-model``), if it names one:
    edge apps ship the base themselves, and the fingerprint check tells whether it is the server's."""
    base = context.node_config.get("base-model")
    return config.replace(**{"base-model": str(base)}) if base else config


def _client_rank(context: Context, config: RunConfig) -> int:
    """This client's LoRA rank: the device's ``lora-rank`` (its resources), a simulated
    client's share of ``client-ranks``, or the run's ``lora-rank``."""
    node = context.node_config
    if "lora-rank" in node:
        rank = int(node["lora-rank"])
        if not 1 <= rank <= config.adapter.rank:
            raise ValueError(
                f"this device's lora-rank {rank} must be in [1, {config.adapter.rank}] (the run's lora-rank)"
            )
        return rank
    ranks = config.simulated_client_ranks()
    if ranks and "partition-id" in node:
        return ranks[int(node["partition-id"]) % len(ranks)]
    return config.adapter.rank
