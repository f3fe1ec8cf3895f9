"""Forgetting, measured on the device after every evaluation.

- ``forgetting``: base-domain loss of the model this client uses minus the base's own
  (round 0: every adapter starts as the identity), > 0 when personalising cost general skill;
- ``forgetting-vs-best``: the same against the lowest of round 0 and this client's earlier rounds;
- ``backward-transfer`` (stream partitions): over the earlier stages of the client's data,
  the mean of (loss on stage j when its training ended - loss on it now), < 0 when newer
  stages erased older ones (Lopez-Paz & Ranzato 2017, on losses).

The history these need is this client's own and stays in its state store.
"""

from __future__ import annotations

from collections.abc import Callable

from .state_store import ClientStateStore

HISTORY = "forgetting-history"


def forgetting_metrics(
    store: ClientStateStore,
    server_round: int,
    base_domain_loss: float,
    base_alone_loss: Callable[[], float],
    stage: int | None = None,
    stage_losses: dict[int, float] | None = None,
) -> dict[str, float]:
    """The metrics for ``server_round``'s evaluation; records it in the client's history.

    ``base_alone_loss`` (the base-domain loss with every adapter disabled) is called once per client."""
    history = store.load_document(HISTORY, server_round) or {"base-alone": base_alone_loss(), "rounds": []}
    earlier = [row["base-domain"] for row in history["rounds"]]
    metrics = {
        "forgetting": base_domain_loss - history["base-alone"],
        "forgetting-vs-best": base_domain_loss - min([history["base-alone"], *earlier]),
    }
    row = {"round": server_round, "base-domain": base_domain_loss}
    if stage is not None and stage_losses is not None:
        ended = {}  # stage -> its loss at the last evaluation while it was being trained
        for past in history["rounds"]:
            if "stage" in past:
                ended[past["stage"]] = past["stage-losses"][str(past["stage"])]
        finished = [j for j in range(stage) if j in ended]
        if finished:
            metrics["backward-transfer"] = sum(ended[j] - stage_losses[j] for j in finished) / len(finished)
        row.update({"stage": stage, "stage-losses": {str(j): loss for j, loss in stage_losses.items()}})
    history["rounds"].append(row)
    store.save_document(HISTORY, server_round, history)
    return metrics
