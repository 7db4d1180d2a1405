"""RFC 6962 read API client: `get-sth` and `get-entries`."""

from __future__ import annotations

import base64
import binascii

import orjson

from certlake.ct.client.http import CTHttp, OperatorBudget
from certlake.ct.client.reader import Batch, ProofRefused, RawEntry
from certlake.ct.compact import CompactRange, prefix_from_inclusion
from certlake.ct.entry import LogSource
from certlake.ct.errors import AnswerTooLarge, FetchError, Limit
from certlake.ct.keys import SignatureError
from certlake.ct.limits import SMALL_ANSWER, check_entries_answer
from certlake.ct.merkle import MerkleError, root_with_leaf
from certlake.ct.sth import SignedTreeHead, verify_sth
from certlake.ct.verify import TreeHead


class Rfc6962Log:
    """Reads one RFC 6962 log. `batch_size` is what we ask for; the log may return fewer.

    Logs cap `get-entries` answers (Google's at 32, aligned so that an answer ends before a
    multiple of 32; others at 256-1,000, unaligned). The cap is learned from the answers: a short
    answer that began on a multiple of its own length (an aligned cap), or two short answers of
    the same length in a row (an unaligned one). Until then reads go one at a time; after, each
    read asks for one capped block, aligned to the cap's multiples, several in flight.
    """

    def __init__(
        self,
        http: CTHttp,
        source: LogSource,
        key_der: bytes | None = None,
        budget: OperatorBudget | None = None,
        batch_size: int = 256,
        depth: int | None = None,
    ) -> None:
        """`depth` (reads in flight) defaults to what the operator's budget allows at once."""
        self.source = source
        self._http = http
        self._key = key_der
        self._budget = budget
        self._batch_size = batch_size
        self._api = source.url + "/ct/v1/"
        self._depth = depth or (budget.max_in_flight if budget is not None else 1)
        self.cap: int | None = None  # the log's learned answer cap; None: not below batch_size
        self._settled = False
        self._last_short: int | None = None

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def answer_cap(self) -> int | None:
        """The learned cap; once settled without one, what we ask (the log serves at least
        that); None while still learning."""
        if self.cap is not None:
            return self.cap
        return self._batch_size if self._settled else None

    def chunk_end(self, start: int, end: int, tree_size: int) -> int:
        last = min(end, tree_size - 1)
        if self.cap is None:
            return min(last, start + self._batch_size - 1)
        return min(last, (start // self.cap + 1) * self.cap - 1)

    def _learn(self, start: int, asked: int, got: int) -> None:
        if self._settled:
            return
        if got >= asked:
            self._settled = True  # the log serves at least what we ask
        elif start % got == 0 or self._last_short == got:
            self.cap, self._settled = got, True
        self._last_short = got if got < asked else None

    async def get_sth(self) -> SignedTreeHead:
        """The current signed tree head, verified when the log's key is known."""
        body = await self._http.get(self._api + "get-sth", budget=self._budget, limits=SMALL_ANSWER)
        try:
            sth = SignedTreeHead.from_json(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError) as e:
            raise FetchError(f"bad get-sth response from {self.source.url}: {e}", 200) from None
        if self._key is not None:
            try:
                verify_sth(sth, self._key)
            except SignatureError as e:
                raise FetchError(f"get-sth from {self.source.url}: {e}", 200) from None
        return sth

    async def latest_size(self) -> int:
        return (await self.get_sth()).tree_size

    async def latest_head(self) -> TreeHead:
        sth = await self.get_sth()
        return TreeHead(sth.tree_size, sth.root_hash, sth.timestamp_ms, sth.signature)

    async def _proof_json(self, method: str, params: dict[str, str | int]) -> dict[str, object]:
        body = await self._http.get(
            self._api + method, params=params, budget=self._budget, limits=SMALL_ANSWER
        )
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise FetchError(f"malformed {method} from {self.source.url}: {e}", 200) from None
        if not isinstance(doc, dict):
            raise FetchError(f"malformed {method} from {self.source.url}: not an object", 200)
        return doc

    def _hashes(self, doc: dict[str, object], member: str, method: str) -> list[bytes]:
        value = doc.get(member)
        if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
            raise FetchError(f"malformed {method} from {self.source.url}: no {member}", 200)
        try:
            return [base64.b64decode(h, validate=True) for h in value]
        except binascii.Error as e:
            raise FetchError(f"malformed {method} from {self.source.url}: {e}", 200) from None

    async def prefix(
        self, start: int, head: TreeHead, first_leaf: bytes | None
    ) -> CompactRange | None:
        if start == 0:
            return CompactRange(0)
        if first_leaf is None or head.size <= start:
            return None
        method = "get-proof-by-hash"
        doc = await self._proof_json(
            method, {"hash": base64.b64encode(first_leaf).decode(), "tree_size": head.size}
        )
        path = self._hashes(doc, "audit_path", method)
        index = doc.get("leaf_index")
        where = f"the inclusion proof of leaf {start} in the tree of {head.size}"
        if index != start:
            # The leaf we were served at `start` is, by the log's own account, elsewhere or
            # nowhere in its tree.
            raise ProofRefused(f"{where} places it at {index!r}", head, b"")
        prefix = prefix_from_inclusion(start, head.size, first_leaf, path, head.root)
        if prefix is None:
            try:
                computed = root_with_leaf(start, head.size, first_leaf, path)
            except MerkleError:
                computed = b""
            raise ProofRefused(f"{where} does not lead to the signed root", head, computed)
        return prefix

    async def consistency(self, old_size: int, later: TreeHead) -> list[bytes]:
        method = "get-sth-consistency"
        doc = await self._proof_json(method, {"first": old_size, "second": later.size})
        return self._hashes(doc, "consistency", method)

    async def get_entries(self, start: int, end: int) -> list[tuple[object, object]]:
        """The (leaf_input, extra_data) members of each element for [start, end], as served: at
        least one element, never more than asked.

        Only the answer's shape is checked here: an empty array or more entries than asked is a
        bad response (Cert Spotter rejects both), and so is anything but an `entries` array. What
        one element holds is decoded later, element by element (`reader.settle`).
        More is not trimmed to what was asked: a log that serves more than the range it was asked
        for has shown that it does not honour the range, so no position in its answer can be
        trusted. Such an answer is refused before it is parsed when its JSON could not even fit.
        """
        body = await self._http.get(
            self._api + "get-entries", params={"start": start, "end": end}, budget=self._budget
        )
        where = f"get-entries [{start}, {end}] from {self.source.url}"
        asked = end - start + 1
        check_entries_answer(body, asked, where)
        try:
            entries = orjson.loads(body)["entries"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise FetchError(f"malformed {where}: {type(e).__name__} {e}", 200) from None
        if not isinstance(entries, list):
            raise FetchError(f"malformed {where}: entries is a JSON {type(entries).__name__}", 200)
        if not entries:
            raise FetchError(f"empty {where}", 200)
        if len(entries) > asked:
            raise AnswerTooLarge(
                f"{where} returned {len(entries)} entries, more than asked", Limit.ENTRIES, asked
            )
        return [
            (e.get("leaf_input"), e.get("extra_data")) if isinstance(e, dict) else (e, None)
            for e in entries
        ]

    async def read(self, start: int, end: int, tree_size: int) -> Batch:
        """Entries from `start` on, at most up to `end` (inclusive) and one batch's worth, not
        yet decoded."""
        last = min(end, self.chunk_end(start, end, tree_size))
        raw = await self.get_entries(start, last)
        self._learn(start, last - start + 1, len(raw))
        return [
            RawEntry(start + offset, leaf_input, extra_data)
            for offset, (leaf_input, extra_data) in enumerate(raw)
        ]
