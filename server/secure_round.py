"""One training round under secure aggregation, as four Flower message exchanges.

Stage 1 is Flower's ordinary ``train`` message (clients train, then advertise keys and name
their metrics); stages 2-4 are ``train`` messages carrying a ``secagg`` record, which the
ClientApp's secure-aggregation mod answers. The round's evaluation runs the same four stages on
``evaluate`` messages, summing metrics only. A client that errors or does not answer (training
within ``round-timeout``, each later stage within ``secagg-timeout``) counts as dropped at that
stage; the sum goes on as long as every needed secret can be rebuilt.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from stamen.shared.config import RunConfig
from stamen.shared.secagg_protocol import (
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
    UNMASK_STAGE,
    SecAggError,
    distributed_noise_std,
    session,
)
from stamen.shared.secure_metrics import common_names

from .admission import ARRAY_HEADER_BYTES
from .exchange import send_and_collect
from .secure_aggregation import SecAggAborted, SecAggSettings, SecureAggregator, SecureSum
from .strategy import AdapterStrategy

log = logging.getLogger(__name__)


def run_secure_train_round(
    grid: Grid, strategy: AdapterStrategy, instruction: ConfigRecord, config: RunConfig, server_round: int
) -> None:
    """Train, mask, and unmask one round; the strategy sees only the sum of the survivors' updates and metrics."""
    train = strategy.configure_train(server_round, strategy.global_record(), instruction, grid)
    admitted = strategy.admit_key_replies(server_round, send_and_collect(grid, train, config.round_timeout))
    num_values = strategy.schema.num_values
    secure = _secure_sum(grid, admitted, config, server_round, MessageType.TRAIN, num_values,
                         lambda clients: _noise_share(config, clients, num_values))
    strategy.aggregate_secure_sum(server_round, admitted, secure)


def run_secure_evaluation(
    grid: Grid, strategy: AdapterStrategy, instruction: ConfigRecord, config: RunConfig, server_round: int
) -> None:
    """Evaluate the global adapter; the strategy sees only the weighted sums of the survivors' metrics."""
    evaluate = list(strategy.configure_evaluate(server_round, strategy.global_record(), instruction, grid))
    replies = send_and_collect(grid, evaluate, config.round_timeout)
    admitted = strategy.admit_key_replies(server_round, replies, MessageType.EVALUATE)
    secure = (_secure_sum(grid, admitted, config, server_round, MessageType.EVALUATE, 0, lambda clients: 0.0)
              if evaluate else SecureSum({}, None, (), config.secure_value_range()))  # none asked: nothing to sum
    strategy.aggregate_secure_evaluation(server_round, admitted, secure)


def _noise_share(config: RunConfig, num_clients: int, num_values: int) -> float:
    """Distributed DP: each client's noise share, in encoded units; 0 without it."""
    privacy, value_range = config.privacy, config.secure_value_range()
    if privacy.dp != "distributed":
        return 0.0
    needed = config.noise_value_range(num_clients, num_values)
    if num_clients >= 2 and needed > value_range:
        raise SecAggAborted(f"the noise shares of the {num_clients} clients that advertised keys need a value "
                            f"range of {needed:.4g}, more than the run's {value_range:.4g}: they would be truncated")
    return distributed_noise_std(privacy.dp_noise_multiplier, privacy.dp_clip, value_range, num_clients)


def _secure_sum(
    grid: Grid, admitted: dict[int, Message], config: RunConfig, server_round: int, message_type: str,
    num_values: int, noise_share: Callable[[int], float],
) -> SecureSum:
    """Stages 2-4 among the clients whose keys were ``admitted``; the sum of ``num_values`` update values,
    the weight and the metrics they all named, or an aborted result."""
    privacy, timeout = config.privacy, config.privacy.secagg_timeout
    keys = {node: msg.content[PUBLIC_KEYS] for node, msg in admitted.items()}
    names = common_names(tuple(msg.content[METRIC_NAMES]["names"]) for msg in admitted.values())
    bytes_up = {node: msg.content[PUBLIC_KEYS].count_bytes() + msg.content[METRIC_NAMES].count_bytes()
                for node, msg in admitted.items()}  # every secure-aggregation record sent
    try:
        settings = SecAggSettings(privacy.secagg_degree, privacy.secagg_threshold, privacy.secagg_modulus_bits)
        aggregator = SecureAggregator(
            session(config.run_id, message_type),
            server_round,
            keys,
            num_values + 1 + len(names),
            settings,
            noise_share(len(keys)),
            random.Random(f"{config.seed}/{server_round}/{message_type}"),
            names,
        )
        requests = {node: RecordDict({SECAGG: info.to_record(), PEERS: peers})
                    for node, (info, peers) in aggregator.share_requests().items()}
        for node, content in _exchange(grid, message_type, SHARE_STAGE, requests, server_round, timeout).items():
            if _apply(server_round, SHARE_STAGE, node, lambda: aggregator.add_shares(node, content[SHARES])):  # noqa: B023 (called at once)
                bytes_up[node] += content[SHARES].count_bytes()
        requests = {node: RecordDict({SECAGG: info.to_record(), SHARES: shares})
                    for node, (info, shares) in aggregator.mask_requests().items()}
        for node, content in _exchange(grid, message_type, MASK_STAGE, requests, server_round, timeout).items():
            masked = content.array_records.get(MASKED)
            if _apply(server_round, MASK_STAGE, node,
                      lambda: aggregator.add_masked(node, _vector(masked, aggregator.length, aggregator.codec.dtype))):  # noqa: B023 (called at once)
                bytes_up[node] += masked.count_bytes()
        requests = {node: RecordDict({SECAGG: info.to_record()}) for node, info in aggregator.unmask_requests().items()}
        revealed = {node: content[REVEALED] for node, content in
                    _exchange(grid, message_type, UNMASK_STAGE, requests, server_round, timeout).items()
                    if REVEALED in content}
        for node, record in revealed.items():
            bytes_up[node] += record.count_bytes()
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
    for reply in send_and_collect(grid, messages, timeout):
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


def _vector(record: ArrayRecord | None, length: int, dtype: np.dtype) -> np.ndarray:
    """The masked vector of a stage-3 reply, its size checked before its payload is decoded."""
    if not isinstance(record, ArrayRecord) or MASKED_VECTOR not in record:
        raise SecAggError("reply carries no masked vector")
    if record.count_bytes() > length * np.dtype(dtype).itemsize + ARRAY_HEADER_BYTES:
        raise SecAggError(f"masked vector of {record.count_bytes()} bytes is larger than {length} values")
    return record[MASKED_VECTOR].numpy()
