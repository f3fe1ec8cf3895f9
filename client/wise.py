"""The model a client uses: base + alpha x its adapter (WiSE-FT), alpha fixed by ``wise-alpha`` or, with
``wise-keep-gain``, the least alpha that keeps that share of the held-out gain (chosen on this client's own
held-out data, reported as ``wise-alpha``). Evaluation then measures this model, probes included."""

from __future__ import annotations

from stamen.shared.config import RunConfig
from stamen.shared.interpolation import interpolate_adapter, smallest_alpha_keeping, trained_deltas

from .evaluation import EvalResult
from .probes import loss_on
from .runtime import ClientRuntime


def model_in_use(
    runtime: ClientRuntime, heldout, config: RunConfig, full: EvalResult
) -> tuple[EvalResult, dict[str, float]]:
    """Set ``runtime``'s model (whose held-out result is ``full``) to the one this client uses; that model's
    held-out result and the ``wise-alpha`` metric (none without interpolation)."""
    if config.wise_keep_gain == 0 and config.wise_alpha == 1.0:
        return full, {}
    trained = trained_deltas(runtime.model)
    corrections = runtime.corrections.buffers if runtime.corrections else {}
    received = {name: buffer.clone() for name, buffer in corrections.items()}  # exact-LoRA's term scales too
    results = {1.0: full}

    def use(alpha: float) -> None:
        interpolate_adapter(runtime.model, alpha, trained)
        for name, buffer in corrections.items():
            buffer.copy_(alpha * received[name])

    def loss_at(alpha: float) -> float:
        if alpha not in results:
            use(alpha)
            results[alpha] = loss_on(runtime, heldout, config.training)
        return results[alpha].loss

    if config.wise_keep_gain > 0:
        alpha, _ = smallest_alpha_keeping(loss_at, config.wise_keep_gain)
    else:
        alpha = config.wise_alpha
        loss_at(alpha)
    use(alpha)
    return results[alpha], {"wise-alpha": alpha}
