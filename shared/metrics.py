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


METRICS: dict[str, Metric] = {}  # wire name -> declaration, filled by _declare below


def _declare(name: str, help: str) -> Metric:
    """A metric's one declaration: what a reply may carry and a reader may name."""
    METRICS[name] = Metric(name, help)
    return METRICS[name]


# Reported by a train reply (the weight by both).
WEIGHT = _declare("num-examples", "examples behind a reply (trained on, or held out): the weight of its mean "
                                "(Flower's key)")
BASELINE_WEIGHT = _declare("heldout-examples", "held-out examples the round-0 losses were measured on: their weight")
EXAMPLES_SEEN = _declare("examples-seen", "examples the round's local steps drew, replayed ones included")
TRAIN_LOSS = _declare("train-loss", "mean training loss of the round's local steps")
TRAIN_STEPS = _declare("train-steps", "optimizer steps taken")
TRAIN_FLAT_STEPS = _declare("train-flat-steps", "steps whose gradient reached the adapter as all zeros (counted; "
                                                "a round that moved nothing is an error)")
TRAIN_TOKENS = _declare("train-tokens", "tokens trained on")
TRAIN_SECONDS = _declare("train-seconds", "seconds of local training")
BASELINE_SECONDS = _declare("baseline-seconds", "seconds of the round-0 baseline's evaluation (round 1): evaluation "
                                                "work a train reply carries, counted with the evaluations' seconds")
REPLAY_SECONDS = _declare("replay-seconds", "seconds spent building the round's replay examples")
REPLAY_EXAMPLES = _declare("replay-examples", "replay examples mixed into the round's batches")

# Reported by an evaluate reply.
HELDOUT_LOSS = _declare("heldout-loss", "loss of the global adapter on the client's held-out examples")
HELDOUT_PPL = _declare("heldout-ppl", "perplexity of the same")
PERSONAL_HELDOUT_LOSS = _declare("personal-heldout-loss", "loss of the model the client uses (its personal adapter, "
                                                        "WiSE-FT's interpolation) on its held-out examples")
PERSONAL_GAIN = _declare("personal-gain", "held-out loss of the global adapter minus the personal model's")
PERSONAL_TRAIN_SECONDS = _declare("personal-train-seconds", "seconds of training the personal adapter (Ditto, "
                                                          "fine-tuning)")
EVAL_SECONDS = _declare("eval-seconds", "seconds of the evaluation")
CURRENT_STAGE_HELDOUT_LOSS = _declare("current-stage-heldout-loss", "topic-shift clients: held-out loss on the stage "
                                                                  "being trained")
PAST_STAGE_HELDOUT_LOSS = _declare("past-stage-heldout-loss", "topic-shift clients: mean held-out loss on the earlier "
                                                            "stages")
GENERAL_TEXT_LOSS = _declare("general-text-loss", "loss on the neutral general-text probe (what the base could do)")
RETENTION = _declare("retention", "share of the probe facts the base answered that the model still answers")
FORGETTING = _declare("forgetting", "general-text loss minus the base's own")
FORGETTING_VS_BEST = _declare("forgetting-vs-best", "general-text loss minus the best of the base's and the "
                                                  "client's earlier rounds'")
BACKWARD_TRANSFER = _declare("backward-transfer", "topic-shift clients: mean change of loss on finished stages since "
                                                "each ended (negative: forgotten)")
WISE_ALPHA = _declare("wise-alpha", "the share of its adapter the model in use keeps (base + alpha x adapter)")
WISE_SECONDS = _declare("wise-seconds", "seconds spent choosing alpha (held-out passes, guard checks)")
WISE_GUARD_FACTS = _declare("wise-guard-facts", "wise-keep-retention: the base's guard facts alpha was checked on")
WISE_GUARD_RETENTION = _declare("wise-guard-retention", "wise-keep-retention: the share of them the chosen alpha keeps")
DISTILL_KL = _declare("distill-kl", "replay-loss distill: mean KL(base || model) on the replayed rows")
SELF_REPLAY_WRITING_SECONDS = _declare("self-replay-writing-seconds", "self-replay: seconds the base spent writing "
                                                                    "its answers (once per base, then cached)")

# Reported only by simulated clients (simulations/): a device never sends these.
MALICIOUS = _declare("malicious", "simulation: 1 from a client the run made an attacker (the attack tally counts them)")
ATTACK_SUCCESS_RATE = _declare("attack-success-rate", "simulation, backdoor: share of held-out prompts with the "
                                                    "trigger the global model answers with the target")


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
