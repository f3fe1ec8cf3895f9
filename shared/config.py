"""The run configuration: one typed schema shared by server, clients and CLI.

Inside Stamen the configuration is a frozen dataclass; at the edges (Flower run
config, ConfigRecords, TOML presets, ``--set key=value``) it is a flat mapping of
kebab-case keys, the convention of ``[tool.flwr.app.config]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .forgetting_protection import CUSTOM, owned_keys, protection_settings
from .forgetting_protection import KEY as PROTECTION_KEY
from .lora_modes import LORA_MODES, LoraMode
from .noise_range import MAX_VALUES, noise_value_range
from .user_errors import UserError

QUANTISATION_MODES = ("auto", "nf4", "int8", "none")
WIRE_DTYPES = ("float16", "float32", "int8")  # int8: 8-bit blockwise, sent up with error feedback
LR_SCHEDULES = ("constant", "linear", "cosine")
DP_MODES = ("none", "central", "distributed")
PERSONALISATIONS = ("global", "ditto", "finetune")
PARTITIONS = ("natural", "iid", "dirichlet", "pathological", "shard", "quantity", "stream", "topic-shift")
DATASET_FIELDS = ("prompt", "response", "text", "messages")  # what dataset-columns maps to a dataset's columns
REPLAY_SOURCES = ("buffer", "anchor", "self", "ewc")
BUFFER_SELECTIONS = ("reservoir", "k-centre")  # what the replay buffer keeps (client/replay/buffer.py)
REPLAY_LOSSES = ("text", "distill")  # how replayed rows are scored (shared/distillation.py)


class ConfigError(UserError, ValueError):
    """A configuration key or value is wrong; the message names which."""


def _key(name: str, default: Any, help: str) -> Any:
    """A dataclass field with its flat configuration key and what it does attached (``stamen keys`` lists them)."""
    return field(default=default, metadata={"key": name, "help": help})


@dataclass(frozen=True)
class AdapterSpec:
    """Which PEFT adapter every client trains on top of the shared base."""

    method: str = _key("adapter", "lora",
        "the PEFT adapter every client trains: lora, dora, ia3, loha, lokr, vera, adalora, prompt_tuning, ...")
    rank: int = _key("lora-rank", 8, "rank r of LoRA's A and B (and of DoRA, AdaLoRA's starting budget)")
    alpha: float = _key("lora-alpha", 16.0, "LoRA's scaling numerator: the update is alpha / r x B A")
    dropout: float = _key("lora-dropout", 0.0, "dropout on LoRA's input during training")
    targets: tuple[str, ...] = _key("lora-targets", ("q_proj", "v_proj"),
        "the modules an adapter wraps, by name (comma list in flat form)")
    aggregation: str = _key("lora-aggregation", "naive",
        "how LoRA's A and B are averaged: naive, ffa (A frozen), fedsa (A shared, B personal), exact")
    virtual_tokens: int = _key("virtual-tokens", 16, "prompt/prefix/p-tuning: learnt tokens put before the input")

    def __post_init__(self) -> None:
        _require(self.aggregation in LORA_MODES, "lora-aggregation", self.aggregation,
                 f"must be one of {sorted(LORA_MODES)}")
        mode = self.lora_mode()
        _require(mode.methods is None or self.method in mode.methods, "lora-aggregation", self.aggregation,
                 f"needs adapter {' or '.join(mode.methods or ())}, not {self.method}: {mode.methods_reason}")
        _require(self.rank >= 1, "lora-rank", self.rank, "must be >= 1")
        _require(self.alpha > 0, "lora-alpha", self.alpha, "must be > 0")
        _require(0.0 <= self.dropout < 1.0, "lora-dropout", self.dropout, "must be in [0, 1)")
        _require(len(self.targets) > 0, "lora-targets", self.targets, "must name at least one module")
        _require(self.virtual_tokens >= 1, "virtual-tokens", self.virtual_tokens, "must be >= 1")

    def lora_mode(self) -> type[LoraMode]:
        """The class of the ``lora-aggregation`` mode: what travels, and what it combines with."""
        return LORA_MODES[self.aggregation]


@dataclass(frozen=True)
class TrainingSpec:
    """How one client trains in one round."""

    local_steps: int = _key("local-steps", 6, "optimizer steps a client takes per round")
    batch_size: int = _key("batch-size", 4, "examples per step")
    grad_accum: int = _key("grad-accum", 1, "micro-batches accumulated into one step")
    learning_rate: float = _key("learning-rate", 1e-3, "AdamW's learning rate on the device")
    lr_schedule: str = _key("lr-schedule", "cosine",
        "learning-rate schedule over a round's steps: cosine, linear or constant")
    warmup_steps: int = _key("warmup-steps", 0, "steps of linear warm-up before the schedule")
    max_seq_len: int = _key("max-seq-len", 64, "tokens an example is cut to")
    eval_batch_size: int = _key("eval-batch-size", 8, "examples per forward pass when measuring a loss")

    def __post_init__(self) -> None:
        for name in ("local_steps", "batch_size", "grad_accum", "max_seq_len", "eval_batch_size"):
            value = getattr(self, name)
            _require(value >= 1, _flat_key(type(self), name), value, "must be >= 1")
        _require(self.learning_rate > 0, "learning-rate", self.learning_rate, "must be > 0")
        _require(self.warmup_steps >= 0, "warmup-steps", self.warmup_steps, "must be >= 0")
        _require(self.lr_schedule in LR_SCHEDULES, "lr-schedule", self.lr_schedule, f"must be one of {LR_SCHEDULES}")


@dataclass(frozen=True)
class ReplaySpec:
    """Forgetting protection on the device (see client/replay/hook.py): which sources, how much."""

    sources: str = _key("replay", "none",
        "forgetting protection by replay: none, or a comma list of sources (buffer, anchor, self, ewc) filling "
        "replay-ratio of every batch")
    ratio: float = _key("replay-ratio", 0.25, "share of every batch taken from replay examples")
    buffer_size: int = _key("replay-buffer-size", 256, "examples the reservoir keeps")
    buffer_bytes: int = _key("replay-buffer-bytes", 262144, "the most text (bytes) the replay buffer keeps")
    buffer_selection: str = _key("replay-buffer-selection", "reservoir",
        "what the buffer keeps: reservoir (a uniform sample) or k-centre (a core-set, client/replay/coreset.py)")
    anchor: str = _key("replay-anchor", "", "the server's anchor file (.jsonl/.csv); '': the embedded one")
    anchor_sha256: str = _key("replay-anchor-sha256", "",
        "filled in by the server: the anchor set's SHA-256, which clients verify")
    self_size: int = _key("replay-self-size", 16, "pseudo-examples the frozen base writes for self-replay")
    self_refresh: int = _key("replay-self-refresh", 5, "rounds before self-replay's examples are written afresh")
    ewc_lambda: float = _key("ewc-lambda", 1.0, "pull toward the received adapter, per Fisher-weighted parameter")
    loss: str = _key("replay-loss", "text", "replayed rows: 'text' trains on them, 'distill' on the base's view")
    distill_weight: float = _key("distill-weight", 1.0,
        "replay-loss distill: weight of the KL term against the frozen base")
    distill_temperature: float = _key("distill-temperature", 2.0,
        "replay-loss distill: temperature softening both distributions")

    def __post_init__(self) -> None:
        for source in self.enabled():
            _require(source in REPLAY_SOURCES, "replay", self.sources, f"lists sources from {REPLAY_SOURCES} (or none)")
        _require(0.0 <= self.ratio < 1.0, "replay-ratio", self.ratio, "must be in [0, 1)")
        _require(self.buffer_size >= 1, "replay-buffer-size", self.buffer_size, "must be >= 1")
        _require(self.buffer_bytes >= 1, "replay-buffer-bytes", self.buffer_bytes, "must be >= 1")
        _require(self.buffer_selection in BUFFER_SELECTIONS, "replay-buffer-selection", self.buffer_selection,
                 f"must be one of {BUFFER_SELECTIONS}")
        _require(self.self_size >= 1, "replay-self-size", self.self_size, "must be >= 1")
        _require(self.self_refresh >= 1, "replay-self-refresh", self.self_refresh, "must be >= 1")
        _require(self.ewc_lambda >= 0, "ewc-lambda", self.ewc_lambda, "must be >= 0")
        _require(self.loss in REPLAY_LOSSES, "replay-loss", self.loss, f"must be one of {REPLAY_LOSSES}")
        _require(self.loss != "distill" or bool(set(self.enabled()) - {"ewc"}), "replay-loss", self.loss,
                 "scores replayed rows: needs a source with examples (buffer, anchor or self)")
        _require(self.distill_weight > 0, "distill-weight", self.distill_weight, "must be > 0")
        _require(self.distill_temperature > 0, "distill-temperature", self.distill_temperature, "must be > 0")

    def enabled(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.sources.split(",") if part.strip() not in ("", "none"))


@dataclass(frozen=True)
class PrivacySpec:
    """Secure aggregation and differential privacy (see docs/privacy.md)."""

    secure_aggregation: bool = _key("secure-aggregation", False,
        "SecAgg+: the server learns only the sum of the round's updates and metrics")
    secagg_degree: int = _key("secagg-degree", 0, "share holders per client (0: about 2 log2 n)")
    secagg_threshold: float = _key("secagg-threshold", 0.5, "share of a client's holders needed to unmask, in [0.5, 1)")
    secagg_value_range: float = _key("secagg-value-range", 0.0,
        "largest magnitude of an encoded update value (0: 1.0, or what distributed DP's noise needs)")
    secagg_max_weight: float = _key("secagg-max-weight", 1000.0, "secure rounds: example counts above it weigh as this")
    secagg_min_weight: float = _key("secagg-min-weight", 50.0,
        "secure rounds: example counts below it weigh as this (bounds the total weight)")
    secagg_modulus_bits: int = _key("secagg-modulus-bits", 32, "bits of the ring masked values live in")
    secagg_timeout: float = _key("secagg-timeout", 600.0, "seconds a secure stage waits for replies")
    secagg_roster: tuple[str, ...] = _key("secagg-roster", (),
        "SHA-256 fingerprints of the devices' public keys (`stamen server start` fills it in from certs/nodes and"
        " the operator signs it): a device accepts only peers whose keys a listed device signed; empty: the "
        "server's word")
    secagg_min_neighbours: int = _key("secagg-min-neighbours", 1,
        "a device refuses a round giving it fewer share holders than this")
    dp: str = _key("dp", "none",
        "differential privacy: none, central (the server clips and adds noise) or distributed (clients do)")
    dp_clip: float = _key("dp-clip", 1.0, "L2 bound each update is clipped to")
    dp_noise_multiplier: float = _key("dp-noise-multiplier", 1.0, "noise standard deviation in units of dp-clip")
    dp_delta: float = _key("dp-delta", 1e-5, "delta at which epsilon is reported")
    dp_accountant: str = _key("dp-accountant", "rdp", "an Opacus accountant by name: rdp, prv or gdp")

    def __post_init__(self) -> None:
        _require(self.secagg_degree >= 0, "secagg-degree", self.secagg_degree, "must be >= 0 (0: about 2 log2 n)")
        _require(0.5 <= self.secagg_threshold < 1.0, "secagg-threshold", self.secagg_threshold,
                 "must be in [0.5, 1): a share threshold of at most half the share holders lets a server that "
                 "names a client both survived and dropped rebuild its single masked input")
        _require(self.secagg_value_range >= 0, "secagg-value-range", self.secagg_value_range,
                 "must be >= 0 (0: derived)")
        _require(self.secagg_max_weight > 0, "secagg-max-weight", self.secagg_max_weight, "must be > 0")
        _require(0 < self.secagg_min_weight <= self.secagg_max_weight, "secagg-min-weight", self.secagg_min_weight,
                 "must be in (0, secagg-max-weight]: the server refuses a secure sum below count x min / max")
        _require(
            self.secagg_modulus_bits in (32, 64), "secagg-modulus-bits", self.secagg_modulus_bits, "must be 32 or 64"
        )
        _require(self.secagg_timeout > 0, "secagg-timeout", self.secagg_timeout, "must be > 0")
        _require(all(re.fullmatch(r"[0-9a-f]{64}", entry) for entry in self.secagg_roster), "secagg-roster",
                 ",".join(self.secagg_roster)[:80], "must list SHA-256 fingerprints (64 lowercase hex digits)")
        _require(self.secagg_min_neighbours >= 1, "secagg-min-neighbours", self.secagg_min_neighbours, "must be >= 1")
        _require(self.dp in DP_MODES, "dp", self.dp, f"must be one of {DP_MODES}")
        _require(self.dp_clip > 0, "dp-clip", self.dp_clip, "must be > 0")
        _require(self.dp_noise_multiplier > 0, "dp-noise-multiplier", self.dp_noise_multiplier, "must be > 0")
        _require(0 < self.dp_delta < 1, "dp-delta", self.dp_delta, "must be in (0, 1)")
        _require(self.dp != "distributed" or self.secure_aggregation, "dp", self.dp,
                 "adds each client's share of the noise, which only hides an update inside a secure sum: "
                 "set secure-aggregation = true, or use dp = central")
        _require(self.dp != "central" or not self.secure_aggregation, "dp", self.dp,
                 "clips single updates at the server, which secure aggregation never shows it: use dp = distributed")


@dataclass(frozen=True)
class PersonalSpec:
    """The model a client keeps and uses: a personal adapter beside the global one (Ditto, fine-tuning), and
    WiSE-FT's move of the model it uses toward the base."""

    method: str = _key("personalisation", "global", "the personal model a client keeps and evaluates")
    ditto_lambda: float = _key("ditto-lambda", 0.1, "pull of Ditto's personal adapter toward the global one")
    steps: int = _key("personal-steps", 0, "ditto / finetune local steps (0: local-steps)")
    wise_alpha: float = _key("wise-alpha", 1.0, "the model a client uses: base + alpha x its adapter (WiSE-FT)")
    wise_keep_gain: float = _key("wise-keep-gain", 0.0, "> 0: each client picks the least alpha keeping this gain")
    wise_keep_retention: float = _key("wise-keep-retention", 0.0,
        "> 0: alpha at most the largest keeping this share of the base's guard facts "
        "(client/evaluation/neutral_probes.py): a model that forgets moves further to the base")

    def __post_init__(self) -> None:
        _require(self.method in PERSONALISATIONS, "personalisation", self.method, f"must be one of {PERSONALISATIONS}")
        _require(self.ditto_lambda >= 0, "ditto-lambda", self.ditto_lambda, "must be >= 0")
        _require(self.steps >= 0, "personal-steps", self.steps, "must be >= 0")
        _require(0.0 <= self.wise_alpha <= 1.0, "wise-alpha", self.wise_alpha, "must be in [0, 1]")
        _require(0.0 <= self.wise_keep_gain <= 1.0, "wise-keep-gain", self.wise_keep_gain,
                 "must be in [0, 1] (0: use wise-alpha as given)")
        _require(0.0 <= self.wise_keep_retention <= 1.0, "wise-keep-retention", self.wise_keep_retention,
                 "must be in [0, 1] (0: off)")

    def interpolates(self) -> bool:
        """Whether a client uses base + alpha x its adapter (WiSE-FT) rather than the adapter as trained."""
        return self.wise_alpha != 1.0 or self.wise_keep_gain > 0 or self.wise_keep_retention > 0


@dataclass(frozen=True)
class AttackSpec:
    """Simulation only (a device never reads these): which simulated clients attack, and how."""

    SIMULATION_ONLY: ClassVar[bool] = True

    name: str = _key("attack", "none", "simulated attack of the malicious clients (simulations/attacks)")
    fraction: float = _key("attack-fraction", 0.0, "share of the simulated clients that attack")
    options: str = _key("attack-options", "", "keyword arguments of the attack (factor=10, trigger=cf-2026)")

    def __post_init__(self) -> None:
        _require(0.0 <= self.fraction <= 1.0, "attack-fraction", self.fraction, "must be in [0, 1]")
        self.settings()  # validates the syntax early

    def settings(self) -> dict[str, float | str]:
        """``attack-options`` ("factor=10" or "trigger=cf-2026") as keyword arguments of the attack."""
        return _parse_options("attack-options", self.options, numbers_only=False)


@dataclass(frozen=True)
class DataSpec:
    """What a simulation's clients hold: which dataset, and how it is dealt out (simulations/partitions.py)."""

    SIMULATION_ONLY: ClassVar[bool] = True  # a device reads its own --data

    dataset: str = _key("dataset", "", "'': the embedded corpus; else a local Hugging Face datasets source")
    columns: str = _key("dataset-columns", "", "'prompt=question,response=answer' (or text=, messages=)")
    partition: str = _key("partition", "natural", "how a simulation deals data to clients")
    partition_by: str = _key("partition-by", "", "the column natural/dirichlet/pathological/shard read")
    alpha: float = _key("partition-alpha", 0.5, "Dirichlet concentration (dirichlet, quantity)")
    options: str = _key("partition-options", "", "more keyword arguments of the flwr-datasets partitioner")
    stream_stages: int = _key("stream-stages", 3, "partition stream / topic-shift: stages data arrives in")

    def __post_init__(self) -> None:
        _require(self.partition in PARTITIONS, "partition", self.partition, f"must be one of {PARTITIONS}")
        _require(self.alpha > 0, "partition-alpha", self.alpha, "must be > 0")
        _require(self.stream_stages >= 1, "stream-stages", self.stream_stages, "must be >= 1")
        self.partitioner_options()
        self.column_names()

    def column_names(self) -> dict[str, str]:
        """``dataset-columns`` ("prompt=question,response=answer") as field -> column, the rest by their names."""
        columns = dict(zip(DATASET_FIELDS, DATASET_FIELDS, strict=True))
        for item in filter(None, (part.strip() for part in self.columns.split(","))):
            name, sep, column = (part.strip() for part in item.partition("="))
            _require(bool(sep) and name in DATASET_FIELDS and bool(column), "dataset-columns", item,
                     f"must be field=column with field one of {DATASET_FIELDS}")
            columns[name] = column
        return columns

    def partitioner_options(self) -> dict[str, float | str]:
        """``partition-options`` ("num_classes_per_partition=2") as keyword arguments of the partitioner."""
        options = _parse_options("partition-options", self.options, numbers_only=False)
        return {name: int(value) if isinstance(value, float) and value.is_integer() else value
                for name, value in options.items()}


@dataclass(frozen=True)
class RunConfig:
    """Everything a federation run needs; clients receive it from the server."""

    base_model: str = _key("base-model", "smollm2-135m",
        "the shared base: smollm2-135m (embedded), gemma3-270m, a model folder, a .gguf file or a hub id")
    quantisation: str = _key("quantisation", "auto",
        "how a client holds the base: auto (measured: the most compact within +10% perplexity), nf4, int8, none")
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    replay: ReplaySpec = field(default_factory=ReplaySpec)
    wire_dtype: str = _key("wire-dtype", "float16",
        "dtype of an update on the wire: float16, float32 or int8 (blockwise, with error feedback)")
    aggregation: str = _key("aggregation", "fedavg",
        "the server's rule (server/rules): fedavg, fedprox, fedadam, scaffold, median, krum, bulyan, fltrust, ...")
    aggregation_options: str = _key("aggregation-options", "",
        "keyword arguments of the rule (server_lr=0.01,momentum=0.9)")
    max_client_weight: float = _key("max-client-weight", 0.0, "a client's example count caps here (0: 4 x median)")
    proximal_mu: float = _key("proximal-mu", 0.0, "FedProx: pull of local training toward the received adapter")
    client_ranks: str = _key("client-ranks", "",
        "LoRA ranks given to simulated clients in turn (8,4,2; empty: all use lora-rank; lora-aggregation exact)")
    personal: PersonalSpec = field(default_factory=PersonalSpec)
    keep_optimizer_state: bool = _key("keep-optimizer-state", False, "AdamW's moments carried to the next round")
    forgetting_protection: str = _key("forgetting-protection", CUSTOM,
        "how the run protects what the base knew: custom (the replay and WiSE keys as set), none, default, or a "
        "named protection that sets them (shared/forgetting_protection.py)")
    data: DataSpec = field(default_factory=DataSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    num_rounds: int = _key("num-server-rounds", 3, "rounds the server runs")
    fraction_train: float = _key("fraction-train", 1.0, "share of the connected clients sampled to train each round")
    fraction_evaluate: float = _key("fraction-evaluate", 1.0, "share sampled to evaluate (0: no evaluation)")
    evaluate_every: int = _key("evaluate-every", 1, "evaluate every n-th round, and always the last")
    forgetting_probes: bool = _key("forgetting-probes", True, "off: evaluation measures held-out data only")
    probe_every: int = _key("probe-every", 1, "the probes on every n-th evaluated round, and always the last")
    min_clients: int = _key("min-clients", 2, "clients a round waits for before it starts")
    round_timeout: float = _key("round-timeout", 3600.0, "seconds a round waits for replies")
    seed: int = _key("seed", 0, "one seed for adapter init, data order, partitions and client sampling")
    run_dir: str = _key("run-dir", "runs", "folder runs are written under")
    run_id: str = _key("run-id", "", "the run's folder name under run-dir ('': a new one)")
    tensorboard: bool = _key("tensorboard", False, "metrics also as TensorBoard event files in the run folder")
    resume: bool = _key("resume", False, "continue run-id from its last checkpoint")
    operator_signature: str = _key("operator-signature", "", "the operator's over all other keys (deployments)")

    def __post_init__(self) -> None:
        _require(self.quantisation in QUANTISATION_MODES, "quantisation", self.quantisation,
                 f"must be one of {QUANTISATION_MODES}")
        _require(self.wire_dtype in WIRE_DTYPES, "wire-dtype", self.wire_dtype, f"must be one of {WIRE_DTYPES}")
        _require(self.num_rounds >= 1, "num-server-rounds", self.num_rounds, "must be >= 1")
        _require(0.0 < self.fraction_train <= 1.0, "fraction-train", self.fraction_train, "must be in (0, 1]")
        _require(0.0 <= self.fraction_evaluate <= 1.0, "fraction-evaluate", self.fraction_evaluate, "must be in [0, 1]")
        _require(self.evaluate_every >= 1, "evaluate-every", self.evaluate_every, "must be >= 1")
        _require(self.probe_every >= 1, "probe-every", self.probe_every, "must be >= 1")
        _require(self.min_clients >= 1, "min-clients", self.min_clients, "must be >= 1")
        _require(self.round_timeout > 0, "round-timeout", self.round_timeout, "must be > 0")
        _require(self.proximal_mu >= 0, "proximal-mu", self.proximal_mu, "must be >= 0")
        _require(self.max_client_weight >= 0, "max-client-weight", self.max_client_weight,
                 "must be >= 0 (0: four times the round's median example count)")
        personal = self.personal.method
        _require(personal == "global" or self.adapter.lora_mode().personal_models, "personalisation", personal,
                 f"cannot be combined with lora-aggregation {self.adapter.aggregation}, whose adapter already has a "
                 "personal part")
        _require(not self.personal.interpolates() or self.adapter.method in ("lora", "ia3"),
                 "adapter", self.adapter.method, "has no exact interpolation toward the base: wise-alpha, "
                 "wise-keep-gain and wise-keep-retention work with lora and ia3")
        if self.privacy.dp == "distributed" and self.privacy.secagg_value_range > 0:
            needed = self.noise_value_range()
            _require(self.privacy.secagg_value_range >= needed, "secagg-value-range", self.privacy.secagg_value_range,
                     f"would truncate distributed-DP noise (fixed-point encoding clips to the range): dp-clip "
                     f"{self.privacy.dp_clip} plus the noise share of min-clients = {max(2, self.min_clients)} "
                     f"clients needs >= {needed:.4g}; set it to 0 (derived) or raise it")
        if self.privacy.secure_aggregation:
            _require(self.adapter.lora_mode().secure_sums, "secure-aggregation", True,
                     f"yields only the sum of updates; lora-aggregation {self.adapter.aggregation} needs each "
                     "client's B and A")
        self.rule_options()  # validates the syntax early
        self.simulated_client_ranks()

    def evaluates(self, server_round: int) -> bool:
        """Whether ``server_round`` ends with an evaluation: every ``evaluate-every``-th round and the last."""
        return server_round % self.evaluate_every == 0 or server_round == self.num_rounds

    def probes(self, server_round: int) -> bool:
        """Whether the evaluation of ``server_round`` runs the forgetting probes (they cost more than held-out
        data): every ``probe-every``-th round and the last, unless ``forgetting-probes`` is off."""
        return self.forgetting_probes and (server_round % self.probe_every == 0 or server_round == self.num_rounds)

    def secure_value_range(self) -> float:
        """The range every securely summed value is declared to lie in (both sides compute it from the config):
        ``secagg-value-range``, or when it is 0, 1.0 without DP and under distributed DP the least range
        that does not truncate the noise of ``min-clients`` clients (see :mod:`.noise_range`)."""
        if self.privacy.secagg_value_range > 0:
            return self.privacy.secagg_value_range
        if self.privacy.dp == "distributed":
            return self.noise_value_range()
        return 1.0

    def noise_value_range(self, num_clients: int | None = None, num_values: int = MAX_VALUES) -> float:
        """The value range distributed DP's noise needs with ``num_clients`` (default: ``min-clients``, at least 2)."""
        privacy = self.privacy
        return noise_value_range(privacy.dp_clip, privacy.dp_noise_multiplier,
                                 num_clients or max(2, self.min_clients), num_values)

    def simulated_client_ranks(self) -> tuple[int, ...]:
        """``client-ranks`` ("8,4,2"): LoRA ranks given to simulated clients in turn (empty: all use lora-rank)."""
        try:
            ranks = tuple(int(part) for part in self.client_ranks.split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"configuration key 'client-ranks' = {self.client_ranks!r} must list integers") from None
        for rank in ranks:
            _require(
                1 <= rank <= self.adapter.rank, "client-ranks", rank, f"must be in [1, lora-rank={self.adapter.rank}]"
            )
        if any(rank < self.adapter.rank for rank in ranks):
            _require(self.adapter.method == "lora", "client-ranks", self.client_ranks, "needs adapter lora")
            _require(self.adapter.lora_mode().lower_client_ranks, "client-ranks", self.client_ranks,
                     f"cannot be combined with lora-aggregation {self.adapter.aggregation} (A is frozen at the "
                     "server's rank)")
        return ranks

    def rule_options(self) -> dict[str, float]:
        """``aggregation-options`` ("server_lr=0.01,momentum=0.9") as keyword arguments of the rule."""
        return _parse_options("aggregation-options", self.aggregation_options, numbers_only=True)

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """The flat kebab-case mapping used by Flower records and the CLI."""
        return _flatten(self)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> RunConfig:
        """Parse a flat mapping; unknown keys are an error unless listed in ``ignore``."""
        defaults = _flatten(cls())
        unknown = sorted(set(values) - set(defaults) - set(ignore))
        if unknown:
            raise ConfigError(unknown_keys_message(unknown, defaults))
        return _build(cls, protection_settings({k: v for k, v in values.items() if k in defaults}, defaults))

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with flat kebab-case keys overridden, validated like any other input (another
        ``forgetting-protection`` first clears the keys the current one set)."""
        flat = self.to_flat()
        if PROTECTION_KEY in overrides:
            defaults = _flatten(RunConfig())
            flat.update({key: defaults[key] for key in owned_keys(self.forgetting_protection)})
        return RunConfig.from_flat({**flat, **overrides})


def unknown_keys_message(unknown: list[str], known: Mapping[str, Any]) -> str:
    """One line naming each unknown key with the closest known one (a typo's fix), never the whole list."""
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        named.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"unknown configuration key {', '.join(named)}; `stamen keys` lists every key"


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` command-line override, with TOML-like literals."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    number = _number(raw)
    return key, raw.strip("\"'") if number is None else number


def _number(text: str) -> int | float | None:
    """An int or a finite float written in ``text``; None for anything else ("nan" is a word here)."""
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else None
    return None


def _parse_options(key: str, text: str, numbers_only: bool) -> dict[str, float | str]:
    options: dict[str, float | str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"configuration key '{key}' item {item!r} must be name=value")
        number = _number(value.strip())
        if number is None and numbers_only:
            raise ConfigError(f"configuration key '{key}' item {item!r} must be name=number")
        options[name.strip()] = value.strip() if number is None else float(number)
    return options


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"configuration key '{key}' = {value!r} {rule}")


def _flat_key(cls: type, attribute: str) -> str:
    return next(f.metadata["key"] for f in dataclasses.fields(cls) if f.name == attribute)


def _flatten(obj: Any) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(_flatten(value))
        elif isinstance(value, tuple):
            flat[f.metadata["key"]] = ",".join(value)
        else:
            flat[f.metadata["key"]] = value
    return flat


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, values)
        elif f.metadata["key"] in values:
            kwargs[f.name] = _coerce(f.metadata["key"], values[f.metadata["key"]], hint)
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    if hint is bool or (hint in (int, float) and isinstance(value, bool)):
        if not isinstance(value, bool) or hint is not bool:
            raise ConfigError(f"configuration key '{key}' = {value!r} must be a {hint.__name__}")
        return value
    if hint is float and isinstance(value, int | float):
        return float(value)
    if hint is int and isinstance(value, int):
        return value
    if hint is str and isinstance(value, str):
        return value
    if typing.get_origin(hint) is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(item.strip() for item in items if str(item).strip())
    raise ConfigError(f"configuration key '{key}' = {value!r} must be a {getattr(hint, '__name__', hint)}")
