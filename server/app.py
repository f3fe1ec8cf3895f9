"""The Stamen ServerApp: one federation run of adapter-delta FedAvg over a shared base.

``app`` is what ``flwr run`` starts (its config comes from the run config);
``server_app_for`` builds the same app around a config object for simulations.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from stamen.shared.adapters import adapter_state, attach_adapter
from stamen.shared.base_model import load_base
from stamen.shared.config import RunConfig
from stamen.shared.fingerprint import short
from stamen.shared.protocol import round_config
from stamen.shared.wire import AdapterSchema

from .run_record import RunRecorder, new_run_id
from .strategy import AdapterFedAvg

log = logging.getLogger(__name__)


def run_federation(grid: Grid, config: RunConfig) -> Path:
    """Run ``config.num_rounds`` rounds on ``grid``; return the run folder."""
    base = load_base(config.base_model, quantisation="none")
    initial = {k: v.numpy() for k, v in adapter_state(attach_adapter(base.model, config.adapter, config.seed)).items()}
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
    run_dir = Path(config.run_dir) / (config.run_id or new_run_id())
    recorder = RunRecorder(run_dir, config, meta)
    strategy = AdapterFedAvg(
        initial,
        schema,
        base.fingerprint,
        recorder,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_clients,
        min_evaluate_nodes=config.min_clients if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.min_clients,
    )
    instruction = round_config(config, base.fingerprint)
    strategy.start(
        grid=grid,
        initial_arrays=strategy.global_record(),
        num_rounds=config.num_rounds,
        timeout=config.round_timeout,
        train_config=instruction,
        evaluate_config=instruction,
    )
    recorder.save_adapter(strategy.global_adapter)
    recorder.finish(meta)
    return run_dir


def server_app_for(config: RunConfig) -> ServerApp:
    """A ServerApp bound to ``config`` (the simulation path, where there is no run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: the run config is the flat Stamen config."""
    run_federation(grid, RunConfig.from_flat(context.run_config))
