"""A device keeps its base loaded between messages: one worker process per ``stamen client join``.

Flower's SuperNode runs every message in a fresh ``flwr-clientapp`` process, so a device that ran the
ClientApp there would load and quantise its base again for each train and evaluate message. Instead
``stamen client join`` starts this worker beside the SuperNode; in the SuperNode's environment
(``WORKER_ADDRESS`` set), Stamen's ClientApp is :func:`forwarding_app`, which hands each message and
its context to the worker over loopback (authenticated with a key only this device's state folder
holds) and returns the worker's reply and context. The worker runs the real ClientApp, whose
runtime keeps the base loaded for the whole session, and logs one line per round it trains in (one per
message with ``--verbose``: evaluations and secure-aggregation stages). Each connection is
served on a thread of its own that must finish the key handshake and send its message within
``HANDSHAKE_SECONDS``, so a local process that connects and stays silent stalls nobody; messages
themselves run one at a time.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from .log import describe, is_round_line

log = logging.getLogger("stamen.client.device.worker")  # also when run as __main__
WORKER_ADDRESS = "STAMEN_DEVICE_WORKER"  # environment of the SuperNode: the worker's host:port
WORKER_KEY = "STAMEN_DEVICE_WORKER_KEY"  # ... and the file holding the key that authenticates to it
WORKER_KEY_FILE = "worker.key"  # in the device's state folder, owner-only, while the worker runs
CONNECT_SECONDS = 120.0  # how long a message waits for a worker that is (re)starting
HANDSHAKE_SECONDS = 30.0  # how long a connection may take to authenticate and send its message


class WorkerFailed(RuntimeError):
    """The worker raised while handling a message; the message names the error."""


def start_worker(state_dir: Path, port: int, environment: dict[str, str], verbose: bool = False) -> subprocess.Popen:
    """The device's worker on 127.0.0.1:``port``, with a fresh key in ``state_dir`` (owner-only); ``verbose``: a
    line for every message, not only for each round's training."""
    key_path = state_dir / WORKER_KEY_FILE
    key_path.unlink(missing_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only from the first byte
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    worker_environment = {k: v for k, v in environment.items() if k not in (WORKER_ADDRESS, WORKER_KEY)}
    arguments = [sys.executable, "-m", __name__, str(port), str(key_path), *(["--verbose"] if verbose else [])]
    return subprocess.Popen(arguments, env=worker_environment)


def worker_environment(environment: dict[str, str], state_dir: Path, port: int) -> dict[str, str]:
    """The SuperNode's environment, pointing Stamen's ClientApp at the worker."""
    return {**environment, WORKER_ADDRESS: f"127.0.0.1:{port}", WORKER_KEY: str(state_dir / WORKER_KEY_FILE)}


def serve(port: int, key_path: Path, verbose: bool = False) -> None:
    """Answer messages, one at a time, for as long as the device stays joined."""
    from stamen.shared.commands import configure_logging

    from ..handlers import client_app_with

    configure_logging(verbose)  # one line per round (per message with --verbose); a library's repeated warning once
    app, key, one_at_a_time = client_app_with([]), key_path.read_bytes(), threading.Lock()
    with socket.create_server(("127.0.0.1", port)) as listener:
        log.debug("device worker ready on 127.0.0.1:%d", port)
        while True:
            accepted, _ = listener.accept()
            threading.Thread(target=_serve_connection, args=(app, accepted, key, one_at_a_time), daemon=True).start()


def _serve_connection(app: ClientApp, accepted: socket.socket, key: bytes, one_at_a_time: threading.Lock) -> None:
    """Authenticate one connection and read its message within ``HANDSHAKE_SECONDS``, then answer it."""
    seconds = int(HANDSHAKE_SECONDS)
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, 0))  # the fd's reads
    try:
        with Connection(accepted.detach()) as connection:
            deliver_challenge(connection, key)
            answer_challenge(connection, key)
            message, context = connection.recv()
            with one_at_a_time:
                _answer(app, connection, message, context)
    except (AuthenticationError, EOFError, OSError) as error:  # a stranger, a silent peer, or a process that died
        log.warning("a connection to the device worker failed: %s", error or type(error).__name__)


def _answer(app: ClientApp, connection: Connection, message: Message, context: Context) -> None:
    """Run one message through the ClientApp; send back its reply and context, or the error it raised."""
    started = time.perf_counter()
    try:
        reply = app(message, context)
    except Exception as error:  # the message's process reports it to the server as the task's error
        log.exception("%s message failed", message.metadata.message_type)
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    connection.send(("reply", (reply, context)))
    shown = logging.INFO if is_round_line(message, reply) else logging.DEBUG
    log.log(shown, describe(message, reply, time.perf_counter() - started))


def forwarding_app() -> ClientApp:
    """Stamen's ClientApp as the SuperNode runs it: every train and evaluate message goes to this device's worker."""
    app = ClientApp()
    app.train()(_forward)
    app.evaluate()(_forward)
    return app


def _forward(msg: Message, context: Context) -> Message:
    address, key = os.environ[WORKER_ADDRESS], Path(os.environ[WORKER_KEY]).read_bytes()
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        try:
            connection = Client((host, int(port)), authkey=key)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise WorkerFailed(f"no device worker answers on {address}") from None
            time.sleep(0.5)
    with connection:
        connection.send((msg, context))
        kind, answer = connection.recv()
    if kind == "error":
        raise WorkerFailed(answer)
    reply, worked_context = answer
    context.state = worked_context.state  # secure aggregation keeps its secrets there between stages
    return reply


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for `stamen client join`, which stops the worker
    serve(int(sys.argv[1]), Path(sys.argv[2]), verbose="--verbose" in sys.argv[3:])
