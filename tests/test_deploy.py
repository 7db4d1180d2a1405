"""The deployment files: `Dockerfile`, `compose.yaml`, `deploy/certlake.service`.

There is no container engine here, so the Dockerfile is tested by what can run without one: its
shape, its entry command and health check run from an environment built from the same lock (the
development one, fast; a clean one built by replaying the Dockerfile's own steps, slow), and the
stop timeouts of compose and systemd against the flush deadline in the code.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from certlake.config import Config
from certlake.lake.sink import DeltaSink
from support.procs import Procs

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "certlake.service"
# The environment's own `certlake` and its bin directory (what the image puts first on PATH).
BIN = Path(sys.executable).parent
# How long `serve` keeps retrying the archive's last flush after SIGTERM before giving up on it.
FLUSH_DEADLINE = inspect.signature(DeltaSink).parameters["close_timeout"].default
# What a stop timeout must leave beyond it: the flush's last attempt, the state file, the sockets.
STOP_MARGIN = 15.0


# --- the Dockerfile, read ------------------------------------------------------------------------


@dataclass
class Image:
    """What the Dockerfile says, instruction by instruction (`steps`), and its final settings."""

    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, str]] = field(default_factory=list)
    user: str = "root"
    workdir: str = "/"
    expose: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    stopsignal: str = "SIGTERM"
    healthcheck: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def read_dockerfile(path: Path = REPO / "Dockerfile") -> Image:
    image = Image()
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, args = line.partition(" ")
        name, args = name.upper(), args.strip()
        image.steps.append((name, args))
        if name == "FROM":
            image.base = args
        elif name == "ENV":
            image.env.update(item.split("=", 1) for item in shlex.split(args))  # type: ignore[misc]
        elif name == "USER":
            image.user = args
        elif name == "WORKDIR":
            image.workdir = args
        elif name == "EXPOSE":
            image.expose.extend(args.split())
        elif name == "VOLUME":
            image.volumes.extend(args.split())
        elif name == "STOPSIGNAL":
            image.stopsignal = args
        elif name == "HEALTHCHECK":
            image.healthcheck = json.loads(args[args.index("CMD ") + 4 :])
        elif name == "ENTRYPOINT":
            image.entrypoint = json.loads(args)
        elif name == "CMD":
            image.cmd = json.loads(args)
    return image


def _runs(image: Image) -> list[str]:
    return [args for name, args in image.steps if name == "RUN"]


# The image's RUN steps that do not build the environment: replaying them elsewhere would change
# the machine, not the environment.
NOT_REPLAYED = ("useradd ",)


def test_dockerfile_is_the_standard_shape() -> None:
    image = read_dockerfile()
    assert image.base == "python:3.11-slim"
    assert image.user not in ("root", "0")
    assert any(r.startswith("useradd ") and r.endswith(f" {image.user}") for r in _runs(image))
    assert image.expose == [str(Config().port)]
    assert image.volumes == [image.workdir]  # relative config paths (state, archive) land there
    assert image.stopsignal == "SIGTERM"
    assert any("/health" in part for part in image.healthcheck)
    assert image.entrypoint + image.cmd == ["certlake", "serve"]
    # Installed from the hashed lock first, then the package alone, nothing else from an index.
    installs = [r for r in _runs(image) if "pip install" in r]
    assert len(installs) == 2
    assert "pip install --require-hashes -r requirements.lock" in installs[0]
    assert "pip install --no-deps --no-build-isolation ." in installs[1]
    # The development environment is built the same way (./run bootstrap), so that the fast
    # tests below, which run in it, run what the image has.
    run_script = (REPO / "run").read_text()
    assert "pip install --require-hashes -r requirements.lock" in run_script


def _image_env(image: Image, bin_dir: Path, **extra: str) -> dict[str, str]:
    """The environment the image's processes get, with its PATH leading to `bin_dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTSTREAM_")}
    env.update(image.env)
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    return {**env, **extra}


def _entry(
    image: Image, env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """The image's entry point with `args` in place of its CMD, run as the container would."""
    argv = [shutil.which(image.entrypoint[0], path=env["PATH"]) or "", *image.entrypoint[1:]]
    return subprocess.run(
        [*argv, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _check_entry_command(image: Image, env: dict[str, str], volume: Path) -> None:
    helped = _entry(image, env, volume, *image.cmd, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Watch the logs" in helped.stdout
    # The defaults, as a container without a mounted config.yaml has them, are valid and
    # writable in the volume (validate-config checks the state file's directory).
    validated = _entry(image, env, volume, "validate-config")
    assert validated.returncode == 0, validated.stderr
    assert "configuration OK" in validated.stdout


def test_the_image_command_runs(tmp_path: Path) -> None:
    image = read_dockerfile()
    volume = tmp_path / "volume"
    volume.mkdir()
    _check_entry_command(image, _image_env(image, BIN), volume)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_health_check_passes_against_a_real_serve_and_fails_without_one(
    procs: Procs, tmp_path: Path
) -> None:
    image = read_dockerfile()
    port = _free_port()
    env = _image_env(image, BIN, CERTSTREAM_PORT=str(port))

    def check() -> int:
        return subprocess.run(
            image.healthcheck, env=env, capture_output=True, timeout=30
        ).returncode

    empty = tmp_path / "no_logs.json"
    empty.write_text('{"operators": []}')
    server = procs.serve({"host": "127.0.0.1", "port": port, "ct_logs_url": empty.as_uri()})
    assert check() == 0
    server.stop()
    assert check() != 0


@pytest.mark.slow
def test_a_clean_environment_built_as_the_dockerfile_says_runs_the_entry_command(
    tmp_path: Path,
) -> None:
    """The Dockerfile replayed into tmp_path (its directories moved under it): COPY from the
    repository, RUN in the working directory with the ENV declared so far, then the entry
    command. Needs the package index, as `docker build` does."""
    image = read_dockerfile()
    root = tmp_path / "image"
    base = tmp_path / "base"  # the base image's `python`
    base.mkdir()
    (base / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    moved: dict[str, str] = {}
    declared: dict[str, str] = {}

    def inside(text: str) -> str:
        for path, there in moved.items():
            text = text.replace(path, there)
        return text

    def environment() -> dict[str, str]:
        env = _image_env(Image(), base)
        env.update((k, inside(v).replace("$PATH", env["PATH"])) for k, v in declared.items())
        env.pop("PIP_NO_CACHE_DIR", None)  # where wheels come from, not what: hashes are checked
        return env

    cwd = root
    for name, args in image.steps:
        if name == "WORKDIR":
            cwd = root / args.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
            moved[args] = str(cwd)
        elif name == "ENV":
            declared.update(item.split("=", 1) for item in shlex.split(args))  # type: ignore[misc]
        elif name == "COPY":
            *sources, dest = shlex.split(args)
            for src in sources:
                target = cwd / dest / src if dest.endswith("/") else cwd / dest
                if (REPO / src).is_dir():
                    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
                    shutil.copytree(REPO / src, target, ignore=skip)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / src, target)
        elif name == "RUN" and not args.startswith(NOT_REPLAYED):
            done = subprocess.run(
                ["bash", "-c", inside(args)], cwd=cwd, env=environment(), capture_output=True,
                text=True, timeout=1800,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
    env = environment()
    program = shutil.which(image.entrypoint[0], path=env["PATH"])
    assert program is not None and Path(program).is_relative_to(root)  # the clean environment's
    _check_entry_command(image, env, cwd)


# --- compose and systemd -------------------------------------------------------------------------


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def test_compose_runs_the_image_with_its_volume_and_time_to_flush() -> None:
    image = read_dockerfile()
    doc = yaml.safe_load((REPO / "compose.yaml").read_text())
    (service,) = doc["services"].values()
    assert service["build"] == "."
    assert any(v.endswith(f":{image.workdir}") for v in service["volumes"])
    assert f"{Config().port}:{image.expose[0]}" in service["ports"]
    # Docker's own default, 10 s, would kill a server still flushing its archive.
    assert _seconds(service["stop_grace_period"]) >= FLUSH_DEADLINE + STOP_MARGIN


def read_unit(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """Sections → keys → values (a key may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_systemd_unit_stops_in_time_restarts_and_is_confined() -> None:
    service = read_unit()["Service"]

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    assert _seconds(one("TimeoutStopSec")) >= FLUSH_DEADLINE + STOP_MARGIN
    assert one("KillSignal") == "SIGTERM"
    assert one("Restart") == "on-failure"
    assert one("User") not in ("root", "0")
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    # Relative paths of the configuration resolve in the working directory, which must be the
    # one writable place.
    assert one("ReadWritePaths").split() == [one("WorkingDirectory")]
    assert one("StateDirectory") == Path(one("WorkingDirectory")).name
    argv = shlex.split(one("ExecStart"))
    assert Path(argv[0]).name == "certlake" and argv[1] == "serve"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit as installed, except that ExecStart's program is this environment's certlake:
    # verify checks that it exists.
    unit = UNIT.read_text()
    program = shlex.split(read_unit()["Service"]["ExecStart"][0])[0]
    copy = tmp_path / UNIT.name
    copy.write_text(unit.replace(program, str(BIN / "certlake")))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Unknown keys and unparsable values are only warnings to systemd: none may be printed.
    assert done.stderr == "", done.stderr
