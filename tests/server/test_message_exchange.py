"""The server's exchanges: replies collected within the timeout, and progress said while a long one waits."""

import logging
import time

import pytest
from flwr.app import Message, RecordDict

from stamen.server import message_exchange
from stamen.server.message_exchange import send_and_collect

pytestmark = pytest.mark.usefixtures("flower_task_identity")


class SlowGrid:
    """Replies to each message ``delays[i]`` seconds after the push (message ``i``); ``None``: never."""

    def __init__(self, delays: list[float | None]) -> None:
        self.delays, self.pushed = delays, {}

    def push_messages(self, messages):
        ids = []
        for index, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{index}"
            self.pushed[f"m{index}"] = (time.monotonic(), self.delays[index], message)
            ids.append(f"m{index}")
        return ids

    def pull_messages(self, ids):
        now, replies = time.monotonic(), []
        for message_id in ids:
            pushed, delay, message = self.pushed[message_id]
            if delay is not None and now - pushed >= delay:
                replies.append(Message(RecordDict(), reply_to=message))
        return replies


def _messages(count: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type="train") for node in range(1, count + 1)]


def test_a_long_exchange_says_how_many_replied_and_for_how_long_and_a_quick_one_says_nothing(monkeypatch, caplog):
    monkeypatch.setattr(message_exchange, "PROGRESS_EVERY_S", 0.3)
    caplog.set_level(logging.INFO, logger="stamen.server.message_exchange")
    replies = send_and_collect(SlowGrid([0.0, 1.0, None]), _messages(3), timeout=1.6, activity="round 2 training")
    assert len(replies) == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "stamen.server.message_exchange"]
    assert lines and all(line.startswith("round 2 training: ") for line in lines)
    assert lines[0].startswith("round 2 training: 1 of 3 replied, waiting") and lines[0].endswith("of at most 2")
    assert any(line.startswith("round 2 training: 2 of 3 replied") for line in lines)  # after the second reply
    assert len(lines) <= 5  # one per 0.3 s of a 1.6 s wait
    caplog.clear()
    assert len(send_and_collect(SlowGrid([0.0, 0.0]), _messages(2), timeout=5.0)) == 2
    assert not [r for r in caplog.records if r.name == "stamen.server.message_exchange"]
