"""The test log over real loopback HTTP, read with aiohttp's client and certlake's CT decoders."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import time
import zlib
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from cryptography import x509

from certlake.ct.checkpoint import Checkpoint, verify_checkpoint
from certlake.ct.compact import from_hash_tiles, hash_tiles_for
from certlake.ct.leaf import decode_rfc6962_entry
from certlake.ct.merkle import (
    TileRef,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from certlake.ct.sth import SignedTreeHead, verify_sth
from certlake.ct.tile import data_tile_path, decode_data_tile, hash_tile_path
from certlake.ct.tls import DecodeError
from certlake.ct.urls import checkpoint_origin
from certlake.testlog.certs import CertFactory
from certlake.testlog.faults import Fault
from certlake.testlog.log import lied_leaf_hash
from certlake.testlog.pool import logged
from certlake.testlog.server import TestLogServer

pytestmark = pytest.mark.timeout(60)


def root_tiles(size: int) -> list[TileRef]:
    return hash_tiles_for(0, size, size)


def root_from_tile_hashes(size: int, tiles: dict[tuple[int, int], bytes]) -> bytes:
    return from_hash_tiles(0, size, tiles).root()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def srv() -> AsyncIterator[TestLogServer]:
    async with TestLogServer(seed=3, initial_size=700, batch_cap=100, pool_size=150) as server:
        yield server


async def _json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _raw(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url, auto_decompress=False) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def _listed(http: aiohttp.ClientSession, srv: TestLogServer) -> dict[str, dict[str, Any]]:
    """The log list's entries keyed by log name (from the URL path)."""
    doc = await _json(http, srv.log_list_url)
    (op,) = doc["operators"]
    out = {item["url"].rstrip("/").rsplit("/", 1)[1]: item for item in op["logs"]}
    for item in op["tiled_logs"]:
        out[item["submission_url"].rstrip("/").rsplit("/", 1)[1]] = item
    return out


async def _sth(http: aiohttp.ClientSession, srv: TestLogServer) -> SignedTreeHead:
    return SignedTreeHead.from_json(await _json(http, srv.rfc6962_url + "/ct/v1/get-sth"))


async def _stats(http: aiohttp.ClientSession, srv: TestLogServer) -> Any:
    return await _json(http, srv.base_url + "/admin/stats")


async def _set_faults(http: aiohttp.ClientSession, srv: TestLogServer, *specs: str) -> None:
    async with http.post(srv.base_url + "/admin/faults", json={"faults": list(specs)}) as resp:
        assert resp.status == 200, await resp.text()


# --- the log list and signatures ---------------------------------------------------------------


async def test_log_list_describes_both_logs(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    listed = await _listed(http, srv)
    assert set(listed) == {"rfc6962", "static"}
    for item in listed.values():
        key = base64.b64decode(item["key"])
        assert base64.b64decode(item["log_id"]) == hashlib.sha256(key).digest()
        assert "usable" in item["state"]
    assert listed["rfc6962"]["url"] == srv.rfc6962_url + "/"
    assert listed["static"]["monitoring_url"] == srv.static_url + "/"
    assert listed["static"]["submission_url"] != listed["static"]["monitoring_url"]


async def test_get_sth_verifies_with_the_listed_key(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    key = base64.b64decode((await _listed(http, srv))["rfc6962"]["key"])
    sth = await _sth(http, srv)
    verify_sth(sth, key)
    assert sth.tree_size == 700
    assert abs(sth.timestamp_ms - time.time() * 1000) < 60_000


async def test_checkpoint_verifies_with_origin_from_the_submission_url(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    item = (await _listed(http, srv))["static"]
    status, body, headers = await _raw(http, srv.static_url + "/checkpoint")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    cp = verify_checkpoint(
        body, checkpoint_origin(item["submission_url"]), base64.b64decode(item["key"])
    )
    assert cp.tree_size == 700


# --- RFC 6962 -----------------------------------------------------------------------------------


async def test_get_entries_decode_and_prove_inclusion(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    sth = await _sth(http, srv)
    base = srv.rfc6962_url + "/ct/v1"
    entries: list[Any] = []
    while len(entries) < sth.tree_size:
        got = await _json(http, f"{base}/get-entries?start={len(entries)}&end={sth.tree_size - 1}")
        assert 1 <= len(got["entries"]) <= 100  # the batch cap
        entries += got["entries"]
    for i, item in enumerate(entries):
        leaf = base64.b64decode(item["leaf_input"])
        entry = decode_rfc6962_entry(i, leaf, base64.b64decode(item["extra_data"]))
        x509.load_der_x509_certificate(entry.cert_der)  # a real certificate (or precert)
        assert [c.issuer for c in map(x509.load_der_x509_certificate, entry.chain)] != []
        if i % 97 == 0:
            h = quote(base64.b64encode(leaf_hash(leaf)).decode())
            proof = await _json(
                http, f"{base}/get-proof-by-hash?hash={h}&tree_size={sth.tree_size}"
            )
            assert proof["leaf_index"] == i
            path = [base64.b64decode(p) for p in proof["audit_path"]]
            assert verify_inclusion(i, sth.tree_size, leaf_hash(leaf), path, sth.root_hash)
    one = await _json(http, f"{base}/get-entry-and-proof?leaf_index=123&tree_size={sth.tree_size}")
    assert one["leaf_input"] == entries[123]["leaf_input"]
    path = [base64.b64decode(p) for p in one["audit_path"]]
    lh = leaf_hash(base64.b64decode(one["leaf_input"]))
    assert verify_inclusion(123, sth.tree_size, lh, path, sth.root_hash)


@pytest.mark.parametrize(
    "query",
    ["start=700&end=800", "start=5&end=4", "start=-1&end=3", "start=a&end=3", "end=3"],
)
async def test_get_entries_bad_ranges_are_400(
    http: aiohttp.ClientSession, srv: TestLogServer, query: str
) -> None:
    status, _, _ = await _raw(http, f"{srv.rfc6962_url}/ct/v1/get-entries?{query}")
    assert status == 400


async def test_get_entries_clamps_and_aligns(http: aiohttp.ClientSession) -> None:
    async with TestLogServer(initial_size=300, batch_cap=64, align=True, pool_size=50) as s:
        base = s.rfc6962_url + "/ct/v1/get-entries"
        assert len((await _json(http, f"{base}?start=10&end=999"))["entries"]) == 54
        assert len((await _json(http, f"{base}?start=64&end=999"))["entries"]) == 64
        assert len((await _json(http, f"{base}?start=290&end=999"))["entries"]) == 10


async def test_get_entries_aligned_like_google(http: aiohttp.ClientSession) -> None:
    async with TestLogServer(initial_size=300, batch_cap=32, align=True, pool_size=50) as s:
        base = s.rfc6962_url + "/ct/v1/get-entries"
        block = (await _json(http, f"{base}?start=0&end=255"))["entries"]
        assert len(block) == 32
        tail = (await _json(http, f"{base}?start=30&end=255"))["entries"]
        assert tail == block[30:]  # entries 30 and 31: the answer ends with the block
        assert len((await _json(http, f"{base}?start=32&end=63"))["entries"]) == 32
        assert len((await _json(http, f"{base}?start=40&end=50"))["entries"]) == 11


async def test_consistency_between_two_published_sizes(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    old = await _sth(http, srv)
    srv.grow(333)
    new = await _sth(http, srv)
    assert new.tree_size == old.tree_size + 333
    url = (
        f"{srv.rfc6962_url}/ct/v1/get-sth-consistency?first={old.tree_size}&second={new.tree_size}"
    )
    proof = [base64.b64decode(h) for h in (await _json(http, url))["consistency"]]
    assert verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, proof)
    assert not verify_consistency(old.tree_size, new.tree_size, new.root_hash, new.root_hash, proof)


async def test_get_roots_lists_the_chain_root(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    entry = (await _json(http, srv.rfc6962_url + "/ct/v1/get-entries?start=0&end=0"))["entries"][0]
    chain = decode_rfc6962_entry(
        0, base64.b64decode(entry["leaf_input"]), base64.b64decode(entry["extra_data"])
    ).chain
    roots = (await _json(http, srv.rfc6962_url + "/ct/v1/get-roots"))["certificates"]
    assert base64.b64encode(chain[-1]).decode() in roots
    root = x509.load_der_x509_certificate(chain[-1])
    assert root.subject == root.issuer


# --- static-ct-api ------------------------------------------------------------------------------


async def test_data_tiles_are_gzip_and_match_the_hash_tiles_and_checkpoint(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    mon = srv.static_url
    _, cp_body, _ = await _raw(http, mon + "/checkpoint")
    size = int(cp_body.split(b"\n")[1])
    assert size == 700
    leaves = []
    for n, width in [(0, 256), (1, 256), (2, 188)]:
        status, body, headers = await _raw(http, f"{mon}/{data_tile_path(n, width)}")
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        tile = decode_data_tile(gzip.decompress(body), n, width)
        assert len(tile) == width
        leaves += tile
    assert [leaf.index for leaf in leaves] == list(range(700))
    # Level-0 hash tiles hold exactly the data tiles' leaf hashes.
    level0 = b""
    for n, width in [(0, 256), (1, 256), (2, 188)]:
        status, body, headers = await _raw(http, f"{mon}/{hash_tile_path(0, n, width)}")
        assert status == 200 and "Content-Encoding" not in headers
        level0 += body
    assert level0 == b"".join(leaf_hash(leaf.leaf_input) for leaf in leaves)
    # The checkpoint root is what the tiles add up to.
    tiles = {}
    for ref in root_tiles(size):
        _, body, _ = await _raw(http, f"{mon}/{hash_tile_path(ref.level, ref.index, ref.width)}")
        tiles[(ref.level, ref.index)] = body
    assert base64.b64encode(root_from_tile_hashes(size, tiles)) == cp_body.split(b"\n")[2]


async def test_partial_tiles_have_the_right_width_and_tiles_beyond_the_tree_404(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    mon = srv.static_url
    _, body, _ = await _raw(http, f"{mon}/tile/1/000.p/2")
    assert len(body) == 2 * 32
    for path in [
        data_tile_path(2),  # not full yet
        data_tile_path(2, 189),
        data_tile_path(3, 1),
        hash_tile_path(1, 0, 3),
        hash_tile_path(2, 0, 1),
        "tile/data/2.p/5",  # not a canonical path
    ]:
        status, _, _ = await _raw(http, f"{mon}/{path}")
        assert status == 404, path
    # A grown log publishes the full tile; the old partial may still be read.
    srv.grow(68)
    assert (await _raw(http, f"{mon}/{data_tile_path(2)}"))[0] == 200
    assert (await _raw(http, f"{mon}/{data_tile_path(2, 188)}"))[0] == 200


async def test_issuer_fingerprints_resolve(http: aiohttp.ClientSession, srv: TestLogServer) -> None:
    _, body, _ = await _raw(http, f"{srv.static_url}/{data_tile_path(0)}")
    fingerprints = {
        fp
        for leaf in decode_data_tile(gzip.decompress(body), 0, 256)
        for fp in leaf.chain_fingerprints
    }
    assert fingerprints
    for fp in fingerprints:
        status, der, headers = await _raw(http, f"{srv.static_url}/issuer/{fp.hex()}")
        assert status == 200 and headers["Content-Type"] == "application/pkix-cert"
        assert hashlib.sha256(der).digest() == fp
        x509.load_der_x509_certificate(der)
    assert (await _raw(http, f"{srv.static_url}/issuer/{'00' * 32}"))[0] == 404


async def test_the_same_certificate_is_in_both_logs(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    item = (await _json(http, srv.rfc6962_url + "/ct/v1/get-entries?start=5&end=5"))["entries"][0]
    rfc = decode_rfc6962_entry(
        5, base64.b64decode(item["leaf_input"]), base64.b64decode(item["extra_data"])
    )
    _, body, _ = await _raw(http, f"{srv.static_url}/{data_tile_path(0)}")
    tiled = decode_data_tile(gzip.decompress(body), 0, 256)[5]
    assert (tiled.cert_der, tiled.timestamp_ms) == (rfc.cert_der, rfc.timestamp_ms)
    # Only one log can be grown, too.
    srv.grow(10, ["static"])
    assert (await _sth(http, srv)).tree_size == 700
    assert srv.logs["static"].published_size == 710


# --- growth and admin ---------------------------------------------------------------------------


async def test_growth_at_a_rate_is_sequenced(http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    async with TestLogServer(rate=200, sequence_interval=0.2, pool_size=100) as s:
        await asyncio.sleep(1.0)
        sth = await _sth(http, s)
        elapsed = time.monotonic() - started
        assert 50 <= sth.tree_size <= 200 * elapsed + 1
        assert sth.tree_size <= s.logs["rfc6962"].size  # published lags the tree, never leads
        status, body, _ = await _raw(http, s.static_url + "/checkpoint")
        assert status == 200 and int(body.split(b"\n")[1]) > 0


async def test_a_chosen_precert_and_its_final_certificate(http: aiohttp.ClientSession) -> None:
    factory = CertFactory(5)
    spec = factory.random_spec(sans=50)
    pre, final = factory.issue_precert(spec), factory.issue(spec)
    async with TestLogServer(initial_size=3, pool_size=3) as s:
        s.add([logged(pre)], ["rfc6962"])
        s.add([logged(final), logged(pre)])
        url = s.rfc6962_url + "/ct/v1/get-entries?start=3&end=5"
        items = (await _json(http, url))["entries"]
        got = [
            decode_rfc6962_entry(
                3 + i, base64.b64decode(e["leaf_input"]), base64.b64decode(e["extra_data"])
            )
            for i, e in enumerate(items)
        ]
        assert [e.cert_der for e in got] == [pre.precert_der, final.der, pre.precert_der]
        assert got[0].tbs == pre.tbs and got[0].issuer_key_hash == pre.issuer_key_hash
        _, body, _ = await _raw(http, f"{s.static_url}/{data_tile_path(0, 5)}")
        tiled = decode_data_tile(gzip.decompress(body), 0, 5)
        assert [t.cert_der for t in tiled[3:]] == [final.der, pre.precert_der]


async def test_admin_grow_and_stats(http: aiohttp.ClientSession, srv: TestLogServer) -> None:
    async with http.post(srv.base_url + "/admin/grow?n=50&log=rfc6962") as resp:
        sizes = await resp.json()
    assert sizes["rfc6962"]["published_size"] == 750
    assert sizes["static"]["published_size"] == 700
    async with http.post(srv.base_url + "/admin/grow?n=x") as resp:
        assert resp.status == 400
    await _json(http, srv.rfc6962_url + "/ct/v1/get-entries?start=0&end=9")
    stats = await _stats(http, srv)
    assert stats["requests"]["get-entries"] == 1
    assert stats["requests_by_log"]["rfc6962"]["get-entries"] == 1
    assert stats["entries_served"] == 10
    assert stats["logs"]["rfc6962"]["tree_size"] == 750


async def test_bad_fault_posts_are_400(http: aiohttp.ClientSession, srv: TestLogServer) -> None:
    for body in [{"faults": ["teapot"]}, {"faults": [7]}, {"faults": "429"}, [1]]:
        async with http.post(srv.base_url + "/admin/faults", json=body) as resp:
            assert resp.status == 400, body


# --- faults -------------------------------------------------------------------------------------


async def test_429_with_retry_after_seconds_then_date(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    await _set_faults(http, srv, "429:n=1,retry_after=5")
    url = srv.rfc6962_url + "/ct/v1/get-sth"
    status, _, headers = await _raw(http, url)
    assert (status, headers["Retry-After"]) == (429, "5")
    assert (await _raw(http, url))[0] == 200  # n=1: only once
    async with http.post(
        srv.base_url + "/admin/faults",
        json={"faults": [{"kind": "429", "n": 1, "retry_after": "date+30"}]},
    ) as resp:
        assert resp.status == 200
    status, _, headers = await _raw(http, url)
    assert status == 429
    assert parsedate_to_datetime(headers["Retry-After"]).timestamp() > time.time() + 25
    assert (await _stats(http, srv))["faults"]["429"] == 2


@pytest.mark.parametrize("code", [503, 502, 504, 500, 400, 404])
async def test_server_errors(http: aiohttp.ClientSession, srv: TestLogServer, code: int) -> None:
    await _set_faults(http, srv, f"{code}:n=2,endpoint=data-tile")
    assert (await _raw(http, srv.rfc6962_url + "/ct/v1/get-sth"))[0] == 200
    statuses = [(await _raw(http, f"{srv.static_url}/{data_tile_path(0)}"))[0] for _ in range(3)]
    assert statuses == [code, code, 200]
    assert (await _stats(http, srv))["faults"][str(code)] == 2


async def test_short_get_entries(http: aiohttp.ClientSession, srv: TestLogServer) -> None:
    await _set_faults(http, srv, "short:to=7")
    got = await _json(http, srv.rfc6962_url + "/ct/v1/get-entries?start=20&end=69")
    assert len(got["entries"]) == 7
    await _set_faults(http, srv, "short")
    got = await _json(http, srv.rfc6962_url + "/ct/v1/get-entries?start=20&end=69")
    assert 1 <= len(got["entries"]) < 50
    assert (await _stats(http, srv))["faults"]["short"] == 2


async def test_slow_responses(http: aiohttp.ClientSession, srv: TestLogServer) -> None:
    await _set_faults(http, srv, "slow:delay=0.4,n=1")
    started = time.monotonic()
    assert (await _raw(http, srv.static_url + "/checkpoint"))[0] == 200
    assert time.monotonic() - started >= 0.4
    assert (await _stats(http, srv))["faults"]["slow"] == 1


async def test_dropped_connections(http: aiohttp.ClientSession, srv: TestLogServer) -> None:
    url = srv.rfc6962_url + "/ct/v1/get-entries?start=0&end=99"
    # aiohttp (3.14) silently resends an idempotent request once when the connection closes
    # before a response: two drops in a row are what its caller sees as one failure.
    await _set_faults(http, srv, "drop:n=2")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _raw(http, url)
    await _set_faults(http, srv, "drop:n=1,mode=mid")
    with pytest.raises(aiohttp.ClientPayloadError):
        await _raw(http, url)
    assert (await _raw(http, url))[0] == 200
    stats = await _stats(http, srv)
    assert stats["faults"]["drop"] == 3
    assert stats["requests"]["get-entries"] == 4
    assert stats["entries_served"] == 200  # the half-sent response and the good one


async def test_corrupt_entries_rfc6962_and_tile(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    await _set_faults(
        http, srv, "corrupt:at=3,log=rfc6962", "corrupt:at=300,mode=framing,log=static"
    )
    items = (await _json(http, srv.rfc6962_url + "/ct/v1/get-entries?start=0&end=5"))["entries"]
    decoded = [
        decode_rfc6962_entry(
            i, base64.b64decode(e["leaf_input"]), base64.b64decode(e["extra_data"])
        )
        for i, e in enumerate(items)
    ]
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(decoded[3].cert_der)
    x509.load_der_x509_certificate(decoded[4].cert_der)
    _, body, _ = await _raw(http, f"{srv.static_url}/{data_tile_path(1)}")
    with pytest.raises(DecodeError):
        decode_data_tile(gzip.decompress(body), 1, 256)
    _, body, _ = await _raw(http, f"{srv.static_url}/{data_tile_path(0)}")
    decode_data_tile(gzip.decompress(body), 0, 256)  # other tiles are fine
    assert (await _stats(http, srv))["faults"]["corrupt"] == 2
    # Cleared at runtime: the entry is whole again.
    async with http.delete(srv.base_url + "/admin/faults") as resp:
        assert (await resp.json())["faults"] == []
    _, body, _ = await _raw(http, f"{srv.static_url}/{data_tile_path(1)}")
    decode_data_tile(gzip.decompress(body), 1, 256)


async def _verified_sth(http: aiohttp.ClientSession, srv: TestLogServer) -> SignedTreeHead:
    sth = await _sth(http, srv)
    verify_sth(sth, base64.b64decode((await _listed(http, srv))["rfc6962"]["key"]))
    return sth


async def _verified_checkpoint(http: aiohttp.ClientSession, srv: TestLogServer) -> Checkpoint:
    item = (await _listed(http, srv))["static"]
    _, body, _ = await _raw(http, srv.static_url + "/checkpoint")
    origin = checkpoint_origin(item["submission_url"])
    return verify_checkpoint(body, origin, base64.b64decode(item["key"]))


async def _entry_hashes(http: aiohttp.ClientSession, srv: TestLogServer, size: int) -> list[bytes]:
    """The leaf hashes of the RFC 6962 log's first `size` entries, as served."""
    hashes: list[bytes] = []
    while len(hashes) < size:
        url = f"{srv.rfc6962_url}/ct/v1/get-entries?start={len(hashes)}&end={size - 1}"
        entries = (await _json(http, url))["entries"]
        hashes += [leaf_hash(base64.b64decode(e["leaf_input"])) for e in entries]
    return hashes


async def _tile_root(http: aiohttp.ClientSession, srv: TestLogServer, size: int) -> bytes:
    """The static log's root at `size`, from its hash tiles."""
    tiles = {}
    for ref in root_tiles(size):
        path = hash_tile_path(ref.level, ref.index, ref.width)
        tiles[(ref.level, ref.index)] = (await _raw(http, f"{srv.static_url}/{path}"))[1]
    return root_from_tile_hashes(size, tiles)


async def test_a_lying_sth_is_validly_signed_but_not_the_root_of_its_entries(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    honest = await _verified_sth(http, srv)
    await _set_faults(http, srv, "lie:at=700")
    assert await _verified_sth(http, srv) == honest  # 700 entries: no leaf 700 to lie about
    srv.grow(50)
    sth = await _verified_sth(http, srv)
    hashes = await _entry_hashes(http, srv, 750)
    published = srv.logs["rfc6962"].head
    assert published is not None
    assert (sth.tree_size, sth.timestamp_ms) == (750, published.sth.timestamp_ms)
    assert sth.root_hash != root_hash(hashes) == published.sth.root_hash
    lied = [*hashes[:700], lied_leaf_hash(hashes[700]), *hashes[701:]]
    assert sth.root_hash == root_hash(lied)  # the one leaf it lies about, nothing else
    # Without `at` (here in the admin endpoint's JSON form): the head's last leaf.
    async with http.post(srv.base_url + "/admin/faults", json={"faults": [{"kind": "lie"}]}) as r:
        assert (await r.json())["faults"] == [{"kind": "lie", "p": 1.0, "mode": "root"}]
    lied = [*hashes[:749], lied_leaf_hash(hashes[749])]
    assert (await _verified_sth(http, srv)).root_hash == root_hash(lied)
    assert (await _stats(http, srv))["faults"]["lie"] == 2


async def test_a_lying_checkpoint_is_validly_signed_but_not_the_root_of_its_tiles(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    await _set_faults(http, srv, "lie:at=699,log=static")
    cp = await _verified_checkpoint(http, srv)
    honest = await _tile_root(http, srv, 700)
    assert cp.tree_size == 700 and cp.root_hash != honest
    leaves = []
    for n, width in [(0, 256), (1, 256), (2, 188)]:
        _, body, _ = await _raw(http, f"{srv.static_url}/{data_tile_path(n, width)}")
        leaves += decode_data_tile(gzip.decompress(body), n, width)
    hashes = [leaf_hash(leaf.leaf_input) for leaf in leaves]
    assert root_hash(hashes) == honest  # the data tiles agree with the hash tiles, not the head
    assert cp.root_hash == root_hash([*hashes[:699], lied_leaf_hash(hashes[699])])
    assert (await _verified_sth(http, srv)).root_hash == srv.logs["rfc6962"].tree.root()  # log=
    await _set_faults(http, srv, "lie:at=700")
    assert (await _verified_checkpoint(http, srv)).root_hash == honest


@pytest.mark.parametrize("log", ["rfc6962", "static"])
async def test_a_fork_shows_two_signed_roots_for_one_size(
    http: aiohttp.ClientSession, srv: TestLogServer, log: str
) -> None:
    async def head() -> tuple[int, bytes]:
        if log == "static":
            cp = await _verified_checkpoint(http, srv)
            return cp.tree_size, cp.root_hash
        sth = await _verified_sth(http, srv)
        return sth.tree_size, sth.root_hash

    async def honest_root(size: int) -> bytes:
        if log == "static":
            return await _tile_root(http, srv, size)
        return root_hash(await _entry_hashes(http, srv, size))

    await _set_faults(http, srv, f"lie:mode=fork,at=100,log={log}")
    heads = [await head() for _ in range(4)]
    assert {size for size, _ in heads} == {700}
    honest, forked = heads[0][1], heads[1][1]
    assert honest != forked and [root for _, root in heads] == [honest, forked] * 2
    assert honest == await honest_root(700)
    srv.grow(1)  # a new size: honest first again
    roots = [(await head())[1] for _ in range(2)]
    assert roots[0] == await honest_root(701) != roots[1]
    assert (await _stats(http, srv))["faults"]["lie"] == 3


async def test_proofs_and_tiles_stay_honest_under_a_lie(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    old = await _verified_sth(http, srv)
    srv.grow(50)
    # One lie per log, after honest heads: a head inconsistent with the one before and after.
    await _set_faults(http, srv, "lie:n=1,at=10,log=rfc6962", "lie:n=1,at=10,log=static")
    lie, new = await _verified_sth(http, srv), await _verified_sth(http, srv)
    assert lie.tree_size == new.tree_size == 750 and lie.root_hash != new.root_hash
    base = f"{srv.rfc6962_url}/ct/v1"
    url = f"{base}/get-sth-consistency?first=700&second=750"
    proof = [base64.b64decode(h) for h in (await _json(http, url))["consistency"]]
    assert verify_consistency(700, 750, old.root_hash, new.root_hash, proof)
    assert not verify_consistency(700, 750, old.root_hash, lie.root_hash, proof)
    hashes = await _entry_hashes(http, srv, 750)
    assert root_hash(hashes) == new.root_hash
    h = quote(base64.b64encode(hashes[10]).decode())
    answer = await _json(http, f"{base}/get-proof-by-hash?hash={h}&tree_size=750")
    path = [base64.b64decode(p) for p in answer["audit_path"]]
    assert answer["leaf_index"] == 10
    assert verify_inclusion(10, 750, hashes[10], path, new.root_hash)
    assert not verify_inclusion(10, 750, hashes[10], path, lie.root_hash)
    cp_lie, cp = await _verified_checkpoint(http, srv), await _verified_checkpoint(http, srv)
    assert cp_lie.tree_size == cp.tree_size == 750 and cp_lie.root_hash != cp.root_hash
    assert await _tile_root(http, srv, 750) == cp.root_hash
    assert (await _stats(http, srv))["faults"]["lie"] == 2


async def _head_of_body(
    http: aiohttp.ClientSession, url: str, n: int
) -> tuple[bytes, dict[str, str]]:
    """The first `n` bytes on the wire (at least) of an answer; then the reader hangs up."""
    async with http.get(url, auto_decompress=False) as resp:
        assert resp.status == 200
        got = b""
        while len(got) < n:
            chunk = await resp.content.readany()
            assert chunk, "the body ended early"
            got += chunk
        return got, dict(resp.headers)


async def test_gzip_bombs_on_get_entries_and_data_tiles(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    entries_url = srv.rfc6962_url + "/ct/v1/get-entries?start=0&end=9"
    tile_url = f"{srv.static_url}/{data_tile_path(0)}"
    real_entries = (await _raw(http, entries_url))[1]
    real_tile = gzip.decompress((await _raw(http, tile_url))[1])
    await _set_faults(http, srv, "gzip-bomb:endpoint=get-entries,endpoint=data-tile")
    for url, real in ((entries_url, real_entries), (tile_url, real_tile)):
        wire, headers = await _head_of_body(http, url, 256 << 10)
        assert headers["Content-Encoding"] == "gzip"
        assert "Content-Length" not in headers
        # Decoded a MiB at a time, so that the test itself holds no bomb.
        z = zlib.decompressobj(31)
        head = z.decompress(wire, len(real) + 1024)
        assert head.startswith(real) and head[len(real) :].strip(b" ") == b""
        expanded = len(head)
        while z.unconsumed_tail:
            expanded += len(z.decompress(z.unconsumed_tail, 1 << 20))
        assert expanded > 100 << 20  # from a quarter of a MiB
    # Bombs are whole answers: one of 3 MiB is the real answer and valid JSON.
    await _set_faults(http, srv, "gzip-bomb:size=3M,endpoint=get-entries")
    _, body, _ = await _raw(http, entries_url)
    assert len(gzip.decompress(body)) == 3 << 20
    assert orjson.loads(gzip.decompress(body)) == orjson.loads(real_entries)
    assert (await _stats(http, srv))["faults"]["gzip-bomb"] == 3
    # The server is still well after readers hung up on it.
    assert (await _raw(http, srv.rfc6962_url + "/ct/v1/get-sth"))[0] == 200


async def test_huge_bodies_are_streamed_and_may_be_announced_or_paced(
    http: aiohttp.ClientSession, srv: TestLogServer
) -> None:
    url = srv.rfc6962_url + "/ct/v1/get-entries?start=0&end=9"
    real = (await _raw(http, url))[1]
    await _set_faults(http, srv, "huge-body:n=1", "huge-body:n=1,size=300M,mode=length")
    head, headers = await _head_of_body(http, url, 2 << 20)
    assert "Content-Length" not in headers and "Content-Encoding" not in headers
    assert head.startswith(real) and head[len(real) :].strip(b" ") == b""
    _, headers = await _head_of_body(http, url, 1)
    assert headers["Content-Length"] == str(300 << 20)
    await _set_faults(http, srv, "huge-body:size=1M")
    _, body, _ = await _raw(http, url)
    assert len(body) == 1 << 20 and orjson.loads(body) == orjson.loads(real)
    await _set_faults(http, srv, "huge-body:size=300K,rate=1M")
    started = time.monotonic()
    assert len((await _raw(http, url))[1]) == 300 << 10
    assert time.monotonic() - started >= 0.25
    assert (await _stats(http, srv))["faults"]["huge-body"] == 4


async def test_faults_from_the_constructor_are_deterministic(http: aiohttp.ClientSession) -> None:
    async def statuses(seed: int) -> list[int]:
        async with TestLogServer(
            seed=seed, initial_size=1, faults=[Fault.from_spec("503:0.5")], pool_size=1
        ) as s:
            return [(await _raw(http, s.rfc6962_url + "/ct/v1/get-sth"))[0] for _ in range(40)]

    first = await statuses(11)
    assert first == await statuses(11)
    assert {200, 503} == set(first)
