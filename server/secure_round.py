"""One training round under secure aggregation, as four Flower message exchanges.

Stage 1 is Flower's ordinary ``train`` message (clients train, then advertise keys);
stages 2-4 are ``train.secagg_*`` messages routed to the ClientApp's handlers. A
client that errors or does not answer (training within ``round-timeout``, each
later stage within ``secagg-timeout``) counts as dropped at that stage; the round goes on
as long as every needed secret can be rebuilt.
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
    PEERS,
    PUBLIC_KEYS,
    REVEALED,
    SECAGG,
    SHARE_STAGE,
    SHARES,
    UNMASK_STAGE,
    SecAggError,
    distributed_noise_std,
)

from .admission import ARRAY_HEADER_BYTES
from .exchange import send_and_collect
from .secure_aggregation import SecAggAborted, SecAggSettings, SecureAggregator
from .strategy import AdapterStrategy

log = logging.getLogger(__name__)


def run_secure_train_round(
    grid: Grid, strategy: AdapterStrategy, instruction: ConfigRecord, config: RunConfig, server_round: int
) -> None:
    """Train, mask, and unmask one round; the strategy sees only the sum of the survivors' updates."""
    privacy, timeout, value_range = config.privacy, config.privacy.secagg_timeout, config.secure_value_range()
    train = strategy.configure_train(server_round, strategy.global_record(), instruction, grid)
    admitted = strategy.admit_key_replies(server_round, send_and_collect(grid, train, config.round_timeout))
    keys = {node: msg.content[PUBLIC_KEYS] for node, msg in admitted.items()}
    bytes_up = {node: record.count_bytes() for node, record in keys.items()}  # every secure-aggregation record sent
    try:
        noise = 0.0
        if privacy.dp == "distributed":
            needed = config.noise_value_range(len(keys), strategy.schema.num_values)
            if len(keys) >= 2 and needed > value_range:
                raise SecAggAborted(f"the noise shares of the {len(keys)} clients that advertised keys need a value "
                                    f"range of {needed:.4g}, more than the run's {value_range:.4g}: "
                                    f"they would be truncated")
            noise = distributed_noise_std(privacy.dp_noise_multiplier, privacy.dp_clip, value_range, len(keys))
        settings = SecAggSettings(privacy.secagg_degree, privacy.secagg_threshold, privacy.secagg_modulus_bits)
        aggregator = SecureAggregator(
            config.run_id,
            server_round,
            keys,
            strategy.schema.num_values + 1,
            settings,
            noise,
            random.Random(f"{config.seed}/{server_round}"),
        )
        requests = {node: RecordDict({SECAGG: info.to_record(), PEERS: peers})
                    for node, (info, peers) in aggregator.share_requests().items()}
        for node, content in _exchange(grid, SHARE_STAGE, requests, server_round, timeout).items():
            if _apply(server_round, SHARE_STAGE, node, lambda: aggregator.add_shares(node, content[SHARES])):  # noqa: B023 (called at once)
                bytes_up[node] += content[SHARES].count_bytes()
        requests = {node: RecordDict({SECAGG: info.to_record(), SHARES: shares})
                    for node, (info, shares) in aggregator.mask_requests().items()}
        for node, content in _exchange(grid, MASK_STAGE, requests, server_round, timeout).items():
            masked = content.array_records.get(MASKED)
            if _apply(server_round, MASK_STAGE, node,
                      lambda: aggregator.add_masked(node, _vector(masked, aggregator.length, aggregator.codec.dtype))):  # noqa: B023 (called at once)
                bytes_up[node] += masked.count_bytes()
        requests = {node: RecordDict({SECAGG: info.to_record()}) for node, info in aggregator.unmask_requests().items()}
        revealed = {node: content[REVEALED] for node, content in
                    _exchange(grid, UNMASK_STAGE, requests, server_round, timeout).items() if REVEALED in content}
        for node, record in revealed.items():
            bytes_up[node] += record.count_bytes()
        total = aggregator.finish(revealed)
    except SecAggAborted as reason:
        log.warning("round %d: secure aggregation aborted, the global adapter is unchanged: %s", server_round, reason)
        strategy.aggregate_secure_sum(server_round, admitted, {}, None)
        return
    survivors = {node: bytes_up[node] for node in aggregator.masked}
    log.info("round %d: secure sum of %d of %d clients (threshold %d, %d neighbours each)", server_round,
             len(survivors), len(admitted), aggregator.threshold, len(next(iter(aggregator.graph.values()))))
    strategy.aggregate_secure_sum(server_round, admitted, survivors, total, value_range,
                                  aggregator.codec.sum_error_bound)


def _exchange(
    grid: Grid, stage: str, contents: dict[int, RecordDict], server_round: int, timeout: float
) -> dict[int, RecordDict]:
    """Send one stage's messages; return the content of every reply without an error, by node."""
    # train messages whose secagg record names the stage: the ClientApp's secure-aggregation mod answers them
    messages = [Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
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
