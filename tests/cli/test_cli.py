"""The real `certlake` console script, run as a subprocess: exit codes, stderr, Rust spellings."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from certlake import __version__
from certlake.cli.compat import RUST_MODES, TAKES_VALUE, translate_rust_argv
from certlake.cli.main import cli
from support.hostile import ALIAS_BOMB

CERTLAKE = Path(sys.executable).with_name("certlake")
MERGE_ERROR = "Error: --merge requires --staging-path <PATH>\n"
MEMORY_LIMIT = 512 * 2**20  # bytes of address space

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Run certlake in an empty directory with no CERTSTREAM_* variables inherited."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CERTSTREAM_")}

    def _run(
        *args: str, env: dict[str, str] | None = None, **popen: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CERTLAKE), *args],
            cwd=tmp_path,
            env={**base_env, **(env or {})},
            capture_output=True,
            text=True,
            **{"timeout": 60, **popen},
        )

    return _run


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("port: 99999\nct_log:\n  batchsize: 10\n")
    return path


def test_version(run: Run) -> None:
    for flag in ("--version", "-V"):
        result = run(flag)
        assert (result.returncode, result.stdout) == (0, f"certlake {__version__}\n")


def test_help_lists_every_command(run: Run) -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "backfill", "merge", "gaps", "fetch", "testlog", "validate-config"):
        assert command in result.stdout


def test_error_ac4_5_hv4_merge_requires_staging_path(run: Run) -> None:
    """staging-backfill.AC4.5 / HV4: the real CLI's stderr and exit code."""
    for argv in (["--merge"], ["merge"], ["--merge", "--summary-json", "s.json"]):
        result = run(*argv)
        assert result.returncode == 2, argv
        assert result.stderr == MERGE_ERROR, argv
        assert result.stdout == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["backfill", "--bogus"],
        ["--backfill", "--bogus"],
        ["--backfill", "--dry-run"],
        ["serve", "extra-argument"],
        ["--backfill", "--merge", "--staging-path", "p"],
        ["backfill", "--merge"],
    ],
)
def test_unknown_flags_are_usage_errors(run: Run, argv: list[str]) -> None:
    result = run(*argv)
    assert result.returncode == 2
    assert "Error:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--backfill", "--from", "abc"],
        ["backfill", "--from", "abc"],
        ["gaps", "--from", "-1"],
        ["backfill", "--staging-path", "gcs://bucket/x"],
        ["--merge", "--staging-path", "ftp://x"],
        ["fetch", "https://ct.example.com/log"],
        ["fetch", "https://ct.example.com/log", "x"],
        ["fetch", "--stream", "everything", "https://ct.example.com/log", "1"],
        ["testlog", "--port", "70000"],
        ["testlog", "--rate", "-1"],
        ["serve", "--log-level", "loud"],
    ],
)
def test_malformed_values_are_usage_errors(run: Run, argv: list[str]) -> None:
    result = run(*argv)
    assert result.returncode == 2
    assert "Error: Invalid value" in result.stderr or "Error: Missing argument" in result.stderr


def test_from_abc_message_names_the_option(run: Run) -> None:
    result = run("--backfill", "--from", "abc")
    assert "Invalid value for '--from': 'abc' is not a valid integer" in result.stderr


def test_validate_config_good_file(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(
        "port: 9090\nstatic_logs:\n  - {name: Sycamore, url: 'mon.sycamore.example/2026h1/'}\n"
        "delta_sink: {enabled: true}\n"
    )
    result = run("validate-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"configuration OK: {path}"
    assert "  server: 0.0.0.0:9090" in lines
    assert any(line.startswith("  logs:") and "1 static" in line for line in lines)


def test_validate_config_finds_config_yaml_and_applies_env(run: Run, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("port: 9090\n")
    result = run("validate-config", env={"CERTSTREAM_PORT": "9191"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        f"configuration OK: {tmp_path / 'config.yaml'}",
        "  server: 0.0.0.0:9191",
    ]


def test_validate_config_bad_file_lists_every_problem(run: Run, bad_config: Path) -> None:
    result = run("validate-config", "--config", str(bad_config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: invalid configuration ({bad_config}):",
        "  - port: 99999 is not allowed; expected an integer from 0 to 65535",
        "  - ct_log.batchsize: unknown key; did you mean 'batch_size'? (allowed here: "
        "retry_max_attempts, retry_initial_delay_ms, retry_max_delay_ms, request_timeout_secs, "
        "healthy_threshold, unhealthy_threshold, health_check_interval_secs, state_file, "
        "batch_size, poll_interval_ms, user_agent, source_address, log_refresh_interval_secs, "
        "default_operator_rate_limit_ms, default_operator_max_in_flight, operators, "
        "max_response_bytes, max_decompressed_bytes, verify)",
    ]


def test_alias_bomb_fails_fast_in_bounded_memory(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)

    def limit_memory() -> None:
        # Ample for the command itself; expanding the bomb would need gigabytes.
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    result = run("validate-config", "--config", str(path), preexec_fn=limit_memory, timeout=30)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.splitlines() == [
        f"Error: invalid configuration ({path}):",
        "  - refused: the document, its aliases (*name) expanded, holds more than 100,000 "
        "values; a configuration needs far fewer (an alias bomb?)",
    ]


def test_bad_environment_value_exits_2(run: Run) -> None:
    result = run("validate-config", env={"CERTSTREAM_CT_LOG_BATCH_SIZE": "lots"})
    assert result.returncode == 2
    assert "CERTSTREAM_CT_LOG_BATCH_SIZE: 'lots' is not allowed; expected an integer" in (
        result.stderr
    )


def test_missing_named_config_file_exits_2(run: Run) -> None:
    result = run("validate-config", env={"CERTSTREAM_CONFIG": "/nonexistent/config.yaml"})
    assert result.returncode == 2
    assert "CERTSTREAM_CONFIG: config file not found: /nonexistent/config.yaml" in result.stderr
    result = run("validate-config", "--config", "nope.yaml")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "Error: invalid configuration:",
        "  - --config: config file not found: nope.yaml",
    ]


@pytest.mark.parametrize("command", ["validate-config", "serve"])
def test_unwritable_locations_stop_serve_before_start(
    run: Run, tmp_path: Path, command: str
) -> None:
    # a regular file where a directory should be: refused as root too
    (tmp_path / "file").write_text("")
    path = tmp_path / "c.yaml"
    path.write_text("host: 127.0.0.1\nport: 0\nct_log: {state_file: file/state.json}\n")
    env = {"CERTSTREAM_DELTA_SINK_ENABLED": "true", "CERTSTREAM_DELTA_SINK_TABLE_PATH": "file/t"}
    result = run(command, "--config", str(path), env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"Error: invalid configuration ({path}):",
        f"  - ct_log.state_file: 'file/state.json' cannot be written: {tmp_path}/file is not a "
        "directory",
        f"  - delta_sink.table_path: 'file/t' cannot be written: {tmp_path}/file is not a "
        "directory",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--demo"],
        ["backfill"],
        ["merge", "--staging-path", "./staging"],
        ["gaps"],
        ["fetch", "https://ct.example.com/log", "1"],
        ["testlog"],
        ["validate-config"],
    ],
)
def test_every_mode_validates_the_config_first(run: Run, bad_config: Path, argv: list[str]) -> None:
    result = run(*argv, "--config", str(bad_config))
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: invalid configuration ({bad_config}):")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("rust", "ours"),
    [
        (["--validate-config"], ["validate-config"]),
        (
            ["--backfill", "--from", "5", "--logs", "argon"],
            ["backfill", "--from", "5", "--logs", "argon"],
        ),
        (["--backfill", "--staging-path", "./st"], ["backfill", "--staging-path", "./st"]),
        (["--merge", "--staging-path", "./st"], ["merge", "--staging-path", "./st"]),
    ],
)
def test_rust_spellings_reach_the_same_commands(
    run: Run, bad_config: Path, tmp_path: Path, rust: list[str], ours: list[str]
) -> None:
    # With a broken config both spellings must stop at the same validation with the same words;
    # with a good one validate-config must print the same summary.
    env = {"CERTSTREAM_CONFIG": str(bad_config)}
    a, b = run(*rust, env=env), run(*ours, env=env)
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
    assert a.returncode == 2
    if ours == ["validate-config"]:
        a, b = run(*rust), run(*ours)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
        assert a.returncode == 0


# --- argv translation (pure) ---------------------------------------------------------------------


def test_translation_moves_the_mode_flag_to_a_subcommand() -> None:
    assert translate_rust_argv(["--backfill", "--from", "10", "--logs", "argon"]) == [
        "backfill",
        "--from",
        "10",
        "--logs",
        "argon",
    ]
    assert translate_rust_argv(["--config", "c.yaml", "--merge", "--staging-path", "p"]) == [
        "merge",
        "--config",
        "c.yaml",
        "--staging-path",
        "p",
    ]
    assert translate_rust_argv(["--validate-config"]) == ["validate-config"]


def test_translation_leaves_other_argv_alone() -> None:
    for argv in (["backfill", "--from", "1"], ["--version"], [], ["merge", "--merge"]):
        assert translate_rust_argv(argv) == argv
    # a value that happens to look like a mode flag is still a value
    assert translate_rust_argv(["--backfill", "--logs", "--merge"]) == [
        "backfill",
        "--logs",
        "--merge",
    ]


def test_translation_knows_every_option_value_of_the_rust_modes() -> None:
    """An option value it took for a sub-command name would leave the mode flag untranslated
    (`--backfill --to head` once failed so)."""
    for name in RUST_MODES.values():
        command = cli.commands[name]
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag:
                assert set(param.opts) & TAKES_VALUE, (name, param.opts)
    assert translate_rust_argv(["--backfill", "--to", "head", "--logs", "x"]) == [
        "backfill", "--to", "head", "--logs", "x",
    ]  # fmt: skip


def test_translation_refuses_two_modes() -> None:
    with pytest.raises(click.UsageError, match="--backfill and --merge cannot be used together"):
        translate_rust_argv(["--backfill", "--merge"])
