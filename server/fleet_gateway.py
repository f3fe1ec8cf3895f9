"""The devices' only door into a Stamen server: Flower's Fleet API, and nothing else, on the advertised port.

Flower 1.42's SuperLink serves its Fleet, Control and runtime APIs on one HTTPS port. The
Control API starts runs (whose ServerApp code then runs on the server) and registers device
keys, and without Flower's account plugin anyone who can reach it may call it: holding the
public CA certificate is enough. So Stamen's SuperLink listens on loopback only, and this
gateway, on the port devices dial, terminates TLS with the server certificate and forwards
exactly the SuperLink's Fleet routes (POST, paths read from Flower's own Fleet router). Every
other path is refused before it reaches Flower. A body is read only up to a limit, whether it declares
its length or streams in chunks: the full limit for a call carrying Flower's SuperNode authentication
headers of a registered device key (a fresh timestamp it signed), a few KiB for any other (a device's
first calls, and a stranger's, are that small, and the SuperLink answers them as Flower does), so no one
without a registered key makes the gateway hold more. The SuperLink checks the headers itself, with
which node a key belongs to.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import datetime
import logging
import ssl
import threading
import time
from base64 import b64decode
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import httpx
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
from flwr.superlink.routers.fleet.router import router as fleet_router
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

FLEET_ROUTES = frozenset(route.path for route in fleet_router.routes)  # /v1/fleet/<call>, all POST
MAX_REQUEST_BYTES = 512 * 2**20  # Flower sends large payloads as objects of a few MB each
UNAUTHENTICATED_BYTES = 64 * 2**10  # a call not signed by a registered key: registering, activating, refusals
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade",
                         "proxy-connection", "content-encoding"})


def gateway_app(upstream: str, ca_certificate: Path, node_keys: Collection[bytes] | None = None,
                max_request_bytes: int = MAX_REQUEST_BYTES) -> Starlette:
    """The ASGI app: forward Fleet calls to ``upstream`` (https://127.0.0.1:<port>), refuse everything else;
    a body of more than ``UNAUTHENTICATED_BYTES`` only from a call signed by one of ``node_keys`` (DER public keys
    of the registered devices; None: any caller)."""
    verify = ssl.create_default_context(cafile=str(ca_certificate))
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(300.0))
    registered = frozenset(node_keys) if node_keys is not None else None

    async def forward(request: Request) -> Response:
        if request.url.path not in FLEET_ROUTES or request.method != "POST":
            return PlainTextResponse("this port serves only Flower's Fleet API\n", status_code=404)
        trusted = registered is None or _signed_by_registered_key(request, registered)
        limit = max_request_bytes if trusted else min(max_request_bytes, UNAUTHENTICATED_BYTES)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return PlainTextResponse("request body too large\n", status_code=413)
        body = bytearray()
        async for chunk in request.stream():  # a chunked body has no declared length: count as it arrives
            body += chunk
            if len(body) > limit:
                return PlainTextResponse("request body too large\n", status_code=413)
        headers = {key: value for key, value in request.headers.items() if key.lower() not in _HOP_BY_HOP}
        reply = await client.post(request.url.path, content=bytes(body), headers=headers)
        return Response(reply.content, status_code=reply.status_code,
                        headers={key: value for key, value in reply.headers.items() if key.lower() not in _HOP_BY_HOP})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])],
                     lifespan=lifespan)


def registered_key(public_key_file: Path) -> bytes:
    """A device's OpenSSH public key (``nodes/<name>.pub``) as the DER bytes the gateway compares."""
    key = serialization.load_ssh_public_key(public_key_file.read_bytes())
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by_registered_key(request: Request, registered: frozenset[bytes]) -> bool:
    """Flower's SuperNode headers: a registered key's ECDSA signature of a timestamp within Flower's tolerance."""
    try:
        key = serialization.load_pem_public_key(b64decode(request.headers[FLEET_HTTP_PUBLIC_KEY_HEADER],
                                                          validate=True))
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        timestamp = request.headers[TIMESTAMP_HEADER]
        age = (datetime.datetime.now(datetime.UTC) - datetime.datetime.fromisoformat(timestamp)).total_seconds()
        if der not in registered or not isinstance(key, ec.EllipticCurvePublicKey) or \
                not -SYSTEM_TIME_TOLERANCE < age < TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE:
            return False
        key.verify(b64decode(request.headers[FLEET_HTTP_SIGNATURE_HEADER], validate=True), timestamp.encode("ascii"),
                   ec.ECDSA(hashes.SHA256()))
    except (KeyError, ValueError, TypeError, UnicodeError, binascii.Error, InvalidSignature):
        return False
    return True


class FleetGateway:
    """The gateway on ``host:port``, served by uvicorn on a thread of the calling process (it stops with it)."""

    def __init__(self, host: str, port: int, upstream: str, certificate: Path, key: Path, ca_certificate: Path,
                 node_keys: Collection[bytes] | None = None) -> None:
        config = uvicorn.Config(gateway_app(upstream, ca_certificate, node_keys), host=host, port=port,
                                ssl_certfile=str(certificate), ssl_keyfile=str(key), log_level="warning",
                                access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="fleet-gateway", daemon=True)
        self.address = f"{host}:{port}"

    def _serve(self) -> None:
        asyncio.run(self._server.serve())  # serve() skips signal handlers: the CLI's own Ctrl-C handling stays

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the Fleet gateway could not listen on {self.address} (port in use?)")
            time.sleep(0.05)
        log.info("Fleet gateway on %s (TLS): devices' Fleet API only", self.address)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
