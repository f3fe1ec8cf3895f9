"""One federation run: set up from the config, then round after round with a checkpoint after each.

Stamen drives the rounds itself (rather than ``Strategy.start``) so a run can
resume from its last completed round: the checkpoint restores the global adapter,
the rule's state, the node-sampling RNG and the metrics file.
"""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.serverapp import Grid

from stamen.shared.adapters import adapter_state, attach_adapter, shared_state
from stamen.shared.base_model import load_base
from stamen.shared.config import RunConfig
from stamen.shared.fingerprint import short
from stamen.shared.lora_layers import lora_layers
from stamen.shared.protocol import round_config
from stamen.shared.run_folder import RunFolder
from stamen.shared.wire import AdapterSchema

from .anchor_distribution import AnchorDistribution
from .checkpoint import ServerState, load_checkpoint, save_checkpoint
from .extensions import ServerExtension
from .federated_round import FederatedRound
from .fold import RoundFold
from .lora_exact import ExactLoraResidual, correction_shapes
from .privacy import PrivacyEngine
from .root_update import RootTrainer
from .round_ledger import RoundLedger
from .rules import make_rule
from .run_record import RunRecorder, new_run_id
from .strategy import AdapterStrategy

log = logging.getLogger(__name__)


def run_federation(
    grid: Grid, config: RunConfig, resume: bool = False, extensions: Sequence[ServerExtension] = ()
) -> Path:
    """Run (or, with ``resume``, continue) ``config``'s rounds on ``grid``; return the run folder.

    ``extensions`` join those the config asks for (a simulation's attack tally)."""
    config = config if config.run_id else config.replace(**{"run-id": new_run_id()})
    rule = make_rule(config.aggregation, **config.rule_options())
    rule.check_fits(config)
    anchor = AnchorDistribution.load(config.replay.anchor, config.seed) if "anchor" in config.replay.enabled() else None
    if anchor:
        config = config.replace(**{"replay-anchor-sha256": anchor.sha256})  # clients verify the set against it
    run_dir = RunFolder.of(config).path
    start = _starting_point(config)
    checkpoint = load_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        log.warning("%s has no completed round to resume from; starting at round 1", run_dir)
    recorder = RunRecorder(run_dir, config, start.meta, resume_at=checkpoint.metrics_offset if checkpoint else None)
    extensions = [*_extensions_for(config, start, anchor), *extensions]
    fold = RoundFold(start.initial, start.schema, rule, extensions, config.privacy, config.max_client_weight)
    strategy = AdapterStrategy(
        rule, extensions, config.wire_dtype,
        fraction_train=1.0 if _samples_for_privacy(config) else config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_clients,
        min_evaluate_nodes=config.min_clients if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.min_clients,
    )
    if checkpoint:
        fold.restore(checkpoint.global_adapter, checkpoint.rule_state)
        random.setstate(checkpoint.python_rng)
        log.info("Resuming %s after round %d", run_dir, checkpoint.round)
    else:
        rule.initialise(fold.global_adapter)
        random.seed(config.seed)  # Flower samples nodes with the random module
    first_round = checkpoint.round + 1 if checkpoint else 1
    root = RootTrainer(config) if rule.needs_root_update else None
    rounds = FederatedRound(strategy, fold, RoundLedger(recorder), start.fingerprint, config,
                            round_config(config, start.fingerprint))
    _run_rounds(grid, rounds, first_round, run_dir, root)
    recorder.save_adapter(fold.global_adapter)
    recorder.finish(start.meta)
    return run_dir


@dataclass(frozen=True)
class StartingPoint:
    """The base's fingerprint and the initial global adapter: all the server keeps of the base."""

    fingerprint: str
    initial: dict[str, np.ndarray]
    schema: AdapterSchema
    meta: dict[str, int | str]  # what config.json records of the base and the adapter


def _starting_point(config: RunConfig) -> StartingPoint:
    base = load_base(config.base_model, quantisation="none")
    full = adapter_state(attach_adapter(base.model, config.adapter, config.seed))
    initial = {k: v.numpy() for k, v in shared_state(full, config.adapter).items()}
    schema = AdapterSchema.from_state(initial, config.wire_dtype)
    meta = {
        "base_fingerprint": base.fingerprint,
        "base_stored_bytes": base.stored_bytes,
        "adapter_values": schema.num_values,
        "adapter_wire_bytes": schema.nbytes,
    }
    del base.model
    gc.collect()  # the server only needs the adapter's shapes and initial values
    log.info(
        "Base %s (fingerprint %s): adapter of %d values, %d bytes per upload vs %d bytes of base weights",
        config.base_model, short(base.fingerprint), schema.num_values, schema.nbytes, meta["base_stored_bytes"],
    )
    return StartingPoint(base.fingerprint, initial, schema, meta)


def _samples_for_privacy(config: RunConfig) -> bool:
    """Whether the privacy engine, not Flower's seeded sampling, picks the round's nodes (see
    :mod:`~stamen.server.privacy`): the strategy then offers it every node."""
    return config.privacy.dp == "central" and config.fraction_train < 1


def _extensions_for(
    config: RunConfig, start: StartingPoint, anchor: AnchorDistribution | None
) -> list[ServerExtension]:
    """The extensions ``config`` asks for, in the order they see a round: privacy clips and noises
    before the exact-LoRA residual sees an update."""
    installed: list[ServerExtension] = []
    if config.privacy.dp != "none":
        installed.append(PrivacyEngine(config.privacy, start.schema.shapes, config.fraction_train))
    if anchor:
        installed.append(anchor)
    if config.adapter.lora_mode().corrects_products:
        layers = lora_layers(start.initial)
        residual = ExactLoraResidual(layers, config.adapter.alpha / config.adapter.rank)
        residual.initialise(correction_shapes(layers, start.initial))
        installed.append(residual)
    return installed


def _run_rounds(grid: Grid, rounds: FederatedRound, first: int, run_dir: Path, root: RootTrainer | None) -> None:
    """Round after round, a checkpoint after each."""
    fold = rounds.fold
    for server_round in range(first, rounds.config.num_rounds + 1):
        log.info("round %d/%d", server_round, rounds.config.num_rounds)
        if root:
            fold.rule.set_root_update(root.update(fold.global_adapter, server_round))
        rounds.train(grid, server_round)
        rounds.evaluate(grid, server_round)
        save_checkpoint(run_dir, ServerState(server_round, fold.global_adapter, fold.state_dict(), random.getstate(),
                                             rounds.ledger.recorder.offset()))
