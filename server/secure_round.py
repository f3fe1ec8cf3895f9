"""The exchanges of a secure sum after its stage 1, as Flower messages; the sum goes back to the round.

Stage 1 is the round's ordinary ``train`` (or ``evaluate``) message: clients train, then advertise
keys and name their metrics, and the round admits the key replies. The later stages are messages of
the same type carrying a ``secagg`` record, which the ClientApp's secure-aggregation mod answers:
shares, masked inputs, (under a roster) signatures of the survivor set, and the revealed shares. A
client that errors or does not answer a stage within ``secagg-timeout`` counts as dropped at that
stage; the sum goes on as long as every needed secret can be rebuilt.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from stamen.shared.config import RunConfig
from stamen.shared.protocol import record_bytes
from stamen.shared.secagg_identity import Roster
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
    UNMASK_STAGE,
    SecAggError,
    session,
)
from stamen.shared.secure_metrics import common_names

from .admission import ARRAY_HEADER_BYTES
from .message_exchange import send_and_collect
from .secure_aggregation import SecAggAborted, SecAggSettings, SecureAggregator, SecureSum

log = logging.getLogger(__name__)


def secure_sum(
    grid: Grid, admitted: dict[int, Message], config: RunConfig, server_round: int, message_type: str,
    num_values: int,
) -> SecureSum:
    """The later stages among the clients whose keys were ``admitted``; the sum of ``num_values`` update values,
    the weight and the metrics they all named, or an aborted result."""
    privacy, timeout = config.privacy, config.privacy.secagg_timeout
    keys = {node: msg.content[PUBLIC_KEYS] for node, msg in admitted.items()}
    names = common_names(tuple(msg.content[METRIC_NAMES]["names"]) for msg in admitted.values())
    bytes_up = {node: record_bytes(msg.content[PUBLIC_KEYS]) + record_bytes(msg.content[METRIC_NAMES])
                for node, msg in admitted.items()}  # every secure-aggregation record sent

    def stage(name: str, requests: dict[int, RecordDict], record: str, step: Callable[[int, object], None]) -> None:
        """One exchange: each reply's ``record`` applied by ``step``; whatever a reply makes the server raise drops
        that client at this stage, never the round."""
        for node, content in _exchange(grid, message_type, name, requests, server_round, timeout).items():
            sent = content.get(record)
            if _apply(server_round, name, node, lambda: step(node, sent)):  # noqa: B023 (called at once)
                bytes_up[node] += record_bytes(sent)

    try:
        settings = SecAggSettings(privacy.secagg_degree, privacy.secagg_threshold, privacy.secagg_modulus_bits)
        aggregator = SecureAggregator(session(config.run_id, message_type), server_round, keys,
                                      num_values + 1 + len(names), settings,
                                      random.Random(f"{config.seed}/{server_round}/{message_type}"), names,
                                      Roster(privacy.secagg_roster))
        stage(SHARE_STAGE, {node: RecordDict({SECAGG: info.to_record(), PEERS: peers})
                            for node, (info, peers) in aggregator.share_requests().items()}, SHARES,
              aggregator.add_shares)
        stage(MASK_STAGE, {node: RecordDict({SECAGG: info.to_record(), SHARES: shares})
                           for node, (info, shares) in aggregator.mask_requests().items()}, MASKED,
              lambda node, masked: aggregator.add_masked(node, _vector(masked, aggregator.length,
                                                                       aggregator.codec.dtype)))
        if aggregator.roster:
            stage(CONSISTENCY_STAGE, {node: RecordDict({SECAGG: info.to_record()})
                                      for node, info in aggregator.consistency_requests().items()}, SIGNED,
                  aggregator.add_signature)
        revealed: dict[int, ConfigRecord] = {}
        stage(UNMASK_STAGE, {node: RecordDict({SECAGG: info.to_record(),
                                               **({SIGNATURES: signatures} if signatures is not None else {})})
                             for node, (info, signatures) in aggregator.unmask_requests().items()}, REVEALED,
              lambda node, record: revealed.__setitem__(node, _revealed(record)))
        total = aggregator.finish(revealed)
    except SecAggAborted as reason:
        log.warning("round %d: secure %s aborted, nothing of it is used: %s", server_round, message_type, reason)
        return SecureSum({}, None, names, config.secure_value_range())
    survivors = {node: bytes_up[node] for node in aggregator.masked}
    log.info("round %d: secure %s sum of %d of %d clients (threshold %d, %d neighbours each)", server_round,
             message_type, len(survivors), len(admitted), aggregator.threshold,
             len(next(iter(aggregator.graph.values()))))
    return SecureSum(survivors, total, names, config.secure_value_range(), aggregator.codec.sum_error_bound)


def _exchange(
    grid: Grid, message_type: str, stage: str, contents: dict[int, RecordDict], server_round: int, timeout: float
) -> dict[int, RecordDict]:
    """Send one stage's messages; return the content of every reply without an error, by node."""
    # messages whose secagg record names the stage: the ClientApp's secure-aggregation mod answers them
    messages = [Message(content, dst_node_id=node, message_type=message_type)
                for node, content in contents.items()]
    answered, failed = {}, set()
    for reply in send_and_collect(grid, messages, timeout, f"round {server_round} secure {message_type}, {stage}"):
        node = reply.metadata.src_node_id
        if reply.has_error():
            failed.add(node)
            log.warning("round %d: node %s dropped at %s: %s", server_round, node, stage, reply.error.reason)
        else:
            answered[node] = reply.content
    for node in sorted(set(contents) - set(answered) - failed):
        log.warning("round %d: node %s did not answer %s within %.0f s", server_round, node, stage, timeout)
    return answered


def _apply(server_round: int, stage: str, node: int, step: Callable[[], None]) -> bool:
    """Apply one client's stage reply; whatever its bytes make the server raise drops that client, not the round."""
    try:
        step()
    except Exception as reason:  # the client chose every byte of its reply
        log.warning("round %d: node %s dropped at %s: %s: %s", server_round, node, stage, type(reason).__name__,
                    str(reason)[:200])
        return False
    return True


def _revealed(record: object) -> ConfigRecord:
    if not isinstance(record, ConfigRecord):
        raise SecAggError("reply carries no revealed shares")
    return record


def _vector(record: ArrayRecord | None, length: int, dtype: np.dtype) -> np.ndarray:
    """The masked vector of a stage-3 reply, its size checked before its payload is decoded."""
    if not isinstance(record, ArrayRecord) or MASKED_VECTOR not in record:
        raise SecAggError("reply carries no masked vector")
    if record.count_bytes() > length * np.dtype(dtype).itemsize + ARRAY_HEADER_BYTES:
        raise SecAggError(f"masked vector of {record.count_bytes()} bytes is larger than {length} values")
    return record[MASKED_VECTOR].numpy()
