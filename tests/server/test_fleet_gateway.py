"""The devices' door (server/fleet_gateway.py): Fleet routes only, and a size limit on every body, whether it
declares its length or streams in chunks: a few KiB without a registered device's signature."""

from __future__ import annotations

import asyncio
import base64
import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

from stamen.server.fleet_gateway import FLEET_ROUTES, UNAUTHENTICATED_BYTES, gateway_app

LIMIT = 2**20
CHUNK = 64 * 2**10
FLEET_CALL = sorted(FLEET_ROUTES)[0]


def _signed_headers(key: ec.EllipticCurvePrivateKey, age_seconds: float = 0.0) -> dict[str, str]:
    """Flower's SuperNode authentication headers: its public key and its signature of a timestamp."""
    timestamp = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age_seconds)).isoformat()
    return {"flwr-public-key": base64.b64encode(public_key_to_bytes(key.public_key())).decode(),
            "flwr-timestamp": timestamp,
            "flwr-signature": base64.b64encode(sign_message(key, timestamp.encode("ascii"))).decode()}


def _post(app, path: str, headers: dict[str, str], body_bytes: int) -> tuple[int, int]:
    """The status of one POST whose body streams in 64 KiB chunks, and how many body bytes the gateway read."""
    pending, read = [b"x" * CHUNK] * (body_bytes // CHUNK), 0
    status: dict[str, int] = {}

    async def receive() -> dict:
        nonlocal read
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop()
        read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "http_version": "1.1", "scheme": "https", "server": ("127.0.0.1", 9091),
             "client": ("127.0.0.1", 50000), "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    return status["code"], read


def test_a_body_is_read_only_up_to_the_limit_however_it_is_sent_and_a_few_kib_without_a_registered_key(tmp_path):
    """Issue: a chunked body (no Content-Length) went past the size limit and was buffered whole before
    authentication (3 MiB through a 1 MiB limit)."""
    device, stranger = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    registered = device.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    ca = tmp_path / "ca.crt"
    ca.write_text(_self_signed_ca())
    app = gateway_app("https://127.0.0.1:1", ca, [registered], max_request_bytes=LIMIT)
    three_mib = 3 * LIMIT
    status, read = _post(app, FLEET_CALL, _signed_headers(device), three_mib)
    assert status == 413 and LIMIT < read <= LIMIT + CHUNK  # stopped one chunk past the limit
    declared = {**_signed_headers(device), "content-length": str(three_mib)}
    assert _post(app, FLEET_CALL, declared, three_mib) == (413, 0)  # refused by what it declares, unread
    for headers in ({}, _signed_headers(stranger), _signed_headers(device, age_seconds=3600)):
        status, read = _post(app, FLEET_CALL, headers, three_mib)  # unsigned, a stranger's key, a stale signature
        assert status == 413 and read <= UNAUTHENTICATED_BYTES + CHUNK
    assert _post(app, "/v1/control/start-run", _signed_headers(device), CHUNK) == (404, 0)


def _self_signed_ca() -> str:
    """A CA certificate for the gateway's upstream client (never dialled here)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()
