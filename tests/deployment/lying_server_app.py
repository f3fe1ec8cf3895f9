"""A ServerApp that lies to Stamen's devices: Stamen's own round loop on a grid that rewrites its messages.

``test_lying_server.py`` runs it on a real SuperLink, importable there through PYTHONPATH (never in the app bundle
the devices receive, which may hold no code). Its run config is the signed run; each round tells one lie:

1. keys of its own in every device's peer list (share stage);
2. nothing: an honest secure round, which the devices release;
3. round 2's train message again (its server round set back to 2);
4. ``noise-std = 0`` in the mask stage's record;
5. a config the operator signed for another run (``STAMEN_OTHER_SIGNED_CONFIG``: a JSON file) in the train message.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from stamen.server.app import _log_through_flower
from stamen.server.federation import run_federation
from stamen.shared.config import RunConfig
from stamen.shared.protocol import CONFIG, FINGERPRINT, SERVER_ROUND
from stamen.shared.secagg_crypto import new_private_key, public_bytes
from stamen.shared.secagg_protocol import MASK_STAGE, PEERS, SECAGG, SHARE_STAGE, PeerEntry

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_through_flower()
    other = json.loads(Path(os.environ["STAMEN_OTHER_SIGNED_CONFIG"]).read_text())
    run_federation(LyingGrid(grid, other), RunConfig.from_flat(context.run_config))


class LyingGrid(Grid):
    """``grid``, with every message rewritten by :meth:`lie` before it is pushed."""

    def __init__(self, grid: Grid, other_config: dict) -> None:
        self._grid, self._other = grid, other_config

    def lie(self, message: Message) -> Message:
        content = message.content
        stage = str(content[SECAGG]["stage"]) if SECAGG in content.config_records else None
        server_round = int(content[SECAGG]["server-round"]) if stage else int(content[CONFIG][SERVER_ROUND])
        if server_round == 1 and stage == SHARE_STAGE:
            content[PEERS] = ConfigRecord({node: dataclasses.replace(
                PeerEntry.from_bytes(bytes(entry)), encryption_key=public_bytes(new_private_key()),
                mask_key=public_bytes(new_private_key())).to_bytes() for node, entry in content[PEERS].items()})
        elif server_round == 3 and stage is None and message.metadata.message_type == MessageType.TRAIN:
            content[CONFIG][SERVER_ROUND] = 2
        elif server_round == 4 and stage == MASK_STAGE:
            content[SECAGG]["noise-std"] = 0.0
        elif server_round == 5 and stage is None:
            content[CONFIG] = ConfigRecord({**self._other, FINGERPRINT: content[CONFIG][FINGERPRINT],
                                            SERVER_ROUND: server_round})
        return message

    @property
    def run(self):
        return self._grid.run

    def set_run(self, run_id: int) -> None:
        self._grid.set_run(run_id)

    def create_message(self, *args, **kwargs) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self, *args, **kwargs):
        return self._grid.get_nodes(*args, **kwargs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages([self.lie(message) for message in messages])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive([self.lie(message) for message in messages], timeout=timeout)
