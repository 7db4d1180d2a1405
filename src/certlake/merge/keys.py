"""Which staging rows a merge inserts, decided over keys alone (pure: no I/O).

The merge (`merge.py`) cuts staging, in staging order, into *windows* of at most a fixed number
of rows, and decides each window from its `(source_url, cert_index)` keys before any whole row is
read:

- duplicates inside the window collapse to the first row in staging order (staging order: the
  table's data files by commit time, rows in file order; a backfill writes what it fetched in
  fetch order, so this is the copy fetched first);
- a key already present in main is skipped: `WindowKeys.mark_present` is fed main's keys, a
  chunk at a time, from the main files whose statistics can overlap the window (`segments`);
- the rest is inserted.

A duplicate whose copies fall in two windows is caught the same way as a key already in main:
the first window's rows are committed before the second window reads main's keys.

Keys are held as parallel arrays (a code per distinct URL, the index, the row's position in the
window): a window of a million rows is about 30 MB of keys, whatever the size of the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from certlake.lake.schema import Segment


class MergeKeyError(ValueError):
    """Keys that cannot be merged on: a null URL or index, or arrays of different lengths."""


def _plain(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _starts_of_groups(*sorted_columns: pa.Array) -> pa.Array:
    """True where any of the (jointly sorted) columns differs from the row before."""
    new: pa.Array | None = None
    for column in sorted_columns:
        diff = pc.not_equal(pc.pairwise_diff(column), 0)
        new = diff if new is None else pc.or_(new, diff)
    assert new is not None
    return pc.fill_null(new, True)


@dataclass
class WindowKeys:
    """The keys of one window: its distinct keys sorted by (URL code, index), each with the
    position of the row that represents it, and which of them main already holds."""

    urls: pa.Array  # string: the window's distinct URLs, in order of first appearance; a key's
    # code is its URL's position here
    rows: int  # staging rows in the window
    indices_in_order: pa.Array  # int64, one per row in window order (to check re-reads)
    codes: pa.Array  # int32, per distinct key
    indices: pa.Array  # int64, per distinct key
    positions: pa.Array  # int64, per distinct key: the window position of the row kept
    offsets: list[int]  # keys of URL code c are [offsets[c], offsets[c + 1])
    present: list[pa.Array]  # per URL code: bool per distinct key of that URL, True = in main

    @classmethod
    def build(
        cls, parts: Iterable[tuple[pa.Array | pa.ChunkedArray, pa.Array | pa.ChunkedArray]]
    ) -> WindowKeys:
        """The keys of a window given as consecutive parts `(urls, indices)` (one per row
        group): each part's URLs become codes at once, so the window never holds its URLs."""
        names: list[str] = []
        codes: list[pa.Array] = []
        values: list[pa.Array] = []
        for urls, indices in parts:
            url = _plain(urls)
            idx = _plain(indices).cast(pa.int64())
            if len(url) != len(idx):
                raise MergeKeyError(f"{len(url)} URLs for {len(idx)} indices")
            if url.null_count or idx.null_count:
                raise MergeKeyError("a staging row has no source_url or no cert_index")
            names.extend(u for u in pc.unique(url).to_pylist() if u not in names)
            codes.append(pc.index_in(url, value_set=pa.array(names, pa.string())))
            values.append(idx)
        code = pa.concat_arrays(codes).cast(pa.int32()) if codes else pa.array([], pa.int32())
        idx = pa.concat_arrays(values) if values else pa.array([], pa.int64())
        # A stable sort by (code, index): the first row of each key is the earliest position.
        order = pc.sort_indices(
            pa.table({"c": code, "i": idx}), sort_keys=[("c", "ascending"), ("i", "ascending")]
        )
        c, i, p = pc.take(code, order), pc.take(idx, order), order.cast(pa.int64())
        if len(c):
            first = _starts_of_groups(c, i)
            c, i, p = pc.filter(c, first), pc.filter(i, first), pc.filter(p, first)
        counts = [0] * len(names)
        for counted in pc.value_counts(c).to_pylist():
            counts[int(counted["values"])] = int(counted["counts"])
        offsets = [0]
        for n in counts:
            offsets.append(offsets[-1] + n)
        present = [pa.repeat(pa.scalar(False), n) for n in counts]
        return cls(pa.array(names, pa.string()), len(idx), idx, c, i, p, offsets, present)

    @property
    def distinct(self) -> int:
        return len(self.indices)

    @property
    def duplicates(self) -> int:
        """Rows that repeat the key of an earlier row of the window."""
        return self.rows - self.distinct

    @property
    def already_present(self) -> int:
        return sum(int(pc.sum(p).as_py() or 0) for p in self.present)

    def url_bounds(self) -> list[Segment]:
        """Per URL, its smallest and largest index in the window."""
        out: list[Segment] = []
        for code, url in enumerate(self.urls.to_pylist()):
            lo, hi = self.offsets[code], self.offsets[code + 1] - 1
            out.append((url, int(self.indices[lo].as_py()), int(self.indices[hi].as_py())))
        return out

    def segments(self, max_segments: int) -> list[Segment]:
        """The window's keys as index intervals per URL, at most `max_segments` of them (or
        one per URL, if there are more URLs): what main's file statistics are matched against.
        Intervals are split at the largest holes between consecutive indices of a URL, so that
        main files lying in a hole are not read."""
        if not self.distinct:
            return []
        same_url = pc.fill_null(pc.equal(pc.pairwise_diff(self.codes), 0), False)
        diffs = pc.fill_null(pc.pairwise_diff(self.indices), 0)
        holes = pc.filter(diffs, pc.and_(same_url, pc.greater(diffs, 1)))
        allowed = max_segments - len(self.urls)
        if allowed <= 0:
            return self.url_bounds()
        threshold = 1
        if len(holes) > allowed:
            # strictly above the (allowed + 1)-th largest hole: at most `allowed` splits
            threshold = int(holes.sort(order="descending")[allowed].as_py())
        split = pc.and_(same_url, pc.greater(diffs, threshold))
        new = pc.or_(pc.invert(same_url), split)
        starts = pc.indices_nonzero(new).to_pylist()
        urls = self.urls.to_pylist()
        out: list[Segment] = []
        for k, s in enumerate(starts):
            e = (starts[k + 1] if k + 1 < len(starts) else self.distinct) - 1
            code = int(self.codes[s].as_py())
            out.append((urls[code], int(self.indices[s].as_py()), int(self.indices[e].as_py())))
        return out

    def mark_present(
        self, urls: pa.Array | pa.ChunkedArray, indices: pa.Array | pa.ChunkedArray
    ) -> None:
        """Record which of the window's keys occur among `(urls[i], indices[i])` (main's keys,
        any order, duplicates and foreign URLs allowed)."""
        codes = self._codes(urls)
        mine = pc.is_valid(codes)  # rows of other logs are left out
        codes = pc.filter(codes, mine)
        if not len(codes):
            return
        order = pc.sort_indices(codes)
        grouped = pc.take(codes, order)
        found = pc.take(pc.filter(_plain(indices), mine), order).cast(pa.int64())
        start = 0
        for counted in pc.value_counts(grouped).to_pylist():
            code, n = int(counted["values"]), int(counted["counts"])
            lo, hi = self.offsets[code], self.offsets[code + 1]
            hit = pc.is_in(self.indices.slice(lo, hi - lo), value_set=found.slice(start, n))
            self.present[code] = pc.or_(self.present[code], hit)
            start += n

    def _codes(self, urls: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Each URL's code (null for URLs not in the window). Dictionary-encoded URLs are
        looked up once per dictionary entry, not once per row."""
        chunks = urls.chunks if isinstance(urls, pa.ChunkedArray) else [urls]
        out = []
        for chunk in chunks:
            if pa.types.is_dictionary(chunk.type):
                known = pc.index_in(chunk.dictionary, value_set=self.urls)
                out.append(pc.take(known, chunk.indices))
            else:
                out.append(pc.index_in(chunk, value_set=self.urls))
        return pa.concat_arrays(out) if out else pa.array([], pa.int32())

    def insert_mask(self) -> pa.Array:
        """Per row of the window, in window order: insert it (first of its key, not in main)."""
        if not self.distinct:
            return pa.array([], pa.bool_())
        present = pa.concat_arrays(self.present)
        wanted = pc.filter(self.positions, pc.invert(present))
        return pc.is_in(pa.array(range(self.rows), pa.int64()), value_set=wanted)
