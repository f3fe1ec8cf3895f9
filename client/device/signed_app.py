"""What a device lets run: Stamen's own installed ClientApp, for runs its operator signed.

Flower's SuperNode installs the app bundle (FAB) the SuperLink hands it and imports the ClientApp
that bundle names, from the bundle's own files: whoever controls the server could ship code.
Flower 1.42 (as 1.41) checks bundles against ``--trusted-entities`` only for apps from Flower Hub (a bundle
submitted with ``flwr run`` carries no verification, so a SuperNode with trusted entities refuses
every run). Stamen checks at the same point itself. The SuperNode starts this module as its
``flwr-clientapp`` (``client/device/deployment`` puts a shim first on the SuperNode's PATH), and it refuses,
before anything from the bundle is imported, a bundle that carries any file besides its
``pyproject.toml``, names a ClientApp other than Stamen's, or, on a device holding the operator's
public key (node config ``operator-key``), whose run config the operator did not sign. On such a
device :func:`operator_signature_mod` also checks the config of every message and pins the run to one
signed config, so the server can neither change a setting mid-run (switch secure aggregation off, say)
nor hand the device a config the operator signed for another run; and a secure run must list its
devices (``secagg-roster``), or peers' keys would be taken on the server's word.
"""

from __future__ import annotations

import io
import tomllib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from stamen.shared.protocol import CONFIG, FINGERPRINT, SERVER_ROUND
from stamen.shared.run_signature import SIGNATURE_KEY, UntrustedRun, check_config

STAMEN_CLIENTAPP = "stamen.client.app:app"
BUNDLE_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})  # what `stamen server start` submits
OPERATOR_KEY = "operator-key"  # node config: path of the operator's public key
PINNED = "operator-signed-run"  # the node's state for a run: the signature of the config its messages carry


def check_bundle(fab: bytes, run_config: Mapping[str, object], node_config: Mapping[str, object]) -> None:
    """Raise :class:`UntrustedRun` unless the bundle is Stamen's app without code and, where the device holds
    the operator's key, the run config (as Flower fused it with any overrides) carries its signature."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
            files = set(bundle.namelist())
            project = tomllib.loads(bundle.read("pyproject.toml").decode()) if "pyproject.toml" in files else {}
    except (zipfile.BadZipFile, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UntrustedRun(f"the app bundle cannot be read: {error}") from None
    if files - BUNDLE_FILES:
        raise UntrustedRun(f"the app bundle carries files of its own ({sorted(files - BUNDLE_FILES)[:3]}); "
                           f"this device runs only the ClientApp installed with Stamen")
    component = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp")
    if component != STAMEN_CLIENTAPP:
        raise UntrustedRun(f"the app names ClientApp {component!r}; this device runs only {STAMEN_CLIENTAPP}")
    if OPERATOR_KEY in node_config:
        try:
            check_signed_run(run_config, Path(str(node_config[OPERATOR_KEY])))
        except UntrustedRun as reason:
            raise UntrustedRun(f"refusing the app bundle: {reason}") from None


def check_signed_run(flat: Mapping[str, object], operator_key: Path) -> None:
    """The operator signed ``flat``, and it is a run this device takes part in: a secure run names its roster."""
    check_config(flat, operator_key)
    if flat.get("secure-aggregation") is True and not flat.get("secagg-roster"):
        raise UntrustedRun("the operator signed a secure run without a roster of its devices (secagg-roster): "
                           "this device would take its peers' keys on the server's word")


def operator_signature_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """On a device holding the operator's key, act only on messages carrying the run's one signed config."""
    if OPERATOR_KEY in context.node_config and CONFIG in msg.content.config_records:
        sent = {k: v for k, v in msg.content[CONFIG].items() if k not in (FINGERPRINT, SERVER_ROUND)}
        check_signed_run(sent, Path(str(context.node_config[OPERATOR_KEY])))
        _pin(str(sent[SIGNATURE_KEY]), context)
    return call_next(msg, context)


def _pin(signature: str, context: Context) -> None:
    """Bind this Flower run to one signed config: the one it was started with (the run config Flower hands the
    device, checked with the bundle), else the first its messages carried. The signature identifies the config:
    the operator's key signs each config once, deterministically."""
    pinned = context.run_config.get(SIGNATURE_KEY)
    if not pinned:
        record = context.state.config_records.setdefault(PINNED, ConfigRecord({SIGNATURE_KEY: signature}))
        pinned = record[SIGNATURE_KEY]
    if signature != pinned:
        raise UntrustedRun("this message carries a config the operator signed for another run (or another version "
                           "of this one); this run's config is pinned to the one it started with")


def _guard(runtime: ModuleType) -> None:
    """Check the bundle at the moment Flower's ClientApp process would install it: after the task is pulled
    (so a refusal is an error reply the server records) and before any of its files exist on disk."""
    pulled: dict[str, Context] = {}
    pull, install = runtime.pull_task_input, runtime.install_from_fab

    def pull_and_keep(client: object) -> tuple:
        message, context, run, fab = pull(client)
        pulled["context"] = context
        return message, context, run, fab

    def check_then_install(fab: bytes, *args: object, **kwargs: object) -> object:
        context = pulled["context"]
        check_bundle(fab, context.run_config, context.node_config)
        return install(fab, *args, **kwargs)

    runtime.pull_task_input, runtime.install_from_fab = pull_and_keep, check_then_install


def main() -> None:
    """Flower's ``flwr-clientapp``, with the bundle checked before it is installed."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp

    _guard(run_clientapp)
    flwr_clientapp()


if __name__ == "__main__":
    main()
