"""The Delta Lake archive: every read and write of a Delta table goes through here.

- `schema`: the 20-column table layout, partitioned by `seen_date`, the key columns, and the side
  table of skipped ranges;
- `rows`: messages → Arrow, column-wise (pure);
- `txn`: the exactly-once bookkeeping — per-log cursors as Delta transaction identifiers (pure);
- `location`: one spelling of a table location, and whether two overlap (pure);
- `table`: the delta-rs shell (open, open or create, append, lost-reply check, skipped ranges,
  compaction, deletion) and which storage options a table gets;
- `files`: a table read by its data files — per-file statistics, key-column scans, row groups;
- `committer`: the buffered committer under both writers (chunks, retries, the lost-reply
  check, skipped ranges first), run in a writer thread;
- `sink`: the live sink, a parallel consumer of the stream that loses and duplicates nothing;
- `writer`: backfill's writer, Arrow rows in, commits without transaction identifiers.
"""
