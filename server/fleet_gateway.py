"""The devices' only door into a Stamen server: Flower's Fleet API, and nothing else, on the advertised port.

Flower 1.42's SuperLink serves its Fleet, Control and runtime APIs on one HTTPS port. The
Control API starts runs (whose ServerApp code then runs on the server) and registers device
keys, and without Flower's account plugin anyone who can reach it may call it: holding the
public CA certificate is enough. So Stamen's SuperLink listens on loopback only, and this
gateway, on the port devices dial, terminates TLS with the server certificate and forwards
exactly the SuperLink's Fleet routes (POST, paths read from Flower's own Fleet router). Every
other path is refused before it reaches Flower. SuperNode authentication stays Flower's: the
signed headers pass through unchanged and the SuperLink checks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from flwr.superlink.routers.fleet.router import router as fleet_router
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

FLEET_ROUTES = frozenset(route.path for route in fleet_router.routes)  # /v1/fleet/<call>, all POST
MAX_REQUEST_BYTES = 512 * 2**20  # Flower sends large payloads as objects of a few MB each
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade",
                         "proxy-connection", "content-encoding"})


def gateway_app(upstream: str, ca_certificate: Path) -> Starlette:
    """The ASGI app: forward Fleet calls to ``upstream`` (https://127.0.0.1:<port>), refuse everything else."""
    verify = ssl.create_default_context(cafile=str(ca_certificate))
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(300.0))

    async def forward(request: Request) -> Response:
        if request.url.path not in FLEET_ROUTES or request.method != "POST":
            return PlainTextResponse("this port serves only Flower's Fleet API\n", status_code=404)
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_REQUEST_BYTES:
            return PlainTextResponse("request body missing its length or too large\n", status_code=413)
        body = await request.body()
        headers = {key: value for key, value in request.headers.items() if key.lower() not in _HOP_BY_HOP}
        reply = await client.post(request.url.path, content=body, headers=headers)
        return Response(reply.content, status_code=reply.status_code,
                        headers={key: value for key, value in reply.headers.items() if key.lower() not in _HOP_BY_HOP})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])],
                     lifespan=lifespan)


class FleetGateway:
    """The gateway on ``host:port``, served by uvicorn on a thread of the calling process (it stops with it)."""

    def __init__(self, host: str, port: int, upstream: str, certificate: Path, key: Path, ca_certificate: Path) -> None:
        config = uvicorn.Config(gateway_app(upstream, ca_certificate), host=host, port=port,
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
