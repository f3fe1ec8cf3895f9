"""Send messages to nodes and collect their replies, polling the SuperLink briskly.

Flower's ``Grid.send_and_receive`` sleeps 3 s between polls on a real SuperLink (0.1 s in
simulation), so every exchange of a round ends up to 3 s after its last reply arrived.
A secure round has four exchanges; here the poll starts at a few milliseconds and doubles
up to ``MAX_POLL_S`` (Flower's own pace in simulation), so a quick exchange returns at once
and a long one costs a handful of polls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S = 0.005
MAX_POLL_S = 0.1


def send_and_collect(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Push ``messages``; return the replies that arrive within ``timeout`` seconds."""
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    pause = FIRST_POLL_S
    while waiting and time.monotonic() < deadline:
        arrived = list(grid.pull_messages(waiting))
        replies += arrived
        waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
        if waiting:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(2 * pause, MAX_POLL_S)
    return replies
