"""The Stamen ClientApp: receive the global adapter, train locally, send back only the delta.

Each reply carries the adapter delta (trained - received) in the run's wire dtype,
numeric metrics, and this client's base fingerprint, so the server can refuse
updates made on a different base.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from stamen.shared.adapters import adapter_state, load_adapter_state
from stamen.shared.fingerprint import check_same_base
from stamen.shared.protocol import (
    ARRAYS,
    CONTROL,
    CONTROL_DELTA,
    HELDOUT_EXAMPLES,
    NUM_EXAMPLES,
    client_reply,
    read_instruction,
)
from stamen.shared.wire import decode_adapter, encode_adapter

from .drift_correction import ScaffoldClient, proximal_term
from .evaluation import EvalResult, evaluate_loss
from .local_data import local_data
from .runtime import ClientRuntime, client_runtime
from .state_store import ClientStateStore, client_folder
from .training import train_adapter

app = ClientApp()


def _prepare(msg: Message, context: Context):
    """Parse the instruction, check the base, and load the received global adapter."""
    instruction = read_instruction(msg.content)
    runtime = client_runtime(instruction.config)
    check_same_base(instruction.fingerprint, runtime.base.fingerprint, "server's base vs this client's base")
    global_adapter = decode_adapter(msg.content[ARRAYS], runtime.schema)
    load_adapter_state(runtime.model, global_adapter)
    return instruction, runtime, global_adapter, local_data(context, instruction.config.seed)


def _heldout(runtime: ClientRuntime, examples, training) -> EvalResult:
    return evaluate_loss(
        runtime.model, runtime.base.tokenizer, list(examples), training.max_seq_len, training.eval_batch_size
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global adapter on local data; reply with the delta."""
    instruction, runtime, global_adapter, data = _prepare(msg, context)
    config, training = instruction.config, instruction.config.training
    baseline = _initial_losses(runtime, data, training) if instruction.server_round == 1 else {}
    corrections = [proximal_term(config.proximal_mu, global_adapter)] if config.proximal_mu > 0 else []
    scaffold = None
    if CONTROL in msg.content.array_records:
        store = ClientStateStore(client_folder(_state_root(context, config), data.name))
        scaffold = ScaffoldClient(store, instruction.server_round, decode_adapter(msg.content[CONTROL], runtime.schema))
        corrections.append(scaffold.correction())
    seed = zlib.crc32(f"{config.seed}/{data.name}/{instruction.server_round}".encode())
    result = train_adapter(runtime.model, runtime.base.tokenizer, list(data.train), training, seed, tuple(corrections))
    trained = {k: v.numpy() for k, v in adapter_state(runtime.model).items()}
    delta = {name: trained[name] - global_adapter[name] for name in global_adapter}
    extra_uploads = {}
    if scaffold:
        extra_uploads[CONTROL_DELTA] = scaffold.finish(global_adapter, trained, training.local_steps, training.learning_rate)
    metrics = {
        NUM_EXAMPLES: len(data.train),
        "examples-seen": result.examples_seen,
        "train-loss": result.loss,
        "train-steps": result.steps,
        "train-tokens": result.tokens,
        "train-seconds": result.seconds,
        **baseline,
    }
    reply = client_reply(metrics, runtime.base.fingerprint, data.name, encode_adapter(delta, runtime.schema.wire_dtype))
    for name, arrays in extra_uploads.items():
        reply[name] = encode_adapter(arrays, runtime.schema.wire_dtype)
    return Message(reply, reply_to=msg)


def _state_root(context: Context, config) -> Path:
    """Where this device keeps state the server never sees: the node's ``state-dir``,
    or (simulation) the run folder's ``clients/``."""
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"]))
    return Path(config.run_dir) / config.run_id / "clients"


def _initial_losses(runtime: ClientRuntime, data, training) -> dict[str, float]:
    """Losses of the initial global adapter, measured once (round 1) as the run's round-0 baseline."""
    return {
        HELDOUT_EXAMPLES: len(data.heldout),
        "initial-heldout-loss": _heldout(runtime, data.heldout, training).loss,
        "initial-base-domain-loss": _heldout(runtime, _general(runtime, data), training).loss,
    }


def _general(runtime: ClientRuntime, data) -> list:
    return [*data.base_domain, *runtime.base_generated()]


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Held-out loss on local data and loss on the general base domain, for the global adapter."""
    started = time.perf_counter()
    instruction, runtime, _, data = _prepare(msg, context)
    training = instruction.config.training
    heldout = _heldout(runtime, data.heldout, training)
    general = _heldout(runtime, _general(runtime, data), training)
    metrics = {
        NUM_EXAMPLES: len(data.heldout),
        "heldout-loss": heldout.loss,
        "heldout-ppl": heldout.perplexity,
        "base-domain-loss": general.loss,
        "eval-seconds": time.perf_counter() - started,
    }
    return Message(client_reply(metrics, runtime.base.fingerprint, data.name), reply_to=msg)
