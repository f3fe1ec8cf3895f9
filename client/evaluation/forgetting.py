"""Forgetting, measured on the device after every evaluation.

- ``forgetting``: general-text loss (``neutral_probes.py``: human prose no client or replay source
  touches) of the model this client uses minus the base's own (round 0: every adapter starts as the
  identity), > 0 when personalising cost general skill;
- ``forgetting-vs-best``: the same against the lowest of round 0 and this client's earlier rounds;
- ``<probe>-forgetting`` for any other loss probe measured the same way;
- ``backward-transfer`` (stream partitions): over the earlier stages of the client's data,
  the mean of (loss on stage j when its training ended - loss on it now), < 0 when newer
  stages erased older ones (Lopez-Paz & Ranzato 2017, on losses).

The history these need (the base's own losses, measured once, and every round's) is this client's own and
stays in its state store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stamen.shared.metrics import BACKWARD_TRANSFER, FORGETTING, FORGETTING_VS_BEST

from ..state_store import ClientStateStore

HISTORY = "forgetting-history"
NEUTRAL = "general-text"  # the probe `forgetting` is measured on


def forgetting_metrics(
    store: ClientStateStore,
    server_round: int,
    losses: Mapping[str, float],
    base_alone_losses: Callable[[], Mapping[str, float]],
    stage: int | None = None,
    stage_losses: dict[int, float] | None = None,
    answered: dict[str, bool] | None = None,
) -> dict[str, float]:
    """The metrics for ``server_round``'s evaluation from ``losses`` (probe name -> loss of the model the client
    uses; :data:`NEUTRAL` is the one ``forgetting`` means); records them, and which known facts the model still
    ``answered`` (by question), in the client's history.

    ``base_alone_losses`` (the same probes with every adapter disabled) is called once per client."""
    history = store.load_document(HISTORY, server_round) or {"base-alone": dict(base_alone_losses()), "rounds": []}
    base = history["base-alone"]
    earlier = [row["losses"][NEUTRAL] for row in history["rounds"]]
    metrics = {
        FORGETTING.name: losses[NEUTRAL] - base[NEUTRAL],
        FORGETTING_VS_BEST.name: losses[NEUTRAL] - min([base[NEUTRAL], *earlier]),
    }
    row: dict = {"round": server_round, "losses": dict(losses), **({"answered": answered} if answered else {})}
    if stage is not None and stage_losses is not None:
        ended = {}  # stage -> its loss at the last evaluation while it was being trained
        for past in history["rounds"]:
            if "stage" in past:
                ended[past["stage"]] = past["stage-losses"][str(past["stage"])]
        finished = [j for j in range(stage) if j in ended]
        if finished:
            metrics[BACKWARD_TRANSFER.name] = sum(ended[j] - stage_losses[j] for j in finished) / len(finished)
        row.update({"stage": stage, "stage-losses": {str(j): loss for j, loss in stage_losses.items()}})
    history["rounds"].append(row)
    store.save_document(HISTORY, server_round, history)
    return metrics
