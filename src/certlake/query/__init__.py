"""Searching the archive: what a query asks (`spec`, pure), the domain index that answers domain
queries (`certlake.lake.domains`), and the search that reads both (`search`)."""
