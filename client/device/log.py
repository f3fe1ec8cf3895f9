"""What a deployed device prints about the messages it answers: one line per round it trains in, a person can follow
rounds by; every message's line (evaluations, secure-aggregation stages) with ``--verbose``."""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import Message, MessageType

from stamen.shared.metrics import HELDOUT_LOSS, PERSONAL_HELDOUT_LOSS, TRAIN_LOSS, TRAIN_STEPS
from stamen.shared.protocol import CONFIG, METRICS, SERVER_ROUND
from stamen.shared.secagg_protocol import PUBLIC_KEYS, SECAGG

SHOWN = tuple(metric.name for metric in (TRAIN_STEPS, TRAIN_LOSS, HELDOUT_LOSS, PERSONAL_HELDOUT_LOSS))


def metric_summary(metrics: Mapping[str, float]) -> str:
    """The few numbers a person watches: steps and losses."""
    return ", ".join(f"{key} {metrics[key]:.4g}" for key in SHOWN if key in metrics)


def describe(message: Message, reply: Message, seconds: float) -> str:
    """Round, message (and secure-aggregation stage), the device's numbers, bytes sent and seconds."""
    stage = message.content.config_records.get(SECAGG)
    config = message.content.config_records.get(CONFIG)
    source = stage if stage is not None else config  # both name the round under SERVER_ROUND
    server_round = source.get(SERVER_ROUND, "?") if source is not None else "?"
    what = f"round {server_round} {message.metadata.message_type}" + (f" {stage['stage']}" if stage else "")
    if reply.has_error():
        return f"{what}: error {reply.error.reason}"
    metrics = reply.content.metric_records.get(METRICS)
    numbers = metric_summary(metrics) if metrics else ""
    sent = sum(record.count_bytes() for record in reply.content.values())
    return f"{what}: {numbers + ', ' if numbers else ''}{sent:,} bytes up, {seconds:.1f} s"


def is_round_line(message: Message, reply: Message) -> bool:
    """Whether the line of ``message`` is shown without ``--verbose``: a plain round's training, or any error. A
    secure round's training is shown by the secure-aggregation mod, the one stage that has its numbers."""
    if reply.has_error():
        return True
    return (message.metadata.message_type == MessageType.TRAIN and SECAGG not in message.content.config_records
            and PUBLIC_KEYS not in reply.content)
