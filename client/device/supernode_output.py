"""What a device prints of its SuperNode's output, and whether the server turned the device away.

Flower's SuperNode logs each message it receives and sends at INFO, and each reconnection attempt at WARNING
("Connection attempt failed, retrying"): a device printed hundreds of lines for a few rounds, and kept printing
after the run ended. Those pass only with ``--verbose``; Flower's other warnings and errors always pass, once the
SuperNode has joined (``SuperNode ID: ...``). Until then its lines are held back: a join the server refuses
(a ``--ca`` that did not sign the server's certificate, a key the server never registered) ends in Flower's block
of a dozen lines, which :class:`SuperNodeOutput` recognises and replaces by one line of Stamen's
(:data:`REFUSALS`); any other failed join shows its held lines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import IO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:")
JOINED = "SuperNode ID:"
NOISE = ("Connection attempt failed, retrying",)
# a phrase of Flower's refusal -> what the device was told, and what to do ({ca}, {key} filled in)
REFUSALS = {
    "certificate verify failed": "the server's certificate is not signed by --ca {ca}: give the ca.crt that signed "
                                 "the server's certificate",
    "Failed to activate SuperNode": "the server does not know this device's key {key}: the server's operator "
                                    "registers its public key (stamen certs --node NAME makes the pair)",
}


class SuperNodeOutput:
    """Reads one SuperNode's combined output on a thread; ``echo`` gets each line shown."""

    def __init__(self, stream: IO[bytes], verbose: bool, echo: Callable[[str], None]) -> None:
        self.verbose, self.echo = verbose, echo
        self.joined, self.refusal, self.muted = False, None, False
        self._held: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        level = "INFO"
        for raw in stream:
            line = ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip()
            if match := LEVEL.match(line):
                level = match.group(1)  # a line without a level continues the record above it
            self._see(line, level)

    def _see(self, line: str, level: str) -> None:
        with self._lock:
            self.refusal = next((phrase for phrase in REFUSALS if phrase in line), self.refusal)
            if JOINED in line and not self.joined:
                self.joined = True
                self._show(self._held)
                self._held = []
            if self.verbose or (level not in ("DEBUG", "INFO") and not any(noise in line for noise in NOISE)):
                if self.joined:
                    self._show([line])
                else:
                    self._held.append(line)

    def _show(self, lines: list[str]) -> None:
        if not self.muted:
            for line in lines:
                self.echo(line)

    def mute(self) -> None:
        """Show nothing more: the device is stopping the SuperNode (its interrupt traceback is not news)."""
        with self._lock:
            self.muted = True

    def finish(self) -> str | None:
        """Once the SuperNode exited: the refusal phrase (see :data:`REFUSALS`) its output ended on, or None, the
        held lines then shown."""
        self._thread.join(timeout=10)
        with self._lock:
            if self.refusal is None:
                self._show(self._held)
            self._held = []
            return self.refusal
