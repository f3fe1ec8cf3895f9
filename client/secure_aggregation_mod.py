"""The client half of secure aggregation as a Flower mod, in the manner of Flower's ``secaggplus_mod``.

The train handler always answers with the plain update (float32 at the server's rank, weighted by
its real example count). Under ``secure-aggregation`` this mod, wrapped around the handlers, keeps
that update in the node's ``Context.state`` and replies with public keys instead; the later stages
(train messages carrying a ``secagg`` stage record) it answers itself, without the handler. The
update therefore never leaves the device in the clear, whatever the handler does.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from stamen.shared.protocol import ARRAYS, METRICS, NUM_EXAMPLES, Instruction, read_instruction
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
    SecAggError,
    StageInfo,
)

from .secure_aggregation import DEFAULT_MIN_THRESHOLD, SecAggClient, secure_input

MIN_THRESHOLD_KEY = "secagg-min-threshold"  # node config: the device's own least share threshold
SUMMED_DTYPE = "float32"  # the plain update the handler hands this mod: exact, never sent


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    if SECAGG in msg.content.config_records:  # stages 2-4 of a secure round
        return Message(_answer_stage(msg, context), reply_to=msg)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    instruction = read_instruction(msg.content)
    if not instruction.config.privacy.secure_aggregation:
        return reply
    return Message(_keys_instead_of_update(instruction, reply.content, context), reply_to=msg)


def _keys_instead_of_update(instruction: Instruction, content: RecordDict, context: Context) -> RecordDict:
    """Stage 1: keep the update (weighted, clipped for DP) on the device; reply with public keys,
    the metrics and the client info, and an example count of 1 (the real weight is masked too)."""
    update, metrics = content[ARRAYS], content[METRICS]
    flat = np.concatenate([update[name].numpy().astype(np.float64).ravel() for name in update])
    vector = secure_input(flat, int(metrics[NUM_EXAMPLES]), instruction.config)
    client = _client(context)
    reply = RecordDict({name: record for name, record in content.items() if name != ARRAYS})
    reply[METRICS][NUM_EXAMPLES] = 1
    reply[PUBLIC_KEYS] = client.advertise(instruction.config.run_id, instruction.server_round, vector)
    return reply


def _answer_stage(msg: Message, context: Context) -> RecordDict:
    client, info = _client(context), StageInfo.from_record(msg.content[SECAGG])
    if info.stage == SHARE_STAGE:  # encrypted shares of this client's secrets for its neighbours
        return RecordDict({SHARES: client.share_keys(info, msg.content[PEERS])})
    if info.stage == MASK_STAGE:  # the masked update
        masked = client.masked_input(info, msg.content[SHARES])
        return RecordDict({MASKED: ArrayRecord({MASKED_VECTOR: Array(masked)})})
    if info.stage == UNMASK_STAGE:  # the shares the server needs to unmask the sum
        return RecordDict({REVEALED: client.unmask(info)})
    raise SecAggError(f"unknown secure-aggregation stage {info.stage!r}")


def _client(context: Context) -> SecAggClient:
    """This node's secure-aggregation client, with the least share threshold the device accepts."""
    least = float(context.node_config.get(MIN_THRESHOLD_KEY, DEFAULT_MIN_THRESHOLD))
    return SecAggClient(context.state, context.node_id, least)
