"""`tls_cert` / `tls_key`: the server speaks HTTPS and WSS, never silently plain HTTP."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.procs import Procs, server_config


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_serve_over_tls(procs: Procs, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    testlog = procs.testlog("--initial-size", "2")
    config = server_config(tmp_path, f"{testlog.url}/log_list.json")
    config.update(tls_cert=str(cert), tls_key=str(key))
    server = procs.serve(config)
    assert server.url.startswith("https://")
    trust = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/health", ssl=trust) as r:
            assert r.status == 200 and await r.text() == "OK"
        wss = server.url.replace("https", "wss", 1) + "/full-stream"
        async with s.ws_connect(wss, ssl=trust, heartbeat=None) as ws:
            msg = orjson.loads((await ws.receive(timeout=10)).data)
            assert msg["message_type"] == "heartbeat"
        plain = server.url.replace("https", "http", 1)
        try:
            async with s.get(f"{plain}/health") as r:
                assert r.status >= 400  # a plain HTTP request is not served as if it were fine
        except aiohttp.ClientError:
            pass
