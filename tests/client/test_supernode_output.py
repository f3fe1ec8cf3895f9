"""A device shows Flower's warnings and errors, not its chatter, and recognises a refusal in Flower's words."""

import io

from stamen.client.device.supernode_output import SuperNodeOutput

# what flower-supernode 1.42 printed, colours included, given a --ca that did not sign the server's certificate
WRONG_CA = """\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode
INFO:     Started server process [11417]
INFO:     Uvicorn running on http://127.0.0.1:19999 (Press CTRL+C to quit)
\x1b[91mERROR \x1b[0m:     SSL/TLS handshake error detected.
\x1b[91mERROR \x1b[0m:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate signature failure (_ssl.c:1006)
The SuperNode could not establish a connection to the SuperLink.
INFO:     Shutting down
"""
JOINED = """\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode
\x1b[92mINFO \x1b[0m:      SuperNode ID: 42
\x1b[92mINFO \x1b[0m:      [RUN 7]
\x1b[92mINFO \x1b[0m:      Receiving: train message (ID: abc)
\x1b[93mWARNING \x1b[0m:   the ClientApp took long
\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in 0.41 seconds
\x1b[91mERROR \x1b[0m:     something Flower could not do
  with its detail on the next line
"""


def test_a_refused_join_shows_none_of_flowers_block_and_names_the_refusal():
    lines: list[str] = []
    output = SuperNodeOutput(io.BytesIO(WRONG_CA.encode()), False, lines.append)
    assert output.finish() == "certificate verify failed" and lines == []


def test_a_joined_supernode_shows_warnings_and_errors_with_their_detail_and_not_its_chatter():
    lines: list[str] = []
    output = SuperNodeOutput(io.BytesIO(JOINED.encode()), False, lines.append)
    assert output.finish() is None
    assert lines == ["WARNING :   the ClientApp took long", "ERROR :     something Flower could not do",
                     "  with its detail on the next line"]
    everything: list[str] = []
    assert SuperNodeOutput(io.BytesIO(JOINED.encode()), True, everything.append).finish() is None
    assert len(everything) == 8 and "Receiving: train message" in everything[3]  # --verbose: every line


def test_a_failed_join_that_is_no_refusal_shows_what_it_held_back_and_a_muted_output_shows_nothing():
    failing = "\x1b[91mERROR \x1b[0m:     Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n"
    lines: list[str] = []
    assert SuperNodeOutput(io.BytesIO(failing.encode()), False, lines.append).finish() is None
    assert lines == ["ERROR :     Exit Code: 305", "Failed to initialize the connection to the SuperLink."]
    muted: list[str] = []
    output = SuperNodeOutput(io.BytesIO(failing.encode()), False, muted.append)
    output.mute()
    assert output.finish() is None and muted == []
