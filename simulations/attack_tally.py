"""A simulation's count of malicious updates: how many were sent, and how many shaped the global adapter.

Malicious simulated clients flag themselves in their metrics (``malicious``); the server
never acts on the flag, this extension (installed only by the simulation engine) counts it.
"""

from __future__ import annotations

from flwr.app import Message

from stamen.server.admission import client_name
from stamen.server.extensions import RoundOutcome, ServerExtension
from stamen.shared.metrics import MALICIOUS
from stamen.shared.protocol import METRICS


class AttackTally(ServerExtension):
    def round_metrics(self, outcome: RoundOutcome) -> dict[str, int]:
        malicious = {client_name(m) for m in outcome.replies if _flagged(m)}
        if not malicious:
            return {}
        accepted = {client_name(m) for m in outcome.replies if any(m.content is c for c in outcome.accepted)}
        admitted = malicious & accepted
        chosen = outcome.rule.chosen_clients() if outcome.rule.count else set()  # None: every admitted update
        return {"malicious_replied": len(malicious),
                "malicious_admitted": len(admitted if chosen is None else admitted & chosen)}


def _flagged(msg: Message) -> bool:
    if msg.has_error() or METRICS not in msg.content.metric_records:
        return False
    return bool(msg.content[METRICS].get(MALICIOUS.name))
