"""Personalisation inside an app, without the CLI: the shared base with this device's adapter.

``PersonalModel`` loads the base (quantised where the device allows), attaches an
adapter (fresh, or a PEFT folder such as ``stamen export`` writes, plus the personal
part a device kept from federated rounds), trains it on the app's own examples,
and generates, scores and exports with the personalised model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from stamen.shared.adapters import adapter_parameters, attach_adapter, load_adapter_state
from stamen.shared.base_model import LoadedBase, load_base
from stamen.shared.config import AdapterSpec, ReplaySpec, RunConfig, TrainingSpec
from stamen.shared.device_data import as_example
from stamen.shared.distillation import Distillation
from stamen.shared.examples import Example
from stamen.shared.gguf_adapter import write_lora_gguf
from stamen.shared.interpolation import interpolate_adapter, smallest_alpha_keeping, trained_deltas
from stamen.shared.training import TrainResult, train_adapter

from .evaluation.generation import generate_answer
from .evaluation.loss import evaluate_loss
from .evaluation.neutral_probes import known_facts
from .replay.buffer import ReplayBuffer
from .replay.self_replay import self_replay_examples
from .state_store import PERSONAL, ClientStateStore
from .wise import retention_capped

REPLAY = ReplaySpec()  # a federation client's defaults: a quarter of each batch, at most 256 examples / 256 KiB


class PersonalModel:
    """A base model and the adapter that personalises it on this device."""

    def __init__(
        self, base: LoadedBase, model: torch.nn.Module, max_seq_len: int = 128, trainable: bool = True
    ) -> None:
        self.base, self.model, self.max_seq_len, self.trainable = base, model, max_seq_len, trainable
        self._trained: dict[str, torch.Tensor] | None = None  # the adapter as trained, once interpolated
        self.replay_buffer = ReplayBuffer(REPLAY.buffer_size, REPLAY.buffer_bytes)  # what earlier calls taught
        self.alpha = 1.0  # the share of the adapter in use (interpolate, choose_alpha)
        self.calls = 0  # personalise calls so far: self-replay writes a new draw every few

    @classmethod
    def load(
        cls,
        base: str = "smollm2-135m",
        adapter: str | Path | None = None,
        personal_state: str | Path | None = None,
        quantisation: str = "auto",
        spec: AdapterSpec = AdapterSpec(),
        device: str | None = None,
        seed: int = 0,
        trainable: bool = True,
    ) -> PersonalModel:
        """``base``: alias, hub id, folder or .gguf. ``adapter``: a PEFT folder to continue from (else a
        fresh ``spec`` adapter). ``personal_state``: a device's state folder whose latest personal part
        (e.g. ``fedsa``'s B) is laid over the adapter. ``trainable=False``: an app that only generates and
        scores lets bitsandbytes use its inference-only CPU kernels; :meth:`personalise` then refuses."""
        loaded = load_base(base, quantisation, device, trainable)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(loaded.model, str(adapter), is_trainable=True)
        else:
            model = attach_adapter(loaded.model, spec, seed)
        if personal_state is not None:
            personal = ClientStateStore(Path(personal_state)).load(PERSONAL, before_round=2**31)
            if personal:
                load_adapter_state(model, personal, partial=True)
        return cls(loaded, model, trainable=trainable)

    def personalise(
        self, examples: Iterable[object], steps: int = 20, learning_rate: float = 1e-3, batch_size: int = 4,
        seed: int = 0, forgetting_protection: str = "default", heldout: Iterable[object] | None = None,
        keep_gain: float | None = 0.9, keep_retention: float | None = 0.9,
    ) -> TrainResult:
        """Train the adapter on ``examples`` (prompt/response or text mappings, strings, or Examples).

        Forgetting protection is on by default: ``forgetting_protection`` names it as a federation's
        ``forgetting-protection`` does (``shared/forgetting_protection.py``): ``"default"`` is the federation's
        default, ``"none"`` turns it off, and a named one (``"buffer"``: the examples of earlier calls, a bounded
        sample in memory; ``"self-replay"``: the base's own answers to neutral prompts, written once per base and
        cached; ``"self-replay-wise-50"``, the default: that, and half of the adapter in use; ``"wise-25"``: a quarter
        of the adapter in use) is that one. Given ``heldout`` examples of the
        device's own (not trained on), the model then moves toward the base to the least alpha that keeps
        ``keep_gain`` of the adapter's gain on them (:meth:`choose_alpha`, ``self.alpha``; ``keep_gain=None``:
        off), and further where the model would no longer answer ``keep_retention`` of the base's guard facts
        (``None``: no bound)."""
        if not self.trainable:
            raise ValueError("this model was loaded with trainable=False (inference only): "
                             "load it with trainable=True to personalise it")
        protection = RunConfig().replace(**{"forgetting-protection": forgetting_protection})
        spec = TrainingSpec(local_steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                            max_seq_len=self.max_seq_len)
        new = [as_example(e) for e in examples]
        self.calls += 1
        rehearsed = self._replayed(protection.replay)
        distillation = Distillation(protection.replay.distill_weight, protection.replay.distill_temperature) \
            if rehearsed and protection.replay.loss == "distill" else None
        result = train_adapter(self.model, self.base.tokenizer, new, spec, seed, replay=rehearsed,
                               replay_ratio=protection.replay.ratio if rehearsed else 0.0, distillation=distillation)
        self.replay_buffer.add(new)
        self._trained, self.alpha = None, 1.0  # interpolation now starts from this training
        if protection.personal.wise_alpha != 1.0:
            self.interpolate(protection.personal.wise_alpha)
        if heldout is not None and keep_gain:
            self.choose_alpha(heldout, keep_gain, keep_retention)
        return result

    def _replayed(self, spec: ReplaySpec) -> list[Example]:
        """This call's replay under ``spec``: earlier calls' examples (``buffer``), the base's own answers (``self``,
        a new draw every ``replay-self-refresh`` calls); a source that needs a server is refused by name."""
        sources = set(spec.enabled())
        unserved = sorted(sources - {"buffer", "self"})
        if unserved:
            raise ValueError(f"an app's personalisation replays its earlier examples or the base's own answers, "
                             f"not {unserved} (they need a federation)")
        replayed = list(self.replay_buffer.items) if "buffer" in sources else []
        if "self" in sources:
            replayed += self_replay_examples(self.model, self.base.tokenizer,
                                             f"{self.base.fingerprint}/{self.base.quantisation.mode}", self.calls,
                                             "app", spec.self_size, spec.self_refresh)
        return replayed

    def interpolate(self, alpha: float) -> None:
        """Use base + ``alpha`` x the adapter as personalised (WiSE-FT): 1 is the adapter as trained, 0 the base
        alone. Each call starts from the trained adapter; :meth:`export` writes the model in use."""
        if self._trained is None:
            self._trained = trained_deltas(self.model)
        interpolate_adapter(self.model, alpha, self._trained)
        self.alpha = alpha

    def choose_alpha(
        self, heldout: Iterable[object], keep_gain: float = 0.9, keep_retention: float | None = None
    ) -> float:
        """Interpolate to the least alpha that keeps ``keep_gain`` of the adapter's gain on ``heldout`` (this
        device's own examples, not trained on): the model closest to the base that keeps most of what
        personalisation bought; with ``keep_retention``, lowered further to the largest alpha at which it still
        answers that share of the base's guard facts (asked of the base once per base, then cached). Returns
        alpha."""
        examples = [as_example(e) for e in heldout]

        def loss_at(alpha: float) -> float:
            self.interpolate(alpha)
            return self.score(examples)

        alpha, _ = smallest_alpha_keeping(loss_at, keep_gain)
        if keep_retention:
            guard = known_facts(self.model, self.base.tokenizer, self.base.fingerprint,
                                self.base.quantisation.mode)[1]
            alpha, _ = retention_capped(self.model, self.base.tokenizer, guard, alpha, keep_retention,
                                        self.interpolate)
        self.interpolate(alpha)
        return alpha

    def score(self, examples: Iterable[object]) -> float:
        """Mean loss per scored token on ``examples`` (lower: the model expects them more)."""
        return evaluate_loss(self.model, self.base.tokenizer, [as_example(e) for e in examples],
                             self.max_seq_len, batch_size=8).loss

    def generate(self, prompt: str, max_new_tokens: int = 48) -> str:
        """The personalised model's answer to ``prompt`` (greedy)."""
        return generate_answer(self.model, self.base.tokenizer, prompt, max_new_tokens)

    def export(self, folder: str | Path, format: str = "peft") -> Path:
        """``peft``: a PEFT folder, ``PeftModel.from_pretrained(base, folder)`` or ``PersonalModel.load(adapter=
        folder)``; ``gguf``: ``folder/adapter.gguf``, a LoRA adapter llama.cpp loads beside the base's GGUF.
        Returns what it wrote."""
        if format == "gguf":
            return write_lora_gguf(self.model, Path(folder) / "adapter.gguf")
        if format != "peft":
            raise ValueError(f"unknown export format {format!r}: 'peft' or 'gguf'")
        self.model.peft_config["default"].base_model_name_or_path = str(self.base.folder)
        self.model.save_pretrained(str(folder))
        return Path(folder)

    @property
    def trainable_values(self) -> int:
        return sum(p.numel() for p in adapter_parameters(self.model).values())
