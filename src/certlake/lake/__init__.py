"""The Delta Lake archive (SPEC §6).

- `schema`: the 20-column table layout, partitioned by `seen_date`, and the side table of
  skipped ranges;
- `rows`: messages → Arrow, column-wise (pure);
- `txn`: the exactly-once bookkeeping — per-log cursors as Delta transaction identifiers (pure);
- `table`: the delta-rs shell (open or create, append, lost-reply check, compaction);
- `sink`: the live sink, a parallel consumer of the stream that loses and duplicates nothing.
"""
