"""The Stamen ClientApp's handlers: receive the global adapter, train locally, send back only the delta.

Each reply carries the adapter delta (trained - received) in the run's wire dtype,
numeric metrics, and this client's base fingerprint, so the server can refuse
updates made on a different base. A train round reads as a pipeline:
set up -> before-training hooks -> ``train_adapter`` -> after-training hooks -> reply.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from stamen.shared.adapters import adapter_state
from stamen.shared.metrics import (
    CURRENT_STAGE_HELDOUT_LOSS,
    EVAL_SECONDS,
    EXAMPLES_SEEN,
    GENERAL_TEXT_LOSS,
    HELDOUT_LOSS,
    HELDOUT_PPL,
    PAST_STAGE_HELDOUT_LOSS,
    PERSONAL_GAIN,
    PERSONAL_HELDOUT_LOSS,
    PERSONAL_TRAIN_SECONDS,
    TRAIN_FLAT_STEPS,
    TRAIN_LOSS,
    TRAIN_SECONDS,
    TRAIN_STEPS,
    TRAIN_TOKENS,
)
from stamen.shared.protocol import NUM_EXAMPLES, client_reply
from stamen.shared.training import train_adapter
from stamen.shared.wire import encode_adapter

from .device.release_ledger import release_ledger_mod
from .device.resource_guard import ResourceGuardHook
from .device.signed_app import operator_signature_mod
from .drift_correction import FedProx, Scaffold
from .error_feedback import ErrorFeedback
from .evaluation.forgetting import NEUTRAL, forgetting_metrics
from .evaluation.probes import RoundZeroBaseline, base_alone_losses, loss_on, model_probes
from .hooks import EvaluationProbe, TrainingHook, TrainingRound
from .kept_optimizer import KeptOptimizerState
from .local_data import DataSource, device_source
from .personalisation import Ditto, load_personal
from .replay.hook import Replay
from .round_setup import RoundSetup, prepare
from .secure_aggregation_mod import SUMMED_DTYPE, secure_aggregation_mod
from .state_store import PERSONAL
from .update import personal_part, shared_delta
from .wise import model_in_use

TRAINING_HOOKS: tuple[type[TrainingHook], ...] = (
    ResourceGuardHook, RoundZeroBaseline, FedProx, Scaffold, Replay, KeptOptimizerState, Ditto, ErrorFeedback,
)
"""A device's hooks, in the order they run; error feedback stays last (it rounds the delta as sent)."""


class StamenClient:
    """The train and evaluate handlers, with where the data comes from and which hooks run."""

    def __init__(self, data_source: DataSource = device_source,
                 training_hooks: Sequence[type[TrainingHook]] = TRAINING_HOOKS,
                 evaluation_probes: Sequence[EvaluationProbe] = ()) -> None:
        self.data_source = data_source
        self.training_hooks = tuple(training_hooks)
        self.evaluation_probes = tuple(evaluation_probes)

    def train(self, msg: Message, context: Context) -> Message:
        """Train the received global adapter on local data; reply with the delta."""
        setup = prepare(msg, context, self.data_source, training_round=True)
        training_round = TrainingRound.begin(msg, context, setup)
        hooks = [hook for hook in (cls.start(training_round) for cls in self.training_hooks) if hook is not None]
        for hook in hooks:
            hook.before_training(training_round)
        _train(training_round)
        for hook in hooks:
            hook.after_training(training_round)
        return Message(_train_reply(training_round), reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Held-out loss of the global adapter and of the model this client uses (its personal model, moved toward
        the base by ``wise-alpha``); forgetting of that model (general-text loss, knowledge retention)."""
        setup = prepare(msg, context, self.data_source, training_round=False)
        started = time.perf_counter()  # like train-seconds: the work itself, not reading the message
        runtime, data, config = setup.runtime, setup.data, setup.config
        training = config.training
        heldout = loss_on(runtime, data.heldout, training)
        probed = {name: value for probe in self.evaluation_probes for name, value in probe(setup, context).items()}
        seed = zlib.crc32(f"{config.seed}/{data.name}/personal".encode())
        personalising = time.perf_counter()
        has_personal = load_personal(runtime.model, runtime.base.tokenizer, setup.store, setup.server_round,
                                     list(data.train), config, seed)  # a finetune trains on this round's data
        trained_personal = {PERSONAL_TRAIN_SECONDS.name: time.perf_counter() - personalising} \
            if config.personal.method == "finetune" else {}  # a cost of the method, like Ditto's in training
        personal = loss_on(runtime, data.heldout, training) if has_personal else heldout
        personal, interpolation = model_in_use(runtime, data.heldout, config, personal)
        by_stage = _stage_losses(setup)  # of the model the client uses, as the probes below
        forgetting = _forgetting(setup) if config.probes(setup.server_round) else {}
        metrics = {
            NUM_EXAMPLES: len(data.heldout),
            HELDOUT_LOSS.name: heldout.loss,
            HELDOUT_PPL.name: heldout.perplexity,
            PERSONAL_HELDOUT_LOSS.name: personal.loss,
            PERSONAL_GAIN.name: heldout.loss - personal.loss,
            **interpolation,
            **by_stage,
            **trained_personal,
            **forgetting,
            **probed,
            EVAL_SECONDS.name: time.perf_counter() - started,
        }
        return Message(client_reply(metrics, runtime.base.fingerprint, data.name), reply_to=msg)


def _stage_losses(setup: RoundSetup) -> dict[str, float]:
    """Where each stage of the data is another topic: the held-out loss of the stage training is on now, and the
    mean over the earlier stages' (what a later stage may erase), reported apart."""
    data, runtime, training = setup.data, setup.runtime, setup.config.training
    if data.stage is None or len(data.heldout_stages) <= data.stage:
        return {}
    losses = [loss_on(runtime, examples, training).loss for examples in data.heldout_stages[:data.stage + 1]]
    past = {PAST_STAGE_HELDOUT_LOSS.name: sum(losses[:-1]) / len(losses[:-1])} if len(losses) > 1 else {}
    return {CURRENT_STAGE_HELDOUT_LOSS.name: losses[-1], **past}


def _forgetting(setup: RoundSetup) -> dict[str, float]:
    """The forgetting probes of the model as it stands (``probes.py``) and the metrics on them (``forgetting.py``):
    general-text loss, retention (each known fact's answer kept in the client's forgetting history), forgetting,
    and backward transfer on stream data."""
    runtime, data, training = setup.runtime, setup.data, setup.config.training
    probed_model = model_probes(runtime, training)
    stage_losses = {j: loss_on(runtime, examples, training).loss for j, examples in enumerate(data.stages)}
    forgetting = forgetting_metrics(setup.store, setup.server_round,
                                    {NEUTRAL: probed_model.metrics[GENERAL_TEXT_LOSS.name]},
                                    lambda: base_alone_losses(runtime, training), data.stage,
                                    stage_losses if data.stage is not None else None, probed_model.answered)
    return {**probed_model.metrics, **forgetting}


def _train(training_round: TrainingRound) -> None:
    """The local steps, and the update they make: the shared part's delta; the personal part stays here."""
    setup, config = training_round.setup, training_round.config
    runtime = setup.runtime
    training_round.result = train_adapter(
        runtime.model, runtime.base.tokenizer, list(training_round.examples), config.training, training_round.seed,
        tuple(training_round.corrections), training_round.replay_examples, config.replay.ratio,
        training_round.optimizer_state, training_round.distillation)
    training_round.trained = {k: v.numpy() for k, v in adapter_state(runtime.model).items()}
    training_round.delta = shared_delta(training_round.trained, setup.global_adapter)
    personal = personal_part(training_round.trained, setup.global_adapter)
    if personal:
        setup.store.save(PERSONAL, setup.server_round, personal)


def _train_reply(training_round: TrainingRound) -> RecordDict:
    setup, config, result = training_round.setup, training_round.config, training_round.result
    metrics = {
        NUM_EXAMPLES: len(setup.data.train),
        EXAMPLES_SEEN.name: result.examples_seen,
        TRAIN_LOSS.name: result.loss,
        TRAIN_STEPS.name: result.steps,
        TRAIN_FLAT_STEPS.name: result.flat_steps,  # always sent: a secure sum carries only metrics all clients name
        TRAIN_TOKENS.name: result.tokens,
        TRAIN_SECONDS.name: result.seconds,
        **training_round.metrics,
    }
    schema = setup.server_schema()
    wire = SUMMED_DTYPE if config.privacy.secure_aggregation else schema.wire_dtype  # the secure mod sums it exactly

    def sent(arrays: dict[str, np.ndarray]) -> ArrayRecord:  # in the schema's order: a secure sum lays them out so
        at_server_rank = setup.at_server_rank(arrays)
        return encode_adapter({name: at_server_rank[name] for name in schema.shapes}, wire)

    reply = client_reply(metrics, setup.runtime.base.fingerprint, setup.data.name, sent(training_round.delta))
    for name, arrays in training_round.uploads.items():
        reply[name] = sent(arrays)
    return reply


def client_app_with(mods: list[Mod], train_handler: Callable[[Message, Context], Message] | None = None,
                    client: StamenClient | None = None,
                    evaluate_handler: Callable[[Message, Context], Message] | None = None) -> ClientApp:
    """Stamen's ClientApp with Flower ``mods`` wrapped around every handler (Flower's extension point),
    inside the operator's signature check and outside the release ledger and the secure-aggregation mod every
    Stamen ClientApp carries.

    ``client`` sets the data source and hooks (a simulation's); ``train_handler`` and ``evaluate_handler`` answer
    ordinary train and evaluate messages instead of it (benchmarks swap in synthetic updates and metrics)."""
    client = client or StamenClient()
    client_app = ClientApp(mods=[operator_signature_mod, *mods, release_ledger_mod, secure_aggregation_mod])
    client_app.train()(train_handler or client.train)
    client_app.evaluate()(evaluate_handler or client.evaluate)
    return client_app
