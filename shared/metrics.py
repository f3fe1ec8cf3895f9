"""Every number a client reports, declared once: its wire name, what it means, and the columns it becomes.

A client puts a metric in a reply's ``metrics`` record under its wire name (``heldout-loss``). The server's rows
(metrics.jsonl) name it by where it came from: a client row by :attr:`Metric.column` (``heldout_loss``), a round
row by the mean over the round's train replies (:attr:`Metric.train_mean`) or evaluate replies
(:attr:`Metric.eval_mean`, ``eval_heldout_loss``), and a round-0 baseline by :attr:`Metric.initial`. Code that
writes or reads a metric names its declaration here, never the string; a new metric is one line below.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

INITIAL_PREFIX = "initial-"  # metrics of the initial global adapter, reported in round 1


@dataclass(frozen=True)
class Metric:
    """A number a client reports in its ``metrics`` record."""

    name: str  # the wire name, kebab-case
    help: str

    @property
    def column(self) -> str:
        """The column of a client's row."""
        return column(self.name)

    @property
    def train_mean(self) -> str:
        """The round row's column: the example-weighted mean over the accepted train replies."""
        return train_mean(self.name)

    @property
    def eval_mean(self) -> str:
        """The round row's column: the example-weighted mean over the accepted evaluate replies."""
        return eval_mean(self.name)

    @property
    def initial_name(self) -> str:
        """The wire name of this metric measured on the initial global adapter (round 0), reported in round 1."""
        return INITIAL_PREFIX + self.name

    @property
    def initial(self) -> str:
        """The column of the round-0 baseline (weighted by held-out size, as evaluation weights it)."""
        return column(self.initial_name)


# Reported by a train reply (the weight by both).
WEIGHT = Metric("num-examples", "examples behind a reply (trained on, or held out): the weight of its mean "
                                "(Flower's key)")
BASELINE_WEIGHT = Metric("heldout-examples", "held-out examples the round-0 losses were measured on: their weight")
EXAMPLES_SEEN = Metric("examples-seen", "examples the round's local steps drew, replayed ones included")
TRAIN_LOSS = Metric("train-loss", "mean training loss of the round's local steps")
TRAIN_STEPS = Metric("train-steps", "optimizer steps taken")
TRAIN_FLAT_STEPS = Metric("train-flat-steps", "steps whose update moved nothing (counted; a round of only these is "
                                              "an error)")
TRAIN_TOKENS = Metric("train-tokens", "tokens trained on")
TRAIN_SECONDS = Metric("train-seconds", "seconds of local training")
REPLAY_SECONDS = Metric("replay-seconds", "seconds spent building the round's replay examples")
REPLAY_EXAMPLES = Metric("replay-examples", "replay examples mixed into the round's batches")

# Reported by an evaluate reply.
HELDOUT_LOSS = Metric("heldout-loss", "loss of the global adapter on the client's held-out examples")
HELDOUT_PPL = Metric("heldout-ppl", "perplexity of the same")
PERSONAL_HELDOUT_LOSS = Metric("personal-heldout-loss", "loss of the model the client uses (its personal adapter, "
                                                        "WiSE-FT's interpolation) on its held-out examples")
PERSONAL_GAIN = Metric("personal-gain", "held-out loss of the global adapter minus the personal model's")
PERSONAL_TRAIN_SECONDS = Metric("personal-train-seconds", "seconds of training the personal adapter (Ditto, "
                                                          "fine-tuning)")
EVAL_SECONDS = Metric("eval-seconds", "seconds of the evaluation")
CURRENT_STAGE_HELDOUT_LOSS = Metric("current-stage-heldout-loss", "topic-shift clients: held-out loss on the stage "
                                                                  "being trained")
PAST_STAGE_HELDOUT_LOSS = Metric("past-stage-heldout-loss", "topic-shift clients: mean held-out loss on the earlier "
                                                            "stages")
GENERAL_TEXT_LOSS = Metric("general-text-loss", "loss on the neutral general-text probe (what the base could do)")
RETENTION = Metric("retention", "share of the probe facts the base answered that the model still answers")
FORGETTING = Metric("forgetting", "general-text loss minus the base's own")
FORGETTING_VS_BEST = Metric("forgetting-vs-best", "general-text loss minus the best of the base's and the "
                                                  "client's earlier rounds'")
BACKWARD_TRANSFER = Metric("backward-transfer", "topic-shift clients: mean change of loss on finished stages since "
                                                "each ended (negative: forgotten)")
WISE_ALPHA = Metric("wise-alpha", "the share of its adapter the model in use keeps (base + alpha x adapter)")
WISE_SECONDS = Metric("wise-seconds", "seconds spent choosing alpha (held-out passes, guard checks)")
WISE_GUARD_FACTS = Metric("wise-guard-facts", "wise-keep-retention: the base's guard facts alpha was checked on")
WISE_GUARD_RETENTION = Metric("wise-guard-retention", "wise-keep-retention: the share of them the chosen alpha keeps")
DISTILL_KL = Metric("distill-kl", "replay-loss distill: mean KL(base || model) on the replayed rows")
SELF_REPLAY_WRITING_SECONDS = Metric("self-replay-writing-seconds", "self-replay: seconds the base spent writing "
                                                                    "its answers (once per base, then cached)")

# Reported only by simulated clients (simulations/): a device never sends these.
MALICIOUS = Metric("malicious", "simulation: 1 from a client the run made an attacker (the attack tally counts them)")
ATTACK_SUCCESS_RATE = Metric("attack-success-rate", "simulation, backdoor: share of held-out prompts with the "
                                                    "trigger the global model answers with the target")

METRICS: dict[str, Metric] = {metric.name: metric for metric in [
    WEIGHT, BASELINE_WEIGHT, EXAMPLES_SEEN, TRAIN_LOSS, TRAIN_STEPS, TRAIN_FLAT_STEPS, TRAIN_TOKENS,
    TRAIN_SECONDS, REPLAY_SECONDS, REPLAY_EXAMPLES, HELDOUT_LOSS, HELDOUT_PPL, PERSONAL_HELDOUT_LOSS, PERSONAL_GAIN,
    PERSONAL_TRAIN_SECONDS, EVAL_SECONDS, CURRENT_STAGE_HELDOUT_LOSS, PAST_STAGE_HELDOUT_LOSS, GENERAL_TEXT_LOSS,
    RETENTION, FORGETTING, FORGETTING_VS_BEST, BACKWARD_TRANSFER, WISE_ALPHA, WISE_SECONDS, WISE_GUARD_FACTS,
    WISE_GUARD_RETENTION, DISTILL_KL, SELF_REPLAY_WRITING_SECONDS, MALICIOUS, ATTACK_SUCCESS_RATE,
]}


def undeclared(names: Iterable[str]) -> list[str]:
    """The wire names among ``names`` declared nowhere here (a round-0 ``initial-`` name counts as its metric)."""
    return sorted(name for name in names if name.removeprefix(INITIAL_PREFIX) not in METRICS)


def column(name: str) -> str:
    """A wire name (``heldout-loss``) as a client row's column (``heldout_loss``); a rule's or extension's own
    metrics too."""
    return name.replace("-", "_")


def train_mean(name: str) -> str:
    """The round row's column of the mean of wire name ``name`` over the train replies."""
    return f"train_{column(name)}"


def eval_mean(name: str) -> str:
    """The round row's column of the mean of wire name ``name`` over the evaluate replies."""
    return f"eval_{column(name)}"
