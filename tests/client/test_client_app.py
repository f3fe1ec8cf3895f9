"""The ClientApp on real Flower messages, in-process: what it sends, what it keeps, what it refuses."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from stamen.client.evaluation.loss import evaluate_loss
from stamen.client.evaluation.neutral_probes import general_text
from stamen.client.loaded_base import client_runtime
from stamen.client.replay.anchor import AnchorSetMissingError
from stamen.client.replay.self_replay import SEED_PROMPTS
from stamen.client.state_store import ClientStateStore, client_folder
from stamen.server.anchor_distribution import AnchorDistribution
from stamen.shared.adapters import adapter_state, attach_adapter, base_alone, load_adapter_state, shared_state
from stamen.shared.anchor_set import ANCHOR, AnchorMismatchError, anchor_record, encode_anchor
from stamen.shared.base_model import load_base
from stamen.shared.cache import cache_dir
from stamen.shared.config import RunConfig
from stamen.shared.corpus import ANCHOR_SIZE, natural_split
from stamen.shared.fingerprint import BaseMismatchError
from stamen.shared.protocol import (
    ARRAYS,
    CLIENT_INFO,
    CONFIG,
    CONTROL,
    CONTROL_DELTA,
    CORRECTIONS,
    FINGERPRINT,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    round_config,
)
from stamen.shared.wire import AdapterSchema, decode_adapter, encode_adapter
from stamen.simulations.client_app import app as client_app
from stamen.simulations.client_app import partition_source
from stamen.simulations.partitions import client_datasets

TINY = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "local-steps": 2, "seed": 0})


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _server_view(config):
    """What the server holds: fingerprint, the shared initial adapter, its schema."""
    base = load_base("tiny", quantisation="none")
    full = adapter_state(attach_adapter(base.model, config.adapter, config.seed))
    shared = {k: v.numpy() for k, v in shared_state(full, config.adapter).items()}
    return base.fingerprint, shared, AdapterSchema.from_state(shared, "float16")


def _message(kind, config, fingerprint, adapter, server_round=1, extra=None):
    instruction = round_config(config, fingerprint)
    instruction[SERVER_ROUND] = server_round
    content = RecordDict({ARRAYS: encode_adapter(adapter, "float16"), CONFIG: instruction})
    for name, arrays in (extra or {}).items():
        content[name] = encode_adapter(arrays, "float16")
    return Message(content, dst_node_id=7, message_type=kind)


def _moved_away(adapter, seed, scale):
    """A global adapter some rounds on from ``adapter`` (as the server would send it, fp16-exact)."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, scale, v.shape)).astype(np.float16).astype(np.float32) for k, v in adapter.items()}


def _context(state_dir):
    """A node whose private state lives in ``state_dir`` (a test's tmp_path, never the working tree)."""
    node = {"partition-id": 0, "num-partitions": 3, "state-dir": str(state_dir)}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def test_train_reply_is_a_delta_with_exactly_the_adapter(tmp_path):
    fingerprint, initial, schema = _server_view(TINY)
    received = _moved_away(initial, seed=0, scale=0.05)  # B != 0, A != its seeded init
    reply = client_app(_message(MessageType.TRAIN, TINY, fingerprint, received), _context(tmp_path))
    assert not reply.has_error()
    content = reply.content
    assert set(content.array_records) == {ARRAYS}
    assert set(content[ARRAYS]) == set(schema.shapes)
    delta = decode_adapter(content[ARRAYS], schema)
    trained = {k: v.numpy() for k, v in adapter_state(client_runtime(TINY).model).items()}
    for name, value in delta.items():  # trained - received, to fp16 precision: not the trained weights themselves
        np.testing.assert_allclose(value, trained[name] - received[name], atol=1e-5, rtol=2e-3)
        assert np.abs(value).max() > 0, name
        assert not np.allclose(value, trained[name], atol=1e-2)
    payload = sum(content[ARRAYS][k].numpy().nbytes for k in content[ARRAYS])
    assert payload == schema.nbytes
    assert content[METRICS]["num-examples"] > 0
    assert content[METRICS]["initial-heldout-loss"] > 0  # round 1 carries the round-0 baseline
    assert content[CLIENT_INFO][FINGERPRINT] == fingerprint


def test_evaluate_reply_carries_the_received_adapters_losses_and_no_arrays(tmp_path):
    fingerprint, initial, _ = _server_view(TINY)
    received = _moved_away(initial, seed=1, scale=0.2)  # its losses, not the initial adapter's
    context = _context(tmp_path)
    reply = client_app(_message(MessageType.EVALUATE, TINY, fingerprint, received), context)
    metrics = reply.content[METRICS]
    assert not reply.content.array_records
    runtime, data = client_runtime(TINY), partition_source(context, TINY, 0)
    load_adapter_state(runtime.model, received)
    training = TINY.training
    heldout = evaluate_loss(runtime.model, runtime.base.tokenizer, list(data.heldout), training.max_seq_len,
                            training.eval_batch_size)
    prose = evaluate_loss(runtime.model, runtime.base.tokenizer, list(general_text()), training.max_seq_len,
                          training.eval_batch_size)
    assert metrics["heldout-loss"] == pytest.approx(heldout.loss, rel=1e-6)
    assert metrics["num-examples"] == len(data.heldout)
    assert metrics["general-text-loss"] == pytest.approx(prose.loss, rel=1e-6)
    with base_alone(runtime.model):  # forgetting: against the frozen base on the same human prose
        alone = evaluate_loss(runtime.model, runtime.base.tokenizer, list(general_text()), training.max_seq_len,
                              training.eval_batch_size)
    assert metrics["forgetting"] == pytest.approx(prose.loss - alone.loss, rel=1e-5)
    assert "retention" not in metrics  # the random tiny base answers none of the probe questions
    assert metrics["personal-heldout-loss"] == metrics["heldout-loss"]  # personalisation global: the same model


def test_a_client_evaluates_the_interpolated_model_it_uses(tmp_path):
    """wise-alpha 0 is the base alone (held-out loss and forgetting); wise-keep-gain picks alpha on the client."""
    fingerprint, initial, _ = _server_view(TINY)
    received = _moved_away(initial, seed=1, scale=0.2)
    runtime = client_runtime(TINY)
    data = partition_source(_context(tmp_path), TINY, 0)
    with base_alone(runtime.model):
        base = evaluate_loss(runtime.model, runtime.base.tokenizer, list(data.heldout), TINY.training.max_seq_len,
                             TINY.training.eval_batch_size).loss
    replies = {}
    for name, settings in (("full", {}), ("base", {"wise-alpha": 0.0}), ("chosen", {"wise-keep-gain": 0.5})):
        config = TINY.replace(**settings)
        reply = client_app(_message(MessageType.EVALUATE, config, fingerprint, received), _context(tmp_path / name))
        replies[name] = reply.content[METRICS]
    assert "wise-alpha" not in replies["full"]
    assert replies["base"]["wise-alpha"] == 0.0 and replies["base"]["forgetting"] == pytest.approx(0.0, abs=1e-6)
    assert replies["base"]["personal-heldout-loss"] == pytest.approx(base, rel=1e-6)
    assert replies["base"]["heldout-loss"] == replies["full"]["heldout-loss"]  # the global model is still reported
    assert replies["chosen"]["wise-alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_client_refuses_a_server_on_another_base(tmp_path):
    _, initial, _ = _server_view(TINY)
    with pytest.raises(BaseMismatchError, match="mismatch"):
        client_app(_message(MessageType.TRAIN, TINY, "sha256:" + "00" * 32, initial), _context(tmp_path))


def test_ffa_sends_only_b_and_a_is_the_same_seeded_init_on_a_quantised_client(tmp_path):
    config = TINY.replace(**{"lora-aggregation": "ffa"})
    fingerprint, initial, _ = _server_view(config)
    assert initial and all(".lora_B." in k for k in initial)
    reply = client_app(_message(MessageType.TRAIN, config, fingerprint, initial), _context(tmp_path))
    assert set(reply.content[ARRAYS]) == set(initial)
    seeded = attach_adapter(load_base("tiny", "none").model, config.adapter, config.seed)
    seeded_a = {k: p for k, p in seeded.named_parameters() if ".lora_A." in k}
    # round 1 measured the base alone (adapters disabled) before training: A stayed frozen at its init
    client = dict(client_runtime(config).model.named_parameters())
    for name, value in seeded_a.items():
        assert not client[name].requires_grad and torch.equal(client[name].detach(), value.detach()), name
    evaluated = client_app(_message(MessageType.EVALUATE, config, fingerprint, initial), _context(tmp_path))
    assert not evaluated.has_error(), evaluated.error
    server_a = adapter_state(attach_adapter(load_base("tiny", "none").model, config.adapter, config.seed))
    nf4_a = adapter_state(attach_adapter(load_base("tiny", "nf4").model, config.adapter, config.seed))
    for name in (k for k in server_a if ".lora_A." in k):
        assert torch.equal(server_a[name], nf4_a[name])


def test_fedsa_keeps_b_on_the_device_and_evaluates_with_it(tmp_path):
    config = TINY.replace(**{"lora-aggregation": "fedsa", "learning-rate": 0.01})
    fingerprint, initial, _ = _server_view(config)
    assert initial and all(".lora_A." in k for k in initial)
    reply = client_app(_message(MessageType.TRAIN, config, fingerprint, initial), _context(tmp_path))
    sent = set(reply.content[ARRAYS])
    assert sent == set(initial) and not any(".lora_B." in k for k in sent)
    name = reply.content[CLIENT_INFO]["client-name"]
    personal = ClientStateStore(client_folder(tmp_path, name)).load("personal", before_round=2)
    assert personal and all(".lora_B." in k for k in personal)
    assert any(np.abs(v).max() > 0 for v in personal.values())  # B trained away from its zero init
    client_app(_message(MessageType.EVALUATE, config, fingerprint, initial), _context(tmp_path))
    in_model = adapter_state(client_runtime(config).model)
    for key, value in personal.items():
        np.testing.assert_array_equal(in_model[key].numpy(), value)


def test_exact_corrections_are_added_to_the_layer_outputs(tmp_path):
    """Each adapted layer outputs base + LoRA + x C^T, C as received (in the wire dtype)."""
    config = TINY.replace(**{"lora-aggregation": "exact"})
    fingerprint, initial, _ = _server_view(config)
    ids = torch.tensor([[1, 5, 9, 13]])

    def first_layer_io(extra):
        client_app(_message(MessageType.EVALUATE, config, fingerprint, initial, extra=extra), _context(tmp_path))
        runtime = client_runtime(config)
        name = min(runtime.corrections.buffers)  # layer 0's q_proj: its input does not depend on any correction
        seen = {}
        handle = dict(runtime.model.named_modules())[name].register_forward_hook(
            lambda module, args, output: seen.update(x=args[0].detach(), y=output.detach()))
        with torch.no_grad():
            runtime.model(input_ids=ids)
        handle.remove()
        return name, seen["x"], seen["y"], runtime

    name, x_plain, y_plain, runtime = first_layer_io(None)
    rng = np.random.default_rng(0)
    corrections = {
        m: rng.normal(0, 0.05, tuple(b.shape)).astype(np.float32) for m, b in runtime.corrections.buffers.items()
    }
    _, x, y, runtime = first_layer_io({CORRECTIONS: corrections})
    received = {m: c.astype(np.float16).astype(np.float32) for m, c in corrections.items()}
    torch.testing.assert_close(x, x_plain)
    torch.testing.assert_close(y - y_plain, x @ torch.from_numpy(received[name]).T, rtol=1e-4, atol=1e-5)
    for module, buffer in runtime.corrections.buffers.items():
        np.testing.assert_array_equal(buffer.numpy(), received[module])


def test_a_lower_rank_device_pads_its_delta_to_the_server_rank(tmp_path):
    fingerprint, initial, schema = _server_view(TINY)
    context = _context(tmp_path)
    context.node_config["lora-rank"] = 2
    reply = client_app(_message(MessageType.TRAIN, TINY, fingerprint, initial), context)
    delta = decode_adapter(reply.content[ARRAYS], schema)  # validated against the server's rank-8 shapes
    a_keys = [k for k in delta if ".lora_A." in k]
    b_keys = [k for k in delta if ".lora_B." in k]
    assert any(np.abs(delta[k][:2]).max() > 0 for k in a_keys)
    assert all(not delta[k][2:].any() for k in a_keys) and all(not delta[k][:, 2:].any() for k in b_keys)
    assert client_runtime(TINY, 2).schema.shapes[a_keys[0]][0] == 2  # the device really runs rank 2


def test_a_device_declines_a_round_beyond_its_limits_before_training(tmp_path):
    """Flower turns the exception into the error reply the server logs (as with a base mismatch)."""
    from stamen.client.device.resource_guard import RoundDeclined

    fingerprint, initial, _ = _server_view(TINY)
    (tmp_path / "notes.jsonl").write_text("\n".join(f'{{"text": "line {i} of my notes"}}' for i in range(10)))
    device = {"data-path": str(tmp_path / "notes.jsonl"), "state-dir": str(tmp_path / "state"), "max-local-steps": 1}
    context = Context(run_id=1, node_id=7, node_config=device, state=RecordDict(), run_config={})
    with pytest.raises(RoundDeclined, match="declined: the round asks 2 local steps, this device allows 1"):
        client_app(_message(MessageType.TRAIN, TINY, fingerprint, initial), context)
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.safetensors"))


def test_int8_wire_uploads_codes_and_block_scales_and_keeps_the_residual_on_the_device(tmp_path):
    config = TINY.replace(**{"wire-dtype": "int8"})
    fingerprint, initial, _ = _server_view(config)
    schema = AdapterSchema.from_state(initial, "int8")
    instruction = round_config(config, fingerprint)
    instruction[SERVER_ROUND] = 1
    message = Message(RecordDict({ARRAYS: encode_adapter(initial, "int8"), CONFIG: instruction}), dst_node_id=7,
                      message_type=MessageType.TRAIN)
    reply = client_app(message, _context(tmp_path))
    assert not reply.has_error(), reply.error
    record = reply.content[ARRAYS]
    assert (
        sum(record[k].numpy().nbytes for k in record)
        == schema.nbytes
        < AdapterSchema.from_state(initial, "float16").nbytes
    )
    delta = decode_adapter(record, schema)
    residual_files = list(tmp_path.rglob("wire-residual-r000001.safetensors"))
    assert len(residual_files) == 1 and any(np.abs(d).max() > 0 for d in delta.values())


def test_replay_buffer_and_optimizer_state_stay_on_the_device_and_feed_the_next_round(tmp_path):
    config = TINY.replace(**{"replay": "buffer", "replay-ratio": 0.5, "keep-optimizer-state": True})
    fingerprint, initial, _ = _server_view(config)
    context = _context(tmp_path)
    first = client_app(_message(MessageType.TRAIN, config, fingerprint, initial, server_round=1), context)
    second = client_app(_message(MessageType.TRAIN, config, fingerprint, initial, server_round=2), context)
    assert first.content[METRICS]["replay-examples"] == 0  # nothing earlier to replay yet
    assert second.content[METRICS]["replay-examples"] > 0
    saved = ClientStateStore(next(tmp_path.rglob("replay-buffer-r000002.json")).parent).load_document(
        "replay-buffer", 3
    )
    texts = [item["response"] for item in saved["items"]] + [item["prompt"] for item in saved["items"]]
    for reply in (first, second):
        assert not any(text.encode() in _sent_bytes(reply) for text in texts if len(text) > 8)
    moments = ClientStateStore(next(tmp_path.rglob("optimizer-r000002.safetensors")).parent).load("optimizer", 3)
    assert {v.item() for k, v in moments.items() if k.endswith("/step")} == {4.0}  # 2 rounds x local-steps 2
    sent_arrays = [a.numpy() for record in second.content.array_records.values() for a in record.values()]
    assert not any(m.shape == a.shape and np.allclose(m, a) for m in moments.values() for a in sent_arrays)


def _sent_bytes(reply):
    """Everything a reply carries, as bytes, to search for text that must not leave the device."""
    return b"".join(
        [a.data for record in reply.content.array_records.values() for a in record.values()]
        + [
            repr(dict(r)).encode()
            for r in (*reply.content.metric_records.values(), *reply.content.config_records.values())
        ]
    )


def test_anchor_set_travels_once_per_node_is_verified_and_kept_on_the_device(tmp_path):
    distribution = AnchorDistribution.load("", seed=0)
    config = TINY.replace(**{"replay": "anchor", "replay-ratio": 0.5, "replay-anchor-sha256": distribution.sha256})
    fingerprint, initial, _ = _server_view(config)
    context = _context(tmp_path)

    def round_messages(server_round):
        to_seven = _message(MessageType.TRAIN, config, fingerprint, initial, server_round)
        to_eight = Message(
            to_seven.content, dst_node_id=8, message_type=MessageType.TRAIN
        )  # shares its content, as Flower's do
        return distribution.attach([to_seven, to_eight])

    first = round_messages(1)
    assert all(ANCHOR in m.content for m in first)
    reply = client_app(first[0], context)
    assert reply.content[METRICS]["replay-examples"] == ANCHOR_SIZE
    distribution.confirm([reply])
    second = round_messages(2)
    assert ANCHOR not in second[0].content  # node 7 holds it now
    assert ANCHOR in second[1].content  # node 8 never answered
    again = client_app(second[0], context)
    assert again.content[METRICS]["replay-examples"] == ANCHOR_SIZE  # read back from the device's store
    anchor_texts = [e.response for e in natural_split(1, 0).anchor if len(e.response) > 12]
    for sent in (_sent_bytes(reply), _sent_bytes(again)):
        assert not any(text.encode() in sent for text in anchor_texts)

    tampered = round_messages(1)[1]
    tampered.content[ANCHOR] = anchor_record(encode_anchor([("What is two plus two?", "Five.")]))
    with pytest.raises(AnchorMismatchError, match="hashes to"):
        client_app(tampered, _context(tmp_path / "other"))
    without = _message(MessageType.TRAIN, config, fingerprint, initial, 3)
    with pytest.raises(AnchorSetMissingError, match="holds no anchor set"):
        client_app(without, _context(tmp_path / "fresh"))


def test_distillation_on_the_anchor_set_trains_toward_the_base_and_reports_the_divergence(tmp_path):
    distribution = AnchorDistribution.load("", seed=0)
    config = TINY.replace(**{"replay": "anchor", "replay-ratio": 0.5, "local-steps": 3,
                             "replay-anchor-sha256": distribution.sha256})
    fingerprint, initial, schema = _server_view(config)
    deltas = {}
    for loss in ("text", "distill"):
        message = distribution.attach([_message(MessageType.TRAIN, config.replace(**{"replay-loss": loss}),
                                                fingerprint, initial)])[0]
        reply = client_app(message, _context(tmp_path / loss))
        deltas[loss] = decode_adapter(reply.content[ARRAYS], schema)
        assert ("distill-kl" in reply.content[METRICS]) == (loss == "distill")
    assert reply.content[METRICS]["distill-kl"] > 0  # the adapter moved off the base on the anchor prompts
    assert any(not np.array_equal(deltas["text"][k], deltas["distill"][k]) for k in deltas["text"])


def test_self_replay_writes_pseudo_examples_from_the_base_alone_once_per_base_and_stores_no_local_data(tmp_path):
    # a set size no other test uses: the sets are cached per base, device and draw for the whole session
    config = TINY.replace(**{"replay": "self", "replay-self-size": 3, "replay-self-refresh": 2})
    fingerprint, initial, _ = _server_view(config)
    context = _context(tmp_path / "run-1")
    replies = [client_app(_message(MessageType.TRAIN, config, fingerprint, initial, r), context) for r in (1, 2, 3)]
    metrics = [r.content[METRICS] for r in replies]
    assert [m["replay-examples"] for m in metrics] == [3, 3, 3]
    # written in round 1, reused in round 2, a new draw in round 3 (refreshed every 2 rounds)
    assert ["self-replay-writing-seconds" in m for m in metrics] == [True, False, True]
    assert metrics[0]["self-replay-writing-seconds"] <= metrics[0]["replay-seconds"]
    again = client_app(_message(MessageType.TRAIN, config, fingerprint, initial, 1), _context(tmp_path / "run-2"))
    assert "self-replay-writing-seconds" not in again.content[METRICS]  # the same device and base: read back
    sets = [json.loads(path.read_text()) for path in cache_dir("self-replay").glob("*.json")]
    written = [examples for examples in sets if len(examples) == 3]
    assert len(written) == 2 and all({prompt for prompt, _ in examples} <= set(SEED_PROMPTS) for examples in written)
    local = client_datasets(3, 0)[0]
    stored = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    assert not any(e.response.encode() in stored for e in (*local.train, *local.heldout) if len(e.response) > 12)


@pytest.mark.parametrize("method", ["dora", "ia3", "loha"])
def test_each_adapter_type_trains_and_is_aggregated_through_a_round(method, tmp_path):
    """One client, one FedAvg round: the new global adapter is what the client trained (to fp16), every tensor moved."""
    from plain_round import new_global, plain_round

    config = TINY.replace(**{"adapter": method, "learning-rate": 0.01, "lora-targets": "q_proj,v_proj,down_proj"})
    fingerprint, initial, schema = _server_view(config)
    reply = client_app(_message(MessageType.TRAIN, config, fingerprint, initial), _context(tmp_path / "device"))
    assert not reply.has_error(), reply.error
    new = new_global(plain_round(tmp_path / "run", initial, fingerprint, schema.wire_dtype, config=config), [reply])
    trained = {k: v.numpy() for k, v in adapter_state(client_runtime(config).model).items()}
    assert set(new) == set(trained) == set(initial)
    for name, value in new.items():
        np.testing.assert_allclose(value, trained[name], rtol=1e-3, atol=1e-4)
        assert not np.array_equal(value, initial[name]), name


def test_scaffold_corrects_with_the_server_control_and_sends_only_its_control_change(tmp_path):
    """Option II through the ClientApp: delta c_i = -c + (x - y) / (K lr) on a first round (c_i = 0);
    c_i+ stays on the device, and a large c visibly pulls the trained adapter along -c."""
    config = TINY.replace(**{"aggregation": "scaffold", "lr-schedule": "constant", "learning-rate": 0.01})
    fingerprint, initial, schema = _server_view(config)
    control = {k: np.full(v.shape, 0.5, np.float32) for k, v in initial.items()}
    context = _context(tmp_path)
    reply = client_app(_message(MessageType.TRAIN, config, fingerprint, initial, extra={CONTROL: control}), context)
    assert not reply.has_error(), reply.error
    delta = decode_adapter(reply.content[ARRAYS], schema)
    change = decode_adapter(reply.content[CONTROL_DELTA], schema)
    steps, lr = config.training.local_steps, config.training.learning_rate
    for name in initial:
        trained = initial[name] + delta[name]  # what the client trained (to fp16)
        np.testing.assert_allclose(change[name], -control[name] + (initial[name] - trained) / (steps * lr),
                                   rtol=2e-2, atol=2e-2)
    kept = ClientStateStore(next(tmp_path.rglob("control-r000001.safetensors")).parent).load("control", 2)
    for name, value in kept.items():  # c_i+ = c_i (0) + change, on the device only
        np.testing.assert_allclose(value, change[name], rtol=2e-3, atol=2e-3)
    plain = client_app(_message(MessageType.TRAIN, config.replace(aggregation="fedavg"), fingerprint, initial),
                       _context(tmp_path / "plain"))
    plain_delta = decode_adapter(plain.content[ARRAYS], schema)
    assert sum(float(delta[k].sum()) for k in delta) < sum(float(plain_delta[k].sum()) for k in plain_delta)


def test_fedprox_keeps_the_trained_adapter_nearer_the_received_one(tmp_path):
    config = TINY.replace(**{"learning-rate": 0.05, "local-steps": 4, "lr-schedule": "constant"})
    fingerprint, initial, schema = _server_view(config)

    def moved(mu, folder):
        setting = config.replace(**{"proximal-mu": mu})
        reply = client_app(_message(MessageType.TRAIN, setting, fingerprint, initial), _context(tmp_path / folder))
        return np.sqrt(sum(float((d ** 2).sum()) for d in decode_adapter(reply.content[ARRAYS], schema).values()))

    free, held = moved(0.0, "free"), moved(50.0, "held")
    assert 0 < held < 0.8 * free, (held, free)


def test_under_secure_aggregation_the_mod_keeps_the_update_and_metric_values_on_the_device_and_sends_keys(tmp_path):
    """The handler's plain update (float32, real example count) and metric values never leave: the mod that
    every Stamen ClientApp carries swaps them for public keys, metric names and an example count of 1, and
    keeps the weighted update and metric slots in the node's state for the masked stage; a server that asks
    to sum a metric this client did not report (it could be alone in that sum) is refused."""
    import dataclasses

    from flwr.clientapp import ClientApp

    from stamen.client.secure_aggregation import INPUT, STATE
    from stamen.client.secure_aggregation_mod import KEPT_METRICS
    from stamen.shared.secagg_protocol import (
        MASK_STAGE,
        METRIC_NAMES,
        PUBLIC_KEYS,
        SECAGG,
        SHARES,
        SecAggError,
        StageInfo,
    )
    from stamen.simulations.client_app import SIMULATED_CLIENT

    config = TINY.replace(**{"secure-aggregation": True})
    fingerprint, initial, schema = _server_view(config)
    context = _context(tmp_path)
    reply = client_app(_message(MessageType.TRAIN, config, fingerprint, initial), context)
    assert not reply.has_error(), reply.error
    assert ARRAYS not in reply.content and PUBLIC_KEYS in reply.content
    assert dict(reply.content[METRICS]) == {NUM_EXAMPLES: 1}
    names = reply.content[METRIC_NAMES]["names"]
    assert {"train-loss", "train-steps", "train-flat-steps"} <= set(names)
    assert STATE in context.state and context.state[INPUT]['vector'].numpy().size == schema.num_values + 1
    assert set(context.state[KEPT_METRICS]) == set(names)

    info = StageInfo(f"{config.run_id}/{MessageType.TRAIN}", 1, MASK_STAGE, 3, 2, 1, 32)
    lying = dataclasses.replace(info, metrics=("train-loss", "not-reported"))
    asking = Message(RecordDict({SECAGG: lying.to_record(), SHARES: ConfigRecord()}), dst_node_id=7,
                     message_type=MessageType.TRAIN)
    with pytest.raises(SecAggError, match="unreported \\['not-reported'\\], repeated \\[\\]"):
        client_app(asking, context)
    twice = dataclasses.replace(info, metrics=("train-loss", "train-loss"))  # its value counted twice in the sum
    with pytest.raises(SecAggError, match="unreported \\[\\], repeated \\['train-loss'\\]"):
        client_app(Message(RecordDict({SECAGG: twice.to_record(), SHARES: ConfigRecord()}), dst_node_id=7,
                           message_type=MessageType.TRAIN), context)

    evaluated = client_app(_message(MessageType.EVALUATE, config, fingerprint, initial), _context(tmp_path / "eval"))
    assert dict(evaluated.content[METRICS]) == {NUM_EXAMPLES: 1} and PUBLIC_KEYS in evaluated.content
    assert "heldout-loss" in evaluated.content[METRIC_NAMES]["names"]

    bare = ClientApp()  # the handler alone, without the mod: what the mod receives
    bare.train()(SIMULATED_CLIENT.train)
    plain = bare(_message(MessageType.TRAIN, config, fingerprint, initial), _context(tmp_path / "bare"))
    assert plain.content[ARRAYS][next(iter(schema.shapes))].dtype == "float32"
    assert plain.content[METRICS][NUM_EXAMPLES] > 1
