"""The client half of secure aggregation as a Flower mod, in the manner of Flower's ``secaggplus_mod``.

The train handler always answers with the plain update (float32 at the server's rank, weighted by
its real example count), the extra uploads the run's rule declares (SCAFFOLD's control change) and
its metrics; the evaluate handler with its metrics. Under ``secure-aggregation`` this mod, wrapped
around the handlers, keeps the update, the uploads and the metric values in the node's
``Context.state`` and replies with what is public by design instead (docs/privacy.md): the client
info, public keys and metric names; a reply the handler built with any other record is refused. The
later stages (messages carrying a ``secagg`` stage record) it answers itself, without the handler.
Neither the update nor one metric value leaves the device in the clear, whatever the handler does.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from stamen.shared.protocol import (
    ARRAYS,
    CLIENT_INFO,
    CLIENT_NAME,
    FINGERPRINT,
    METRICS,
    NUM_EXAMPLES,
    Instruction,
    read_instruction,
    rule_uploads,
)
from stamen.shared.secagg_protocol import (
    CONSISTENCY_STAGE,
    MASK_STAGE,
    MASKED,
    MASKED_VECTOR,
    METRIC_NAMES,
    PEERS,
    PUBLIC_KEYS,
    REVEALED,
    SECAGG,
    SHARE_STAGE,
    SHARES,
    SIGNATURES,
    SIGNED,
    STAGE_RECORDS,
    SecAggError,
    StageInfo,
    session,
)
from stamen.shared.secure_metrics import metric_slots

from .device.log import metric_summary
from .secagg_checks import DeviceSettings
from .secure_aggregation import SecAggClient, secure_input

log = logging.getLogger(__name__)

SUMMED_DTYPE = "float32"  # the plain update the handler hands this mod: exact, never sent
SECURED = (MessageType.TRAIN, MessageType.EVALUATE)
KEPT_METRICS = "secagg-metric-slots"  # node state between stage 1 and 3: this client's metric slots


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    message_type = msg.metadata.message_type
    if message_type not in SECURED:
        return call_next(msg, context)
    if SECAGG in msg.content.config_records:  # the later stages of a secure round
        return Message(_answer_stage(msg, context), reply_to=msg)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    instruction = read_instruction(msg.content)
    if not instruction.config.privacy.secure_aggregation:
        return reply
    return Message(_keys_instead_of_values(instruction, message_type, reply.content, context), reply_to=msg)


def _keys_instead_of_values(
    instruction: Instruction, message_type: str, content: RecordDict, context: Context
) -> RecordDict:
    """Stage 1: keep the update and the rule's uploads (weighted, clipped for DP; none when evaluating) and the
    metric values on the device; reply with the client info, public keys, the metric names and an example
    count of 1 (the real weight is masked too)."""
    config = instruction.config
    uploads = rule_uploads(config) if message_type == MessageType.TRAIN else ()
    summed = (ARRAYS, *uploads) if message_type == MessageType.TRAIN else ()
    unexpected = sorted(set(content) - {CLIENT_INFO, METRICS, *summed})
    if unexpected or set(content[CLIENT_INFO]) - {FINGERPRINT, CLIENT_NAME}:
        raise SecAggError(f"the reply would carry {unexpected or 'client details'} in the clear under secure "
                          f"aggregation; nothing is sent")
    metrics = content[METRICS]
    parts = [content[name][key].numpy().astype(np.float64).ravel() for name in summed for key in content[name]]
    flat = np.concatenate(parts) if parts else np.zeros(0)
    vector = secure_input(flat, int(metrics[NUM_EXAMPLES]), config)
    values = {name: float(value) for name, value in metrics.items() if name != NUM_EXAMPLES}
    shown = logging.INFO if message_type == MessageType.TRAIN else logging.DEBUG  # a device's one line per round
    log.log(shown, "round %d %s: %s (kept on this device for the secure sum)", instruction.server_round,
            message_type, metric_summary(values) or f"{len(values)} metrics")
    context.state[KEPT_METRICS] = MetricRecord(metric_slots(values, float(vector[-1])))
    reply = RecordDict({CLIENT_INFO: content[CLIENT_INFO], METRICS: MetricRecord({NUM_EXAMPLES: 1}),
                        METRIC_NAMES: ConfigRecord({"names": sorted(values)})})
    reply[PUBLIC_KEYS] = _client(context).advertise(config, session(config.run_id, message_type),
                                                    instruction.server_round, vector)
    return reply


def _answer_stage(msg: Message, context: Context) -> RecordDict:
    client, info = _client(context), StageInfo.from_record(msg.content[SECAGG])
    if info.stage not in STAGE_RECORDS:
        raise SecAggError(f"unknown secure-aggregation stage {info.stage!r}")
    unexpected = sorted(set(msg.content) - {SECAGG, *STAGE_RECORDS[info.stage]})
    if unexpected:
        raise SecAggError(f"a {info.stage} message carries records this stage does not have: {unexpected[:5]}")
    if info.stage == SHARE_STAGE:  # encrypted shares of this client's secrets for its neighbours
        return RecordDict({SHARES: client.share_keys(info, msg.content[PEERS])})
    if info.stage == MASK_STAGE:  # the masked update, weight and metrics
        masked = client.masked_input(info, msg.content[SHARES], _kept_slots(context, info.metrics))
        return RecordDict({MASKED: ArrayRecord({MASKED_VECTOR: Array(masked)})})
    if info.stage == CONSISTENCY_STAGE:  # this client's signature of the survivor set
        return RecordDict({SIGNED: client.sign_survivors(info)})
    # the shares the server needs to unmask the sum
    return RecordDict({REVEALED: client.unmask(info, msg.content.config_records.get(SIGNATURES))})


def _kept_slots(context: Context, names: tuple[str, ...]) -> np.ndarray:
    """This client's slots for the metrics the server sums; it refuses a name it did not report (the
    server would learn a sum this client's value is missing from, or was alone in)."""
    kept = context.state.metric_records.get(KEPT_METRICS, MetricRecord())
    unknown = [name for name in names if name not in kept]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if unknown or repeated:
        raise SecAggError(f"the server asks to sum metrics this client did not report once each: "
                          f"unreported {unknown[:5]}, repeated {repeated[:5]}")
    del context.state[KEPT_METRICS]
    return np.array([float(kept[name]) for name in names], dtype=np.float64)


def _client(context: Context) -> SecAggClient:
    """This node's secure-aggregation client, with the device's own settings from its node config."""
    return SecAggClient(context.state, context.node_id, DeviceSettings.from_node_config(context.node_config))
