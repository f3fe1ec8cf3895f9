"""Anchor replay, server half: send the anchor set with a node's instructions until the node has it.

A node counts as holding the set once it has replied to an instruction that carried
it; later instructions to it go without, so each node downloads the set once per run
(again after a server restart, which forgets who has it; clients accept a repeat).
A server extension: it adds the set to train messages and learns holders from replies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Message, RecordDict

from stamen.shared.anchor_set import ANCHOR, anchor_digest, anchor_record, encode_anchor
from stamen.shared.config import RunConfig

from .extensions import ServerExtension

log = logging.getLogger(__name__)


def pin_anchor(config: RunConfig) -> RunConfig:
    """``config`` naming the sha256 of its anchor set, which clients check the set against (no anchor: as is);
    the operator signs a config only once its anchor is pinned."""
    if "anchor" not in config.replay.enabled():
        return config
    digest = AnchorDistribution.load(config.replay.anchor, config.seed).sha256
    return config.replace(**{"replay-anchor-sha256": digest})


class AnchorDistribution(ServerExtension):
    def __init__(self, blob: bytes) -> None:
        self.sha256 = anchor_digest(blob)
        self.nbytes = len(blob)
        self._record = anchor_record(blob)
        self._holders: set[int] = set()

    @classmethod
    def load(cls, source: str, seed: int) -> AnchorDistribution:
        """The set from ``source`` (a .jsonl/.csv file on the server) or, if empty, the embedded corpus's."""
        if source:
            from stamen.shared.device_data import read_examples

            examples = read_examples(Path(source).expanduser())
        else:
            from stamen.shared.corpus import natural_split

            examples = list(natural_split(1, seed).anchor)
        distribution = cls(encode_anchor([(e.prompt, e.response) for e in examples]))
        log.info(
            "Anchor set: %d examples, %d bytes, sha256 %s", len(examples), distribution.nbytes, distribution.sha256[:12]
        )
        return distribution

    def configure(self, messages: list[Message], phase: str) -> list[Message]:
        return self.attach(messages) if phase == "train" else messages

    def start_round(self, server_round: int, global_adapter, replies: list[Message]) -> None:
        self.confirm(replies)

    def attach(self, messages: list[Message]) -> list[Message]:
        """The messages, those to nodes without the set given their own content that carries it."""
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self._holders:
                out.append(msg)
                continue
            content = RecordDict({**msg.content, ANCHOR: self._record})  # Flower's messages share one content
            out.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type))
        return out

    def confirm(self, replies: Iterable[Message]) -> None:
        """Nodes that answered a train instruction without error hold the set (it went with it unless they had it)."""
        self._holders.update(reply.metadata.src_node_id for reply in replies if not reply.has_error())
