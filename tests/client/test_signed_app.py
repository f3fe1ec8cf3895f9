"""A device runs only Stamen's installed ClientApp, and with the operator's key only runs the operator signed."""

from __future__ import annotations

import io
import zipfile
from types import SimpleNamespace

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.cli.build import build_fab_from_files

from stamen.client.device.signed_app import OPERATOR_KEY, _guard, check_bundle, operator_signature_mod
from stamen.server.deployment import write_flower_app
from stamen.shared.config import RunConfig
from stamen.shared.protocol import CONFIG, round_config
from stamen.shared.run_signature import UntrustedRun, sign_run, write_operator_keys

pytestmark = pytest.mark.usefixtures("flower_task_identity")
SECURE = RunConfig().replace(**{"secure-aggregation": True, "secagg-roster": "ab" * 32})


@pytest.fixture
def operator(tmp_path):
    (tmp_path / "operator").mkdir()
    (tmp_path / "other").mkdir()
    private, public = write_operator_keys(tmp_path / "operator")
    _, other_public = write_operator_keys(tmp_path / "other")
    return SimpleNamespace(private=private, public=public, other_public=other_public)


def _bundle(tmp_path, config: RunConfig, **extra_files: bytes) -> bytes:
    app = write_flower_app(tmp_path / "app", config)
    files = {"pyproject.toml": (app / "pyproject.toml").read_bytes(), **extra_files}
    return build_fab_from_files(files)[0]


def test_a_signed_stamen_bundle_runs_and_anything_else_is_refused(tmp_path, operator):
    signed = sign_run(SECURE, operator.private)
    trusting = {OPERATOR_KEY: str(operator.public)}
    check_bundle(_bundle(tmp_path, signed), signed.to_flat(), trusting)
    check_bundle(_bundle(tmp_path, RunConfig()), RunConfig().to_flat(), {})  # no operator key: Stamen's app only

    with pytest.raises(UntrustedRun, match=r"carries files of its own \(\['evil.py'\]\)"):
        check_bundle(_bundle(tmp_path, signed, **{"evil.py": b"import os"}), signed.to_flat(), trusting)
    project = (write_flower_app(tmp_path / "app", signed) / "pyproject.toml").read_text()
    renamed = build_fab_from_files({"pyproject.toml": project.replace("stamen.client.app:app", "evil:app").encode()})
    with pytest.raises(UntrustedRun, match="names ClientApp 'evil:app'"):
        check_bundle(renamed[0], signed.to_flat(), trusting)
    with pytest.raises(UntrustedRun, match="carries no operator signature"):
        check_bundle(_bundle(tmp_path, RunConfig()), RunConfig().to_flat(), trusting)
    with pytest.raises(UntrustedRun, match="not signed by this device's operator key"):
        check_bundle(_bundle(tmp_path, signed), signed.to_flat(), {OPERATOR_KEY: str(operator.other_public)})
    overridden = {**signed.to_flat(), "secure-aggregation": False}  # `flwr run --run-config` on the server
    with pytest.raises(UntrustedRun, match="not signed by this device's operator key"):
        check_bundle(_bundle(tmp_path, signed), overridden, trusting)
    with pytest.raises(UntrustedRun, match="cannot be read"):
        check_bundle(b"not a zip", signed.to_flat(), trusting)


def test_every_message_must_carry_the_signed_config_on_a_device_holding_the_operator_key(operator):
    signed = sign_run(SECURE, operator.private)
    context = Context(run_id=1, node_id=1, node_config={OPERATOR_KEY: str(operator.public)}, state=RecordDict(),
                      run_config={})
    answered = []

    def handler(msg: Message, ctx: Context) -> Message:
        answered.append(msg)
        return msg

    def message(config: ConfigRecord) -> Message:
        return Message(RecordDict({CONFIG: config}), dst_node_id=1, message_type=MessageType.TRAIN)

    operator_signature_mod(message(round_config(signed, "sha256:" + "ab" * 32)), context, handler)
    assert len(answered) == 1
    plain = round_config(signed.replace(**{"secure-aggregation": False}), "sha256:" + "ab" * 32)
    with pytest.raises(UntrustedRun, match="not signed by this device's operator key"):
        operator_signature_mod(message(plain), context, handler)
    assert len(answered) == 1


def test_the_bundle_is_checked_before_flower_installs_it_and_a_refusal_becomes_the_tasks_error(tmp_path, operator):
    signed = sign_run(RunConfig(), operator.private)
    bundle = _bundle(tmp_path, signed)
    pulled, installed = [], []
    context = SimpleNamespace(run_config=signed.to_flat(), node_config={OPERATOR_KEY: str(operator.public)})

    def pull(client):
        pulled.append(client)
        return "message", context, "run", "fab"

    runtime = SimpleNamespace(pull_task_input=pull,
                              install_from_fab=lambda fab, *args, **kwargs: installed.append((fab, args, kwargs)))
    _guard(runtime)
    assert runtime.pull_task_input("runtime client") == ("message", context, "run", "fab")
    assert pulled == ["runtime client"]
    runtime.install_from_fab(bundle, "positional", skip_prompt=True)  # signed by the key this device holds
    assert installed == [(bundle, ("positional",), {"skip_prompt": True})]
    context.node_config = {OPERATOR_KEY: str(operator.other_public)}  # the checks read the pulled task's context
    with pytest.raises(UntrustedRun, match=r"refusing the app bundle: .*not signed by this device's operator key"):
        runtime.install_from_fab(bundle, skip_prompt=True)
    with pytest.raises(UntrustedRun, match="cannot be read"):
        runtime.install_from_fab(b"code the server chose", skip_prompt=True)
    assert len(installed) == 1


def test_a_bundle_without_a_flower_table_or_pyproject_names_no_clientapp(tmp_path):
    for project in (b'[project]\nname = "x"\n', b'[tool.other]\nx = 1\n', b'[tool.flwr]\nx = 1\n',
                    b'[tool.flwr.app]\nx = 1\n', None):
        raw = io.BytesIO()
        with zipfile.ZipFile(raw, "w") as bundle:  # hand-made: Flower's builder would refuse these
            bundle.writestr(".info/CONTENT", "")
            if project is not None:
                bundle.writestr("pyproject.toml", project)
        with pytest.raises(UntrustedRun, match="names ClientApp None"):
            check_bundle(raw.getvalue(), {}, {})
    with pytest.raises(UntrustedRun, match=r"carries files of its own \(\['a.py', 'b.py', 'c.py'\]\)"):
        check_bundle(_bundle(tmp_path, RunConfig(), **{f"{n}.py": b"" for n in "abcd"}), {}, {})


def test_messages_pass_unchecked_only_where_the_device_holds_no_operator_key_or_they_carry_no_config(operator):
    seen = []
    tampered = Message(RecordDict({CONFIG: round_config(RunConfig(), "sha256:" + "ab" * 32)}), dst_node_id=1,
                       message_type=MessageType.TRAIN)
    stage = Message(RecordDict({"secagg": ConfigRecord({"stage": "secagg_mask"})}), dst_node_id=1,
                    message_type=MessageType.TRAIN)
    plain = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    trusting = Context(run_id=1, node_id=1, node_config={OPERATOR_KEY: str(operator.public)}, state=RecordDict(),
                       run_config={})
    operator_signature_mod(tampered, plain, lambda msg, ctx: seen.append((msg, ctx)))
    operator_signature_mod(stage, trusting, lambda msg, ctx: seen.append((msg, ctx)))
    assert seen == [(tampered, plain), (stage, trusting)]


def test_a_run_is_pinned_to_the_signed_config_it_started_with(operator):
    """A config the same operator signed for another run is refused mid-run: against the run config Flower hands a
    deployed device, or else against the first signed config the run's messages carried."""
    this_run, other = sign_run(SECURE.replace(**{"run-id": "a"}), operator.private), sign_run(
        RunConfig().replace(**{"run-id": "b"}), operator.private)

    def message(config: RunConfig) -> Message:
        return Message(RecordDict({CONFIG: round_config(config, "sha256:" + "ab" * 32)}), dst_node_id=1,
                       message_type=MessageType.TRAIN)

    answered = []
    for run_config in (this_run.to_flat(), {}):
        context = Context(run_id=1, node_id=1, node_config={OPERATOR_KEY: str(operator.public)}, state=RecordDict(),
                          run_config=run_config)
        operator_signature_mod(message(this_run), context, lambda msg, ctx: answered.append(msg))
        with pytest.raises(UntrustedRun, match="signed for another run"):
            operator_signature_mod(message(other), context, lambda msg, ctx: answered.append(msg))
    assert len(answered) == 2
    fresh = Context(run_id=2, node_id=1, node_config={OPERATOR_KEY: str(operator.public)}, state=RecordDict(),
                    run_config={})
    operator_signature_mod(message(other), fresh, lambda msg, ctx: answered.append(msg))  # another Flower run: its own
    assert len(answered) == 3
    unlisted = sign_run(RunConfig().replace(**{"secure-aggregation": True}), operator.private)
    with pytest.raises(UntrustedRun, match="secure run without a roster"):
        operator_signature_mod(message(unlisted), fresh, lambda msg, ctx: answered.append(msg))
