"""The model a client uses: base + alpha x its adapter (WiSE-FT), alpha fixed by ``wise-alpha`` or chosen on
this client: with ``wise-keep-gain``, the least alpha that keeps that share of its held-out gain; with
``wise-keep-retention``, at most the largest alpha at which the model still answers that share of the base's
guard facts (known facts that are never the measured ones). Reported as ``wise-alpha``; evaluation then
measures this model, probes included."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict

from stamen.shared.cache import cached_json
from stamen.shared.config import RunConfig
from stamen.shared.interpolation import (
    interpolate_adapter,
    largest_alpha_retaining,
    smallest_alpha_keeping,
    trained_deltas,
)
from stamen.shared.metrics import WISE_ALPHA, WISE_GUARD_FACTS, WISE_GUARD_RETENTION, WISE_SECONDS

from .evaluation.loss import EvalResult
from .evaluation.neutral_probes import Fact, retention
from .evaluation.probes import base_loss_file, loss_on
from .loaded_base import ClientRuntime

log = logging.getLogger(__name__)


def model_in_use(
    runtime: ClientRuntime, heldout, config: RunConfig, full: EvalResult
) -> tuple[EvalResult, dict[str, float]]:
    """Set ``runtime``'s model (whose held-out result is ``full``) to the one this client uses; that model's
    held-out result and its metrics: ``wise-alpha``, ``wise-seconds`` (what choosing alpha cost: the held-out
    passes and guard questions of its rules), and with a retention rule ``wise-guard-retention`` (none without
    interpolation)."""
    if not config.personal.interpolates():
        return full, {}
    started = time.perf_counter()
    trained = trained_deltas(runtime.model)
    corrections = runtime.corrections.buffers if runtime.corrections else {}
    received = {name: buffer.clone() for name, buffer in corrections.items()}  # exact-LoRA's term scales too
    metrics: dict[str, float] = {}

    def use(alpha: float) -> None:
        interpolate_adapter(runtime.model, alpha, trained)
        for name, buffer in corrections.items():
            buffer.copy_(alpha * received[name])

    def measured_at(alpha: float) -> EvalResult:
        use(alpha)
        return loss_on(runtime, heldout, config.training)

    results = {1.0: full}

    def base() -> EvalResult:  # alpha 0: measured once for these examples, then read
        return EvalResult(**cached_json(base_loss_file(runtime, heldout, config.training),
                                        lambda: asdict(measured_at(0.0))))

    def loss_at(alpha: float) -> float:
        if alpha not in results:
            results[alpha] = base() if alpha == 0.0 else measured_at(alpha)
        return results[alpha].loss

    alpha = smallest_alpha_keeping(loss_at, config.personal.wise_keep_gain)[0] if config.personal.wise_keep_gain > 0 \
        else config.personal.wise_alpha
    if config.personal.wise_keep_retention > 0:
        guard = runtime.guard_facts()
        metrics[WISE_GUARD_FACTS.name] = len(guard)
        alpha, retained = retention_capped(runtime.model, runtime.base.tokenizer, guard, alpha,
                                           config.personal.wise_keep_retention, use)
        if retained is not None:
            metrics[WISE_GUARD_RETENTION.name] = retained
    metrics[WISE_SECONDS.name] = time.perf_counter() - started  # the choice; a fixed alpha costs none
    loss_at(alpha)  # the model in use, measured as every run measures its own (here, unless the choice did)
    use(alpha)
    return results[alpha], {WISE_ALPHA.name: alpha, **metrics}


def retention_capped(
    model, tokenizer, guard: list[Fact], alpha: float, keep: float, use: Callable[[float], None]
) -> tuple[float, float | None]:
    """``alpha``, lowered to the largest alpha at which the model (set by ``use``) still answers ``keep`` of
    the ``guard`` facts, and the retention there. A base that knows no guard facts cannot cap it: alpha
    stands, retention is None, and the log says so."""
    if not guard:
        log.warning("wise-keep-retention: the base answers none of the guard questions, so retention cannot "
                    "limit alpha; alpha %s stands", alpha)
        return alpha, None

    def retention_at(candidate: float) -> float:
        use(candidate)
        return retention(model, tokenizer, guard)

    capped, retained = largest_alpha_retaining(retention_at, keep, at_most=alpha)
    return capped, retained.get(capped, 1.0)  # alpha 0 is the base: all it knew
