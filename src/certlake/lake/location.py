"""Where a Delta table lives, spelled one way only, and whether two spellings overlap (pure).

`certlake merge` deletes the staging table once its rows are in main, so it must know when
"staging" is main under another name (the Rust tool, pointed at main, deleted it). Local paths
arrive as given (relative, `..`, trailing slash, `file://` URI); the shell resolves them against
the file system (`os.path.realpath`: symlinks too) and hands the result to `Location.local`.
`s3://` keys are normalized as object stores see them: empty, `.` and `..` segments removed.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

Relation = Literal["same", "inside", "contains"]


class TableLocationError(ValueError):
    """A table location certlake cannot use (an unknown URI scheme, no bucket, ...)."""


@dataclass(frozen=True, slots=True)
class Location:
    """`scheme` is "file" or "s3"; `root` the bucket ("" for files); `parts` the path segments."""

    scheme: str
    root: str
    parts: tuple[str, ...]

    @classmethod
    def local(cls, resolved: str) -> Location:
        """A local directory from an absolute path with symlinks already resolved."""
        if not posixpath.isabs(resolved):
            raise TableLocationError(f"{resolved!r} is not an absolute path")
        return cls("file", "", _segments(resolved))

    def relation(self, other: Location) -> Relation | None:
        """How this location relates to `other`: the same directory, inside it, containing it,
        or None when the two are disjoint."""
        if (self.scheme, self.root) != (other.scheme, other.root):
            return None
        if self.parts == other.parts:
            return "same"
        n = min(len(self.parts), len(other.parts))
        if self.parts[:n] != other.parts[:n]:
            return None
        return "inside" if len(self.parts) > len(other.parts) else "contains"

    def __str__(self) -> str:
        path = "/".join(self.parts)
        return f"s3://{self.root}/{path}" if self.scheme == "s3" else "/" + path


def _segments(path: str) -> tuple[str, ...]:
    return tuple(p for p in posixpath.normpath("/" + path).split("/") if p)


def local_path(value: str) -> str | None:
    """The file-system path a local table location names (unresolved), or None for a URI of
    an object store. `file://` URIs are percent-decoded, as URIs are."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.scheme != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise TableLocationError(f"{value}: file:// URIs on another host are not supported")
    return unquote(parts.path)


def object_location(value: str) -> Location:
    """The location of an `s3://bucket/prefix` URI."""
    parts = urlsplit(value)
    if parts.scheme != "s3" or not parts.netloc:
        raise TableLocationError(f"{value}: expected a local path, file:// or s3://bucket/prefix")
    return Location("s3", parts.netloc.lower(), _segments(parts.path))
