"""A joined device notices the server going away and leaves after ``--wait-for-server`` seconds of silence."""

import socket
import time

from stamen.client.device.deployment import ServerWatch
from stamen.shared.flower_tools import free_port


def test_a_device_leaves_only_after_the_server_was_silent_for_its_patience_and_a_reply_resets_it():
    port = free_port()
    watch = ServerWatch(f"127.0.0.1:{port}", patience=0.5)
    assert not watch.answers() and not watch.gone()  # silent, but not for long yet
    time.sleep(0.6)
    assert not watch.answers() and watch.gone()
    with socket.create_server(("127.0.0.1", port)):
        assert watch.answers() and not watch.gone()  # the server is back: the silence starts over
    assert not watch.answers() and not watch.gone()
