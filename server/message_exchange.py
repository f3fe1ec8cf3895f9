"""Send messages to nodes and collect their replies, polling the SuperLink briskly.

Flower's ``Grid.send_and_receive`` sleeps 3 s between polls on a real SuperLink (0.1 s in
simulation), so every exchange of a round ends up to 3 s after its last reply arrived.
A secure round has four exchanges; here the poll starts at a few milliseconds and doubles
up to ``MAX_POLL_S`` (Flower's own pace in simulation), so a quick exchange returns at once
and a long one costs a handful of polls. An exchange that waits long says so every ``PROGRESS_EVERY_S``
(how many replied, how long it has waited): a round on CPU devices takes minutes, and the person running the
server should not wonder whether it hangs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid

log = logging.getLogger(__name__)
FIRST_POLL_S = 0.005
MAX_POLL_S = 0.1
PROGRESS_EVERY_S = 60.0


def send_and_collect(grid: Grid, messages: Iterable[Message], timeout: float, activity: str = "exchange"
                     ) -> list[Message]:
    """Push ``messages``; return the replies that arrive within ``timeout`` seconds. ``activity`` names the
    exchange in progress lines ("round 2 training").

    A node that went away gets no reply in the list (it counts as without reply, not as a client
    that answered with an error): the SuperLink's stand-in error for it is logged under the node's id.
    """
    messages = list(messages)
    waiting = set(grid.push_messages(messages))
    node_of = {message.metadata.message_id: message.metadata.dst_node_id for message in messages}  # ids set by push
    started = time.monotonic()
    deadline, next_progress = started + timeout, started + PROGRESS_EVERY_S
    replies: list[Message] = []
    pause = FIRST_POLL_S
    while waiting and time.monotonic() < deadline:
        if time.monotonic() >= next_progress:
            log.info("%s: %d of %d replied, waiting %.0f s of at most %.0f", activity, len(messages) - len(waiting),
                     len(messages), time.monotonic() - started, timeout)
            next_progress += PROGRESS_EVERY_S
        arrived = list(grid.pull_messages(waiting))
        waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
        for reply in arrived:
            if _lost(reply):
                log.warning("node %s did not reply: %s", node_of.get(reply.metadata.reply_to_message_id, "?"),
                            reply.error.reason)
            else:
                replies.append(reply)
        if waiting:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(2 * pause, MAX_POLL_S)
    return replies


def _lost(reply: Message) -> bool:
    """The SuperLink's error for a node that stopped answering, not the node's own reply."""
    return (reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID
            and reply.error.code in (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE))
