"""Finding and reading the configuration file: the I/O shell around `schema.parse_config`, and
the checks that need the file system (TLS files exist, what `serve` writes is writable)."""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from certlake.config.schema import CONFIG_PATH_ENV, Config, ConfigError, parse_config
from certlake.lake.location import TableLocationError, local_path

# After `--config` and $CERTSTREAM_CONFIG; relative entries are looked up in the working directory.
SEARCH_PATHS: Final = (Path("config.yaml"), Path("config.yml"), Path("/etc/certstream/config.yaml"))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    path: Path | None  # the file that was read; None when only defaults and environment apply


# An alias (`*name`) stands for a copy of its anchor (`&name`), and validation does copy the
# document out, so a few hundred bytes of anchors of aliases of anchors can stand for billions of
# values ("billion laughs"). Anchors are legitimate YAML, so they are not refused outright; instead
# the document, every alias counted at the full size of what it names, must stay within bounds that
# a real configuration (a few hundred values; long log or token lists a few thousand) never nears.
MAX_EXPANDED_NODES: Final = 100_000
MAX_EXPANDED_CHARS: Final = 10_000_000  # of scalar text: aliases of one long string add up too


class _Unbounded(yaml.YAMLError):
    """The document stands for more than the bounds allow once its aliases are copied out."""


def _check_expansion(root: yaml.Node) -> None:
    """Raise `_Unbounded` if `root`, aliases expanded, exceeds the bounds or contains itself.

    Each node's expanded size is computed once and reused wherever an alias names it, so the
    check costs time linear in the file, not in what it expands to.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, characters) once expanded
    unfinished: set[int] = set()  # sizes being computed: meeting one again is a cycle

    def size(node: yaml.Node) -> tuple[int, int]:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in unfinished:
            raise _Unbounded(
                "an alias (*name) names a node that contains it; the document would be infinite"
            )
        unfinished.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        nodes, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
        for child in children:
            n, c = size(child)
            nodes, chars = nodes + n, chars + c
            for total, bound, what in (
                (nodes, MAX_EXPANDED_NODES, "values"),
                (chars, MAX_EXPANDED_CHARS, "characters of text"),
            ):
                if total > bound:
                    raise _Unbounded(
                        f"the document, its aliases (*name) expanded, holds more than {bound:,} "
                        f"{what}; a configuration needs far fewer (an alias bomb?)"
                    )
        unfinished.discard(id(node))
        sizes[id(node)] = (nodes, chars)
        return nodes, chars

    size(root)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML loading silently collapses, and
    documents that expand beyond `MAX_EXPANDED_NODES` / `MAX_EXPANDED_CHARS`."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Hashable, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` keys may legitimately be overridden
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            continue  # construct_mapping below reports unhashable keys itself
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first given on line {first_line[key]})",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def find_config_file(
    explicit: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    cwd: Path,
    search: Sequence[Path] = SEARCH_PATHS,
) -> Path | None:
    """The file to read: `explicit`, else $CERTSTREAM_CONFIG, else the first existing `search` path.

    A file named explicitly (flag or environment) must exist: falling back to defaults would
    run with a configuration the operator did not write.
    """
    named = [("--config", explicit), (CONFIG_PATH_ENV, environ.get(CONFIG_PATH_ENV) or None)]
    for how, value in named:
        if value is None:
            continue
        path = cwd / Path(value)
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise ConfigError([f"{how}: config file not found: {value}"]) from None
        except OSError as exc:  # e.g. a directory on the way that this user may not enter
            raise ConfigError([f"{how}: config file {value} cannot be read: {exc}"]) from None
        if not stat.S_ISREG(mode):
            raise ConfigError([f"{how}: config file {value} is not a regular file"])
        return path
    for candidate in search:
        path = cwd / candidate
        if path.is_file():
            return path
    return None


def read_document(path: Path) -> object:
    """The parsed YAML of `path` (None for an empty file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], str(path)) from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _Unbounded as exc:
        raise ConfigError([f"refused: {exc}"], str(path)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"not valid YAML{where}: {problem}"], str(path)) from exc
    except (ValueError, RecursionError) as exc:  # e.g. `2001-13-45` read as a date; deep nesting
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from exc


def _file_errors(config: Config, cwd: Path) -> list[str]:
    errors = []
    for key in ("tls_cert", "tls_key"):
        value = getattr(config, key)
        if value is not None and not (cwd / value).is_file():
            errors.append(f"{key}: {value!r} is not allowed; expected an existing PEM file")
    return errors


def _directory_problem(directory: Path, *, may_be_missing: bool) -> str | None:
    """Why no file can be created in `directory`, or None. A missing directory is fine when
    `may_be_missing` and its nearest existing ancestor is a writable directory to create it in."""
    probe = directory
    while True:
        try:
            mode = probe.stat().st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            probe = probe.parent  # ends: the root exists
        except OSError as exc:  # e.g. a directory on the way that this user may not enter
            return f"{probe} cannot be examined ({exc.strerror})"
    if not stat.S_ISDIR(mode):
        return f"{probe} is not a directory"
    if probe != directory and not may_be_missing:
        return f"directory {directory} does not exist"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"directory {probe} is not writable"
    return None


def _write_errors(config: Config, cwd: Path) -> list[str]:
    """What `certlake serve` will write and could not, one message per key.

    The state file is replaced by a rename within its directory, which must exist; delta-rs
    creates a missing table directory. An s3:// table is not checked: only a request could tell.
    """
    errors = []
    state_file = config.ct_log.state_file
    if state_file is not None:
        target = cwd / state_file
        problem = _directory_problem(target.parent, may_be_missing=False)
        if problem is None and target.is_dir():  # the directory is searchable: stat() works
            problem = f"{target} is a directory"
        if problem is not None:
            errors.append(f"ct_log.state_file: {state_file!r} cannot be written: {problem}")
    table_path = config.delta_sink.table_path
    try:
        local = local_path(table_path) if config.delta_sink.enabled else None
    except TableLocationError as exc:
        errors.append(f"delta_sink.table_path: {exc}")
        local = None
    if local is not None:
        # `~` expanded as `lake.table.table_uri` expands it for delta-rs
        problem = _directory_problem(cwd / Path(local).expanduser(), may_be_missing=True)
        if problem is not None:
            errors.append(f"delta_sink.table_path: {table_path!r} cannot be written: {problem}")
    return errors


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    search: Sequence[Path] = SEARCH_PATHS,
    *,
    check_writes: bool = False,
) -> LoadedConfig:
    """Find, read and validate the configuration; raises `ConfigError` on any problem.

    With `check_writes`, the state file's directory and the local table that `certlake serve`
    will write must be writable now, not found unwritable once it is running. Commands that do
    not write them (fetch, gaps, testlog) leave it off, so a read-only working directory does not
    stop them.
    """
    env = os.environ if environ is None else environ
    base = Path.cwd() if cwd is None else cwd
    path = find_config_file(explicit, env, base, search)
    document = read_document(path) if path is not None else None
    source = str(path) if path is not None else None
    config = parse_config(document, env, source)
    errors = _file_errors(config, base)
    if check_writes:
        errors += _write_errors(config, base)
    if errors:
        raise ConfigError(errors, source)
    return LoadedConfig(config, path)
