"""Anchor replay, device half: the general-domain set the server sends once per run, verified
against the hash in the run config and kept in the device's state store."""

from __future__ import annotations

from flwr.app import ConfigRecord

from stamen.shared.anchor_set import anchor_blob, decode_anchor, encode_anchor
from stamen.shared.examples import Example

from ..state_store import ClientStateStore
from .sources import ReplayInputs, ReplaySource, register

ANCHOR_DOCUMENT = "anchor-set"


class AnchorSetMissingError(RuntimeError):
    """Anchor replay is on but this device holds no verified copy of the run's anchor set."""


@register("anchor")
class AnchorReplay(ReplaySource):
    @classmethod
    def replay(cls, inputs: ReplayInputs) -> tuple[list[Example], tuple]:
        expected = inputs.config.replay.anchor_sha256
        return anchor_examples(inputs.store, inputs.server_round, expected, inputs.anchor), ()


def anchor_examples(
    store: ClientStateStore, server_round: int, expected_sha256: str, record: ConfigRecord | None
) -> list[Example]:
    """The run's anchor set: verified from the message that carries it (and kept), else from the store."""
    if record is not None:
        pairs = decode_anchor(anchor_blob(record), expected_sha256)
        store.save_document(ANCHOR_DOCUMENT, server_round, {"sha256": expected_sha256, "examples": pairs})
    else:
        kept = store.load_document(ANCHOR_DOCUMENT, server_round + 1)
        if kept is None or kept["sha256"] != expected_sha256:
            raise AnchorSetMissingError(f"replay = anchor, but this device holds no anchor set with sha256 "
                                        f"{expected_sha256[:12]}; the server sends it with a node's first instruction")
        pairs = decode_anchor(encode_anchor([tuple(pair) for pair in kept["examples"]]), expected_sha256)
    return [Example(response, prompt) for prompt, response in pairs]
