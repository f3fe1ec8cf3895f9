"""A server round's parts without a grid: replies handed in directly, as a test builds them."""

from collections.abc import Sequence

import numpy as np
from flwr.app import ConfigRecord, Message

from stamen.server.admission import admit_evaluations, admit_updates
from stamen.server.extensions import ServerExtension
from stamen.server.federated_round import FederatedRound
from stamen.server.fold import RoundFold
from stamen.server.round_ledger import RoundLedger
from stamen.server.rules import AggregationRule, make_rule
from stamen.server.run_record import RunRecorder
from stamen.server.strategy import AdapterStrategy
from stamen.shared.config import PrivacySpec, RunConfig
from stamen.shared.wire import AdapterSchema, decode_adapter, encode_adapter


def plain_round(folder, initial: dict[str, np.ndarray], fingerprint: str, wire_dtype: str = "float16",
                rule: AggregationRule | None = None, extensions: Sequence[ServerExtension] = (),
                privacy: PrivacySpec = PrivacySpec(), max_client_weight: float = 0.0,
                config: RunConfig | None = None) -> FederatedRound:
    """A round writing its rows to ``folder``, starting from ``initial``."""
    config = config or RunConfig()
    rule = rule or make_rule("fedavg")
    rule.initialise(initial)
    fold = RoundFold(initial, AdapterSchema.from_state(initial, wire_dtype), rule, extensions, privacy,
                     max_client_weight)
    return FederatedRound(AdapterStrategy(rule, extensions, wire_dtype), fold,
                          RoundLedger(RunRecorder(folder, config, {})), fingerprint, config, ConfigRecord())


def new_global(rounds: FederatedRound, replies: list[Message], server_round: int = 1) -> dict[str, np.ndarray]:
    """The global adapter (as clients receive it, in the wire dtype) after a plain train round of ``replies``:
    :meth:`FederatedRound.train`'s steps after the exchange."""
    fold = rounds.fold
    updates, refused = admit_updates(replies, rounds.fingerprint, fold.schema, fold.rule.extra_uploads)
    outcome = fold.fold_updates(server_round, len(replies), replies, updates, refused)
    rounds.ledger.write_train(server_round, len(replies), 0, outcome, 0.0)
    return decode_adapter(encode_adapter(fold.global_adapter, fold.schema.wire_dtype), fold.schema)


def evaluation(rounds: FederatedRound, replies: list[Message], server_round: int = 1) -> None:
    """A plain evaluation of ``replies``: :meth:`FederatedRound.evaluate`'s steps after the exchange."""
    rounds.ledger.write_evaluation(server_round, *admit_evaluations(replies, rounds.fingerprint))
