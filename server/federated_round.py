"""One server round, as a pipeline: sample -> exchange -> admit -> fold -> write down.

Each step is one call into its module: the :class:`~stamen.server.strategy.AdapterStrategy` picks the
nodes and builds the messages, :func:`~stamen.server.message_exchange.send_and_collect` gets the replies,
:mod:`~stamen.server.admission` checks each, the :class:`~stamen.server.fold.RoundFold` turns the
admitted updates (or, under secure aggregation, their sum from
:func:`~stamen.server.secure_round.secure_sum`) into the next global adapter, and the
:class:`~stamen.server.round_ledger.RoundLedger` writes the rows. Evaluation runs the same way with
metrics only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from stamen.shared.config import RunConfig
from stamen.shared.protocol import array_bytes
from stamen.shared.secagg_identity import Roster
from stamen.shared.secagg_protocol import session
from stamen.shared.wire import encode_adapter

from .admission import Refusals, admit_evaluations, admit_key_replies, admit_updates
from .fold import RoundFold
from .message_exchange import send_and_collect
from .round_ledger import RoundLedger
from .secure_aggregation import SecureSum
from .secure_round import secure_sum
from .strategy import AdapterStrategy


@dataclass
class FederatedRound:
    """The parts a round runs through, for one run: ``instruction`` is the signed round config clients get."""

    strategy: AdapterStrategy
    fold: RoundFold
    ledger: RoundLedger
    fingerprint: str
    config: RunConfig
    instruction: ConfigRecord

    def train(self, grid: Grid, server_round: int) -> None:
        """Sample, train, and fold the replies (in the clear or as a secure sum) into the global adapter."""
        messages = list(self.strategy.configure_train(server_round, self._global_record(), self.instruction, grid))
        num_nodes = len(list(grid.get_node_ids()))
        replies = send_and_collect(grid, messages, self.config.round_timeout, f"round {server_round} training")
        started = time.perf_counter()
        if self.config.privacy.secure_aggregation:
            admitted, refused = self._admit_keys(replies, MessageType.TRAIN, server_round)
            values = self.fold.schema.num_values * (1 + len(self.fold.rule.extra_uploads))
            secure = secure_sum(grid, admitted, self.config, server_round, MessageType.TRAIN, values)
            outcome = self.fold.fold_sum(server_round, num_nodes, replies, admitted, refused, secure)
        else:
            updates, refused = admit_updates(replies, self.fingerprint, self.fold.schema, self.fold.rule.extra_uploads)
            outcome = self.fold.fold_updates(server_round, num_nodes, replies, updates, refused)
        self.ledger.write_train(server_round, len(messages), array_bytes(messages[0].content) if messages else 0,
                                outcome, time.perf_counter() - started)

    def evaluate(self, grid: Grid, server_round: int) -> None:
        """Evaluate the global adapter and write the round's row (a round ``evaluate-every`` skips writes it
        without evaluation)."""
        if not self.config.evaluates(server_round):
            self.ledger.write_evaluation(server_round, [], [])
            return
        messages = list(self.strategy.configure_evaluate(server_round, self._global_record(), self.instruction,
                                                         grid))
        replies = send_and_collect(grid, messages, self.config.round_timeout, f"round {server_round} evaluation")
        if self.config.privacy.secure_aggregation:
            admitted, refused = self._admit_keys(replies, MessageType.EVALUATE, server_round)
            secure = (secure_sum(grid, admitted, self.config, server_round, MessageType.EVALUATE, 0) if messages
                      else SecureSum({}, None, (), self.config.secure_value_range()))  # none asked: nothing to sum
            self.ledger.write_secure_evaluation(server_round, admitted, refused, secure)
        else:
            self.ledger.write_evaluation(server_round, *admit_evaluations(replies, self.fingerprint))

    def _global_record(self) -> ArrayRecord:
        """The global adapter in the wire dtype, as sent to clients."""
        return encode_adapter(self.fold.global_adapter, self.fold.schema.wire_dtype)

    def _admit_keys(self, replies: list[Message], message_type: str, server_round: int
                    ) -> tuple[dict[int, Message], Refusals]:
        """A secure sum's stage 1: the key replies admitted for this run's session of ``message_type``."""
        return admit_key_replies(replies, self.fingerprint, Roster(self.config.privacy.secagg_roster),
                                 session(self.config.run_id, message_type), server_round)
