"""What a client measures: the loss on its held-out data, the forgetting probes of the model it uses and of
the base alone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from stamen.shared.adapters import adapter_state, base_alone
from stamen.shared.cache import cache_dir, cached_json, cached_json_parts, keep_newest
from stamen.shared.config import TrainingSpec
from stamen.shared.metrics import BASELINE_SECONDS, GENERAL_TEXT_LOSS, HELDOUT_LOSS, RETENTION
from stamen.shared.protocol import HELDOUT_EXAMPLES

from ..hooks import TrainingHook, TrainingRound
from ..loaded_base import ClientRuntime
from .forgetting import NEUTRAL
from .loss import EvalResult, evaluate_loss
from .neutral_probes import fact_outcomes, general_text, probe_version

MODEL_PROBES_KEPT = 512  # cached probe results of adapters: two files each, the newest kept
ANSWERED = "answered"  # the retention probe's cached answers, fact by fact


def loss_on(runtime: ClientRuntime, examples, training: TrainingSpec) -> EvalResult:
    """The model's loss on ``examples`` as it stands (global or personal adapter)."""
    return evaluate_loss(
        runtime.model, runtime.base.tokenizer, list(examples), training.max_seq_len, training.eval_batch_size
    )


def base_alone_losses(runtime: ClientRuntime, training: TrainingSpec) -> dict[str, float]:
    """The loss probes for the frozen base with every adapter disabled: what the base could do (round 0). The same
    for every client and run on this base: measured once per base, probe and length, then read from the cache."""
    def measure() -> dict[str, float]:
        with base_alone(runtime.model):
            return {NEUTRAL: loss_on(runtime, general_text(), training).loss}

    return cached_json(_cache_file("base-alone", [runtime.base.fingerprint, runtime.base.quantisation.mode,
                                                  training.max_seq_len]), measure)


def base_loss_file(runtime: ClientRuntime, examples, training: TrainingSpec) -> Path:
    """Where the frozen base's loss on ``examples`` is kept: the same in every round of a client whose examples
    stay the same, so measured once per base and examples."""
    return _cache_file("base-loss", [runtime.base.fingerprint, runtime.base.quantisation.mode, training.max_seq_len,
                                     [dataclasses.asdict(example) for example in examples]])


@dataclasses.dataclass(frozen=True)
class ModelProbes:
    """The probes of the model a client uses: the metrics it reports, and which known facts it still answers
    (kept on the device, by question)."""

    metrics: dict[str, float]
    answered: dict[str, bool]


def model_probes(runtime: ClientRuntime, training: TrainingSpec) -> ModelProbes:
    """``general-text-loss`` and ``retention`` of the model as it stands (adapters on). Clients holding the same
    adapter (every client of a global-model run, every client before round 1) get the same numbers: each probe
    is measured once per adapter, by whichever client asks first while another measures the other one, then read
    from the cache."""
    def general_text_loss() -> dict:
        return {GENERAL_TEXT_LOSS.name: loss_on(runtime, general_text(), training).loss}

    def retained() -> dict:
        answered = fact_outcomes(runtime.model, runtime.base.tokenizer, runtime.known_facts())
        return {RETENTION.name: sum(answered.values()) / len(answered), ANSWERED: answered} if answered else {}

    adapter = hashlib.sha256()  # everything that shapes the model's outputs beyond the base: adapter, corrections
    corrections = runtime.corrections.buffers if runtime.corrections else {}
    for name, tensor in [*sorted(adapter_state(runtime.model).items()), *sorted(corrections.items())]:
        adapter.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    key = [runtime.base.fingerprint, runtime.base.quantisation.mode, training.max_seq_len, adapter.hexdigest()]
    probed = cached_json_parts({_cache_file("model-retention", key): retained,
                                _cache_file("model-general-text", key): general_text_loss})
    keep_newest(cache_dir("probes"), "model-*.json", MODEL_PROBES_KEPT)
    parts = {name: value for part in probed.values() for name, value in part.items()}
    answered = parts.pop(ANSWERED, {})
    return ModelProbes(parts, answered)


def _cache_file(kind: str, key: list) -> Path:
    """The file a probe result for ``key`` and these probe files is cached in."""
    digest = hashlib.sha256(json.dumps([*key, probe_version()]).encode()).hexdigest()[:24]
    return cache_dir("probes") / f"{kind}-{digest}.json"


class RoundZeroBaseline(TrainingHook):
    """Losses of the initial global adapter, measured once (round 1) as the run's round-0 baseline;
    a run that never evaluates skips it."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> RoundZeroBaseline | None:
        config = training_round.config
        return cls() if training_round.setup.server_round == 1 and config.fraction_evaluate > 0 else None

    def before_training(self, training_round: TrainingRound) -> None:
        started = time.perf_counter()
        runtime, data = training_round.setup.runtime, training_round.setup.data
        training = training_round.config.training
        training_round.metrics.update({HELDOUT_EXAMPLES: len(data.heldout),
                                       HELDOUT_LOSS.initial_name: loss_on(runtime, data.heldout, training).loss})
        if training_round.config.forgetting_probes:
            # every PEFT adapter starts as the identity: round 0 on the probe is the base's own (cached per base)
            training_round.metrics[GENERAL_TEXT_LOSS.initial_name] = base_alone_losses(runtime, training)[NEUTRAL]
        training_round.metrics[BASELINE_SECONDS.name] = time.perf_counter() - started
