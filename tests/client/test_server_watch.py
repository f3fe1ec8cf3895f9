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


def test_a_device_no_server_ever_answered_stops_with_an_error_naming_the_address_and_leaves_no_process(tmp_path):
    import psutil
    import pytest

    from stamen.client.device.deployment import DeviceSetup, ServerNeverAnswered, stay_joined

    data = tmp_path / "notes.jsonl"
    data.write_text('{"prompt": "Hi?", "response": "Hello."}\n')
    address = f"127.0.0.1:{free_port()}"
    device = DeviceSetup(address, data, data, data, tmp_path / "state", "device")  # never joins: CA, key unread
    before = set(psutil.Process().children(recursive=True))
    with pytest.raises(ServerNeverAnswered, match=f"no server answered at {address} in 1 s: check --server"):
        stay_joined(device, wait_for_server=1.0, poll_seconds=0.2)
    assert set(psutil.Process().children(recursive=True)) == before  # the device's worker stopped with it
