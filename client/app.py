"""The Stamen ClientApp: receive the global adapter, train locally, send back only the delta.

Each reply carries the adapter delta (trained - received) in the run's wire dtype,
numeric metrics, and this client's base fingerprint, so the server can refuse
updates made on a different base.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from stamen.shared.adapters import adapter_state, base_alone, load_adapter_state
from stamen.shared.anchor_set import ANCHOR
from stamen.shared.config import RunConfig
from stamen.shared.fingerprint import check_same_base
from stamen.shared.lora_ranks import pad_to_rank, padded_schema, truncate_to_rank
from stamen.shared.protocol import (
    ARRAYS,
    CONTROL,
    CONTROL_DELTA,
    CORRECTIONS,
    HELDOUT_EXAMPLES,
    NUM_EXAMPLES,
    Instruction,
    client_reply,
    read_instruction,
)
from stamen.shared.secagg_protocol import (
    MASK_STAGE,
    MASKED,
    MASKED_VECTOR,
    PEERS,
    PUBLIC_KEYS,
    REVEALED,
    SECAGG,
    SHARE_STAGE,
    SHARES,
    UNMASK_STAGE,
    StageInfo,
)
from stamen.shared.wire import AdapterSchema, decode_adapter, encode_adapter

from .attacks import attack_for, make_attack
from .drift_correction import ScaffoldClient, proximal_term
from .error_feedback import with_error_feedback
from .evaluation import EvalResult, evaluate_loss
from .forgetting import forgetting_metrics
from .local_data import MAX_HELDOUT as MAX_STAGE_EXAMPLES
from .local_data import LocalData, local_data
from .personalisation import load_personal, train_ditto
from .replay import round_replay
from .resource_guard import ResourceGuards, record_pace
from .runtime import ClientRuntime, client_runtime
from .secure_aggregation import SecAggClient, secure_input
from .state_store import OPTIMIZER, PERSONAL, ClientStateStore, client_folder
from .training import train_adapter
from .update import personal_part, shared_delta


@dataclass
class RoundSetup:
    """What a handler works with once a message is read and the adapter is loaded."""

    instruction: Instruction
    runtime: ClientRuntime
    global_adapter: dict[str, np.ndarray]  # the shared part, at this client's rank
    data: LocalData
    rank: int

    def at_server_rank(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrays at this client's rank, zero-padded to the server's rank."""
        server_rank = self.instruction.config.adapter.rank
        return pad_to_rank(arrays, self.rank, server_rank) if self.rank < server_rank else arrays

    def server_schema(self) -> AdapterSchema:
        server_rank = self.instruction.config.adapter.rank
        return padded_schema(self.runtime.schema, server_rank) if self.rank < server_rank else self.runtime.schema

    def to_wire(self, arrays: dict[str, np.ndarray]) -> ArrayRecord:
        """Arrays at the server's rank, encoded in the wire dtype."""
        return encode_adapter(self.at_server_rank(arrays), self.runtime.schema.wire_dtype)


def _prepare(msg: Message, context: Context, training_round: bool) -> RoundSetup:
    """Parse the instruction, check the base, and load the adapter this client runs with:
    the received global part (cut to this client's rank), its personal part (``fedsa``)
    and any exact-LoRA corrections."""
    instruction = read_instruction(msg.content)
    config = instruction.config
    rank = _client_rank(context, config)
    runtime = client_runtime(_on_this_device(context, config), rank)
    check_same_base(instruction.fingerprint, runtime.base.fingerprint, "server's base vs this client's base")
    data = local_data(context, config, instruction.server_round if training_round else 0)
    if rank < config.adapter.rank:
        received = decode_adapter(msg.content[ARRAYS], padded_schema(runtime.schema, config.adapter.rank))
        global_adapter = truncate_to_rank(received, rank, config.adapter.rank)
    else:
        global_adapter = decode_adapter(msg.content[ARRAYS], runtime.schema)
    personal = {}
    if len(runtime.schema.shapes) < len(runtime.initial):  # part of the adapter never leaves the device
        # evaluation follows the round's training, so it reads the state that training saved
        before = instruction.server_round + (0 if training_round else 1)
        stored = _store(context, config, data.name).load(PERSONAL, before)
        personal = stored or {k: v for k, v in runtime.initial.items() if k not in global_adapter}
    load_adapter_state(runtime.model, {**global_adapter, **personal})
    if runtime.corrections:
        records = msg.content.array_records
        corrections = decode_adapter(records[CORRECTIONS], runtime.corrections.schema) if CORRECTIONS in records else None
        runtime.corrections.set(corrections)
    return RoundSetup(instruction, runtime, global_adapter, data, rank)


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
            raise ValueError(f"this device's lora-rank {rank} must be in [1, {config.adapter.rank}] (the run's lora-rank)")
        return rank
    ranks = config.simulated_client_ranks()
    if ranks and "partition-id" in node:
        return ranks[int(node["partition-id"]) % len(ranks)]
    return config.adapter.rank


def _heldout(runtime: ClientRuntime, examples, training) -> EvalResult:
    return evaluate_loss(
        runtime.model, runtime.base.tokenizer, list(examples), training.max_seq_len, training.eval_batch_size
    )


def train(msg: Message, context: Context) -> Message:
    """Train the received global adapter on local data; reply with the delta."""
    setup = _prepare(msg, context, training_round=True)
    instruction, runtime, global_adapter, data = setup.instruction, setup.runtime, setup.global_adapter, setup.data
    config, training = instruction.config, instruction.config.training
    store = _store(context, config, data.name)
    state_dir = store.folder
    ResourceGuards.from_node_config(context.node_config).check(training, state_dir)
    # the round-0 baseline the evaluations are compared with; a run that never evaluates skips it
    measure_baseline = instruction.server_round == 1 and config.fraction_evaluate > 0
    baseline = _initial_losses(runtime, data, training) if measure_baseline else {}
    corrections = [proximal_term(config.proximal_mu, global_adapter)] if config.proximal_mu > 0 else []
    scaffold = None
    if CONTROL in msg.content.array_records:
        server_control = decode_adapter(msg.content[CONTROL], runtime.schema)
        scaffold = ScaffoldClient(store, instruction.server_round, server_control)
        corrections.append(scaffold.correction())
    seed = zlib.crc32(f"{config.seed}/{data.name}/{instruction.server_round}".encode())
    attack, attack_rng = attack_for(context, config), np.random.default_rng(seed)
    examples = attack.poison_data(data.train, attack_rng) if attack else data.train
    replay = round_replay(config, store, instruction.server_round, data.name, runtime.model, runtime.base.tokenizer,
                          msg.content.config_records.get(ANCHOR))
    optimizer_state = store.load(OPTIMIZER, instruction.server_round) if config.keep_optimizer_state else None
    result = train_adapter(runtime.model, runtime.base.tokenizer, list(examples), training, seed,
                           (*corrections, *replay.corrections), replay.examples, config.replay.ratio, optimizer_state)
    replay.remember(store, instruction.server_round, list(data.train))
    if config.keep_optimizer_state:
        store.save(OPTIMIZER, instruction.server_round, result.optimizer_state)
    record_pace(state_dir, result.seconds, result.steps)
    trained = {k: v.numpy() for k, v in adapter_state(runtime.model).items()}
    delta = shared_delta(trained, global_adapter)
    personal = personal_part(trained, global_adapter)
    if personal:
        store.save(PERSONAL, instruction.server_round, personal)
    extra_uploads = {}
    if scaffold:
        extra_uploads[CONTROL_DELTA] = scaffold.finish(global_adapter, trained, training.local_steps, training.learning_rate)
    personal_seconds = 0.0
    if config.personalisation == "ditto":
        personal_seconds = train_ditto(runtime.model, runtime.base.tokenizer, store, instruction.server_round,
                                       global_adapter, list(data.train), config, seed + 1).seconds
    if attack:
        delta = attack.poison_update(delta, attack_rng)
    if not config.privacy.secure_aggregation:  # a masked sum is exact: nothing to feed back
        delta = with_error_feedback(delta, config.wire_dtype, store, instruction.server_round)
    metrics = {
        NUM_EXAMPLES: 1 if config.privacy.secure_aggregation else len(data.train),  # under secure aggregation the weight is masked too
        **({"malicious": 1} if attack else {}),  # simulation bookkeeping, to count admitted attacks
        "examples-seen": result.examples_seen,
        "train-loss": result.loss,
        "train-steps": result.steps,
        **({"train-flat-steps": result.flat_steps} if result.flat_steps else {}),
        "train-tokens": result.tokens,
        "train-seconds": result.seconds,
        **({"personal-train-seconds": personal_seconds} if personal_seconds else {}),
        **({"replay-seconds": replay.seconds, "replay-examples": len(replay.examples)} if config.replay.enabled() else {}),
        **baseline,
    }
    reply = update_reply(context, instruction, metrics, runtime.base.fingerprint, data.name,
                         setup.at_server_rank(delta), setup.server_schema(), len(data.train))
    for name, arrays in extra_uploads.items():
        reply[name] = setup.to_wire(arrays)
    return Message(reply, reply_to=msg)


def update_reply(
    context: Context,
    instruction: Instruction,
    metrics: dict[str, int | float],
    fingerprint: str,
    client_name: str,
    delta: dict[str, np.ndarray],
    schema: AdapterSchema,
    num_examples: int,
) -> RecordDict:
    """The content of a train reply: the delta in the wire dtype, or, under secure aggregation,
    only this client's public keys (its masked delta and weight follow in stage 3)."""
    config = instruction.config
    if not config.privacy.secure_aggregation:
        return client_reply(metrics, fingerprint, client_name, encode_adapter(delta, schema.wire_dtype))
    reply = client_reply(metrics, fingerprint, client_name)
    vector = secure_input(schema.flatten(delta), num_examples, config.privacy)
    reply[PUBLIC_KEYS] = SecAggClient(context.state, context.node_id).advertise(config.run_id, instruction.server_round, vector)
    return reply


def secagg_share(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 2: encrypted shares of this client's secrets for its neighbours."""
    client, info = _secagg(msg, context)
    return Message(RecordDict({SHARES: client.share_keys(info, msg.content[PEERS])}), reply_to=msg)


def secagg_mask(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 3: the masked update."""
    client, info = _secagg(msg, context)
    masked = client.masked_input(info, msg.content[SHARES])
    return Message(RecordDict({MASKED: ArrayRecord({MASKED_VECTOR: Array(masked)})}), reply_to=msg)


def secagg_unmask(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 4: the shares the server needs to unmask the sum."""
    client, info = _secagg(msg, context)
    return Message(RecordDict({REVEALED: client.unmask(info)}), reply_to=msg)


def _secagg(msg: Message, context: Context) -> tuple[SecAggClient, StageInfo]:
    return SecAggClient(context.state, context.node_id), StageInfo.from_record(msg.content[SECAGG])


def _store(context: Context, config, client_name: str) -> ClientStateStore:
    """Where this device keeps state the server never sees: the node's ``state-dir``,
    or (simulation) one folder per client under the run folder's ``clients/``."""
    if "state-dir" in context.node_config:
        root = Path(str(context.node_config["state-dir"]))
    else:
        root = Path(config.run_dir) / config.run_id / "clients"
    return ClientStateStore(client_folder(root, client_name))


def _initial_losses(runtime: ClientRuntime, data, training) -> dict[str, float]:
    """Losses of the initial global adapter, measured once (round 1) as the run's round-0 baseline."""
    return {
        HELDOUT_EXAMPLES: len(data.heldout),
        "initial-heldout-loss": _heldout(runtime, data.heldout, training).loss,
        "initial-base-domain-loss": _heldout(runtime, _general(runtime, data), training).loss,
    }


def _general(runtime: ClientRuntime, data) -> list:
    return [*data.base_domain, *runtime.base_generated()]


def evaluate(msg: Message, context: Context) -> Message:
    """Held-out and base-domain loss of the global adapter and of this client's personal model."""
    started = time.perf_counter()
    setup = _prepare(msg, context, training_round=False)
    runtime, data, training = setup.runtime, setup.data, setup.instruction.config.training
    heldout = _heldout(runtime, data.heldout, training)
    general = _heldout(runtime, _general(runtime, data), training)
    config = setup.instruction.config
    probe = make_attack(config.attack, **config.attack_settings()) if config.attack != "none" else None
    attack_metrics = probe.measure(runtime.model, runtime.base.tokenizer, data.heldout) if probe else {}
    server_round, seed = setup.instruction.server_round, zlib.crc32(f"{config.seed}/{data.name}/personal".encode())
    examples = list(local_data(context, config, server_round).train)  # what a finetune trains on this round
    store = _store(context, config, data.name)
    has_personal = load_personal(runtime.model, runtime.base.tokenizer, store, server_round, examples, config, seed)
    personal = _heldout(runtime, data.heldout, training) if has_personal else heldout
    personal_general = _heldout(runtime, _general(runtime, data), training) if has_personal else general
    stage, stage_losses = _stage_losses(runtime, data, config, server_round) if config.partition == "stream" else (None, None)
    forgetting = forgetting_metrics(store, server_round, personal_general.loss,
                                    lambda: _base_alone(runtime, _general(runtime, data), training), stage, stage_losses)
    metrics = {
        NUM_EXAMPLES: len(data.heldout),
        "heldout-loss": heldout.loss,
        "heldout-ppl": heldout.perplexity,
        "personal-heldout-loss": personal.loss,
        "personal-gain": heldout.loss - personal.loss,
        "base-domain-loss": general.loss,
        **({"personal-base-domain-loss": personal_general.loss} if has_personal else {}),
        **forgetting,
        **attack_metrics,
        **({"malicious": 1} if attack_for(context, config) else {}),
        "eval-seconds": time.perf_counter() - started,
    }
    return Message(client_reply(metrics, runtime.base.fingerprint, data.name), reply_to=msg)


def _base_alone(runtime: ClientRuntime, examples: list, training) -> float:
    """Loss of the frozen base with every adapter disabled: what the base could do (round 0)."""
    with base_alone(runtime.model):
        return _heldout(runtime, examples, training).loss


def _stage_losses(runtime: ClientRuntime, data: LocalData, config: RunConfig, server_round: int) -> tuple[int, dict[int, float]]:
    """Stream partitions: the stage trained in ``server_round`` and the loss on every stage so far
    (each on up to ``MAX_STAGE_EXAMPLES`` of its training examples; ``data`` holds all stages)."""
    from stamen.simulations.partitions import stage_examples, stream_stage

    stage = stream_stage(server_round, config.num_rounds, config.stream_stages)
    losses = {j: _heldout(runtime, stage_examples(data.train, j, config.stream_stages)[:MAX_STAGE_EXAMPLES],
                          config.training).loss for j in range(stage + 1)}
    return stage, losses


def client_app_with(mods: list[Mod], train_handler: Callable[[Message, Context], Message] = train) -> ClientApp:
    """Stamen's ClientApp with Flower mods wrapped around every handler (Flower's extension point).

    ``train_handler`` answers ordinary train messages (benchmarks swap in synthetic updates)."""
    client_app = ClientApp(mods=mods)
    client_app.train()(train_handler)
    client_app.train(SHARE_STAGE)(secagg_share)
    client_app.train(MASK_STAGE)(secagg_mask)
    client_app.train(UNMASK_STAGE)(secagg_unmask)
    client_app.evaluate()(evaluate)
    return client_app


app = client_app_with([])
