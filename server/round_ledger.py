"""What a server round writes down: one row per client reply, one row per round, and the log lines.

The round hands the ledger what its train half came to (the fold's
:class:`~stamen.server.fold.FoldOutcome`, with how many nodes it asked and what it sent each) and
then what its evaluation came to; the ledger writes the client rows as it gets them and the round's
row once its evaluation (or the decision to skip it) is known, through the
:class:`~stamen.server.run_record.RunRecorder`.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Message, MetricRecord

from stamen.shared.metrics import GENERAL_TEXT_LOSS, HELDOUT_LOSS, INITIAL_PREFIX, RETENTION, eval_mean, train_mean

from .admission import Refusals, client_name
from .fold import FoldOutcome
from .reply_metrics import client_metrics, mean_metrics
from .run_record import RunRecorder
from .secure_aggregation import SecureSum

log = logging.getLogger(__name__)


class RoundLedger:
    """Rows and log lines, one round at a time: the train half is kept until the round's row is written."""

    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder
        self._train_summary: dict[str, Any] = {}

    def write_train(self, server_round: int, sampled: int, bytes_down: int, outcome: FoldOutcome, seconds: float
                    ) -> None:
        """The train half, of a round that sent ``bytes_down`` bytes of arrays to each of ``sampled`` nodes: a row
        per reply, and the round's traffic, mean train metrics, round-0 losses and extension columns kept for its
        row; ``seconds`` the aggregation took."""
        self._refuse(server_round, "train", outcome.refused)
        self._drop(server_round, outcome.dropped)
        for msg, columns in outcome.accepted:
            self._accept(server_round, "train", msg, {**columns, "bytes_down": bytes_down})
        accepted, per_client = len(outcome.accepted), outcome.bytes_up_per_client
        traffic = {
            "clients_sampled": sampled,
            "clients_replied": len(outcome.replies),
            "clients_without_reply": sampled - len(outcome.replies),
            "clients_dropped": len(outcome.dropped),
            "clients_rejected": len(outcome.refused),
            "bytes_in": per_client * accepted,
            "bytes_out": bytes_down * sampled,
            "aggregation_seconds": round(seconds, 4),
        }
        dropped = f"{len(outcome.dropped)} dropped out of the secure round, " if outcome.dropped else ""
        log.info("round %d: %d sampled, %d replied, %d without reply, %s%d rejected, %d aggregated; "
                 "%d bytes in, %d bytes out; aggregation %.3f s", server_round, traffic["clients_sampled"],
                 traffic["clients_replied"], traffic["clients_without_reply"], dropped, traffic["clients_rejected"],
                 accepted, traffic["bytes_in"], traffic["bytes_out"], traffic["aggregation_seconds"])
        self._train_summary = {
            **traffic,
            "clients_accepted": accepted,
            **({"aggregate_refused": outcome.refused_aggregate} if outcome.refused_aggregate else {}),
            "bytes_up_per_client": per_client,
            "bytes_down_per_client": bytes_down,
            **{train_mean(k): v for k, v in outcome.metrics.items() if not k.startswith(INITIAL_PREFIX)},
            **outcome.initial,
            **outcome.extension_metrics,
        }

    def write_evaluation(self, server_round: int, admitted: list[Message], refused: Refusals) -> None:
        """A plain evaluation (none, in a round ``evaluate-every`` skips): a row per reply, then the round's row
        with the admitted replies' mean metrics."""
        self._refuse(server_round, "evaluate", refused)
        for msg in admitted:
            self._accept(server_round, "evaluate", msg, client_metrics(msg))
        self._write_round(server_round, mean_metrics([msg.content for msg in admitted]), len(admitted))

    def write_secure_evaluation(self, server_round: int, admitted: dict[int, Message], refused: Refusals,
                                secure: SecureSum) -> None:
        """A secure evaluation: a row per client (no metrics), then the round's row with the survivors' means."""
        self._refuse(server_round, "evaluate", refused)
        for node, msg in admitted.items():
            if secure.total is not None and node in secure.survivors:
                self._accept(server_round, "evaluate", msg, {})
            else:
                self._refuse(server_round, "evaluate", [(msg, "dropped out of the secure evaluate"
                                                         if secure.total is not None else "secure evaluation aborted")])
        means = secure.parts(0)[3] if secure.total is not None else {}
        self._write_round(server_round, MetricRecord(means) if means else None, len(secure.survivors))

    def _write_round(self, server_round: int, metrics: MetricRecord | None, evaluated: int) -> None:
        """The round's row: its train summary and the mean evaluation ``metrics`` of ``evaluated`` clients."""
        means = {eval_mean(k): v for k, v in (metrics or {}).items()}
        summary = {"kind": "round", "round": server_round, **self._train_summary, "clients_evaluated": evaluated,
                   **means}
        self._train_summary = {}
        self.recorder.write(summary)
        log.info("round %d: held-out loss %s, general-text loss %s, retention %s, %d clients trained, "
                 "%d evaluated, %d bytes up per client", server_round,
                 _shown(summary.get(HELDOUT_LOSS.eval_mean), ".4f"),
                 _shown(summary.get(GENERAL_TEXT_LOSS.eval_mean), ".4f"),
                 _shown(summary.get(RETENTION.eval_mean), ".0%"),
                 summary.get("clients_accepted", 0), evaluated, summary.get("bytes_up_per_client", 0))

    def _accept(self, server_round: int, phase: str, msg: Message, columns: dict[str, Any]) -> None:
        self.recorder.write({**_row(server_round, phase, msg), "client": client_name(msg), **columns,
                             "accepted": True})

    def _drop(self, server_round: int, dropped: Refusals) -> None:
        """Clients that replied, then left the secure round before its sum: gone, not refused."""
        for msg, reason in dropped:
            log.warning("round %d: node %s %s", server_round, msg.metadata.src_node_id, reason)
            self.recorder.write({**_row(server_round, "train", msg), "accepted": False, "dropped": True,
                                 "reason": reason})

    def _refuse(self, server_round: int, phase: str, refused: Refusals) -> None:
        for msg, reason in refused:
            log.warning("round %d: rejected %s reply from node %s: %s", server_round, phase,
                        msg.metadata.src_node_id, reason)
            self.recorder.write({**_row(server_round, phase, msg), "accepted": False, "reason": reason})


def _row(server_round: int, phase: str, msg: Message) -> dict[str, Any]:
    return {"kind": "client", "phase": phase, "round": server_round, "node": msg.metadata.src_node_id}


def _shown(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)
