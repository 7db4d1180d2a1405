"""static-ct-api read client: checkpoint, data tiles and issuers."""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable

from certlake.ct.checkpoint import Checkpoint, CheckpointError, parse_checkpoint, verify_checkpoint
from certlake.ct.client.http import CTHttp, OperatorBudget
from certlake.ct.client.reader import Batch, FetchedEntry, Unparseable
from certlake.ct.compact import (
    CompactRange,
    from_hash_tiles,
    hash_tiles_for,
    subtree_hash,
)
from certlake.ct.entry import LogSource
from certlake.ct.errors import FetchError, NotFound
from certlake.ct.keys import SignatureError
from certlake.ct.limits import SMALL_ANSWER
from certlake.ct.merkle import TILE_WIDTH, MerkleError, consistency_ranges
from certlake.ct.tile import (
    BadTileLeaf,
    TileLeaf,
    data_tile_path,
    decode_data_tile_prefix,
    hash_tile_path,
)
from certlake.ct.verify import TreeHead

# A tile that still fails to decode after this many reads is taken as the log's real content:
# its decodable prefix is emitted and the rest reported as unparseable, so the log moves on.
_CORRUPT_TILE_READS = 3
# Hash tiles kept per log (8 KiB each at most): those of the last few proofs.
_HASH_TILES_KEPT = 64


class IssuerCache:
    """Issuer certificates by SHA-256, verified on arrival. Bounded because a log has few distinct
    issuers (navigli: 5 in 1034 entries) but a long-running server must not grow without limit;
    least recently used go first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, fingerprint: bytes) -> bytes | None:
        der = self._items.get(fingerprint)
        if der is not None:
            self._items.move_to_end(fingerprint)
        return der

    def put(self, fingerprint: bytes, der: bytes) -> None:
        self._items[fingerprint] = der
        self._items.move_to_end(fingerprint)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


class StaticLog:
    """Reads one static-ct-api log from its monitoring prefix (`source.url`)."""

    def __init__(
        self,
        http: CTHttp,
        source: LogSource,
        origin: str | None = None,
        key_der: bytes | None = None,
        budget: OperatorBudget | None = None,
        issuers: IssuerCache | None = None,
        depth: int | None = None,
    ) -> None:
        """`depth` (tiles in flight) defaults to what the operator's budget allows at once."""
        self.source = source
        self._http = http
        self._origin = origin
        self._key = key_der
        self._budget = budget
        self._issuers = issuers if issuers is not None else IssuerCache()
        self._corrupt_reads: dict[int, int] = {}
        self._hash_tiles: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._depth = depth or (budget.max_in_flight if budget is not None else 1)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def settled(self) -> bool:
        return True  # data tiles are 256 entries, fixed by the protocol

    @property
    def answer_cap(self) -> int:
        return TILE_WIDTH

    def chunk_end(self, start: int, end: int, tree_size: int) -> int:
        return min(end, tree_size - 1, (start // TILE_WIDTH + 1) * TILE_WIDTH - 1)

    def cert_link(self, index: int) -> str:
        # The full tile's URL: it is permanent, while the partial tile an entry was first read
        # from may be deleted once the tile fills (static-ct-api allows it).
        return f"{self.source.url}/{data_tile_path(index // TILE_WIDTH)}"

    async def checkpoint(self) -> Checkpoint:
        body = await self._http.get(
            self.source.url + "/checkpoint", budget=self._budget, limits=SMALL_ANSWER
        )
        return self._checked(body)

    def _checked(self, body: bytes) -> Checkpoint:
        try:
            if self._key is not None and self._origin is not None:
                return verify_checkpoint(body, self._origin, self._key)
            return parse_checkpoint(body)
        except (CheckpointError, SignatureError) as e:
            raise FetchError(f"bad checkpoint from {self.source.url}: {e}", 200) from None

    async def latest_size(self) -> int:
        return (await self.checkpoint()).tree_size

    async def latest_head(self) -> TreeHead:
        body = await self._http.get(
            self.source.url + "/checkpoint", budget=self._budget, limits=SMALL_ANSWER
        )
        cp = self._checked(body)
        # The signed note as served is the signature: anyone can check it again from the table.
        return TreeHead(cp.tree_size, cp.root_hash, cp.timestamp_ms or 0, body)

    async def data_tile(self, n: int, width: int) -> tuple[bytes, int]:
        """The bytes of data tile `n` read at `width`, and the width actually read: a partial
        tile that is gone (404) is replaced by the full tile, which then holds all 256."""
        return await self._tile(data_tile_path, n, width)

    async def hash_tile(self, level: int, n: int, width: int) -> bytes:
        # A tile never changes once published (a wider one is another tile): backfill's checks
        # of neighbouring ranges, and a watcher's consistency proofs, ask for the same ones.
        key = (level, n, width)
        tile = self._hash_tiles.get(key)
        if tile is None:
            tile = (await self._tile(functools.partial(hash_tile_path, level), n, width))[0]
            self._hash_tiles[key] = tile
            while len(self._hash_tiles) > _HASH_TILES_KEPT:
                self._hash_tiles.popitem(last=False)
        else:
            self._hash_tiles.move_to_end(key)
        return tile

    async def _tile(self, path: Callable[..., str], n: int, width: int) -> tuple[bytes, int]:
        base = self.source.url + "/"
        try:
            return await self._http.get(base + path(n, width), budget=self._budget), width
        except NotFound:
            if width == TILE_WIDTH:
                raise
        body = await self._http.get(base + path(n), budget=self._budget)
        return body, TILE_WIDTH

    async def _range(self, begin: int, end: int, tree_size: int) -> CompactRange:
        """[begin, end) from the hash tiles published at `tree_size`."""
        tiles = {}
        for ref in hash_tiles_for(begin, end, tree_size):
            tiles[(ref.level, ref.index)] = await self.hash_tile(ref.level, ref.index, ref.width)
        try:
            return from_hash_tiles(begin, end, tiles)
        except MerkleError as e:
            raise FetchError(f"hash tiles of {self.source.url}: {e}", 200) from None

    async def prefix(
        self, start: int, head: TreeHead, first_leaf: bytes | None
    ) -> CompactRange | None:
        # Not proven by itself: the first head the entries reach checks it with them.
        return await self._range(0, start, head.size) if head.size >= start else None

    async def consistency(self, old_size: int, later: TreeHead) -> list[bytes]:
        # Put together from the later tree's hash tiles; checking it against both roots proves
        # the same as an RFC 6962 log's get-sth-consistency answer.
        return [
            subtree_hash(await self._range(lo, hi, later.size))
            for lo, hi in consistency_ranges(old_size, later.size)
        ]

    async def issuer(self, fingerprint: bytes) -> bytes:
        der = self._issuers.get(fingerprint)
        if der is not None:
            return der
        url = f"{self.source.url}/issuer/{fingerprint.hex()}"
        der = await self._http.get(url, budget=self._budget, limits=SMALL_ANSWER)
        if hashlib.sha256(der).digest() != fingerprint:
            raise FetchError(f"issuer {url} does not match its fingerprint", 200)
        self._issuers.put(fingerprint, der)
        return der

    async def _chain(self, leaf: TileLeaf) -> tuple[bytes, ...]:
        return tuple([await self.issuer(fp) for fp in leaf.chain_fingerprints])

    async def read(self, start: int, end: int, tree_size: int) -> Batch:
        """The entries of the tile holding `start`, from `start` to `end` at most."""
        n = start // TILE_WIDTH
        base = n * TILE_WIDTH
        width = min(TILE_WIDTH, tree_size - base)
        body, width = await self.data_tile(n, width)
        leaves, error = decode_data_tile_prefix(body, n, width)
        if error is not None:
            reads = self._corrupt_reads.get(n, 0) + 1
            self._corrupt_reads[n] = reads
            if reads < _CORRUPT_TILE_READS:
                raise FetchError(f"corrupt data tile {n} of {self.source.url}: {error}", 200)
        self._corrupt_reads.pop(n, None)
        last = min(end, base + width - 1)
        items: Batch = []
        for leaf in leaves[start - base : last - base + 1]:
            if isinstance(leaf, BadTileLeaf):
                items.append(Unparseable(leaf.index, leaf.error))
                continue
            try:
                chain = await self._chain(leaf)
            except NotFound as e:
                # Issuers are immutable and must be served for every entry that names them: a
                # 404 is the log's answer for good (a corrupt entry can name garbage issuers
                # and still decode), so it costs this entry, not the log's progress.
                items.append(Unparseable(leaf.index, f"issuer not found: {e}"))
                continue
            items.append(FetchedEntry(leaf.to_entry(chain), self.cert_link(leaf.index)))
        for index in range(max(start, base + len(leaves)), last + 1):
            items.append(Unparseable(index, f"data tile {n}: {error}"))
        return items
