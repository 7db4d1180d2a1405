"""`scripts/test-setup` deciding, for real, whether it can install what the page and cluster tests
need (a browser, nats-server):
with a browser already there, without apt-get, as a user who is not root, without a network.

Nothing is installed or removed. Each run sees a PATH of its own holding only the tools that case
allows (never a browser, unless the case is that one); the run that gets as far as apt-get reads
a source list of its own, pointing at a closed loopback port, with apt's state in tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.browser import TEST_SETUP, find_chromium

pytestmark = pytest.mark.timeout(60)

BASH = shutil.which("bash") or "/bin/bash"
SKIPPED = "the tests that need them will be skipped"
# What the script finds missing: the browser (never on these runs' PATH), and nats-server unless
# it is where Debian puts it (the script looks there too, whatever the PATH).
NO_APT = f"(not a Debian-like system); {SKIPPED}"
HAS_NATS = Path("/usr/sbin/nats-server").exists()
MISSING = "chromium chromium-driver" + ("" if HAS_NATS else " nats-server")


def tools(where: Path, *names: str) -> Path:
    """A directory to use as PATH with just `names` in it, linked to this machine's own."""
    bin_dir = where / "bin"
    bin_dir.mkdir()
    for name in names:
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"this machine has no {name}")
        (bin_dir / name).symlink_to(found)
    return bin_dir


def setup(
    path: Path,
    tmp_path: Path,
    *,
    prefix: tuple[str, ...] = (),
    script: Path = TEST_SETUP,
    **env: str,
) -> tuple[int, list[str]]:
    """Run the script; its exit status and the lines it wrote."""
    done = subprocess.run(
        [*prefix, BASH, str(script)],
        env={"PATH": str(path), "TMPDIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).splitlines()


def test_a_browser_on_path_is_all_it_needs(tmp_path: Path) -> None:
    browser = find_chromium()
    if browser is None:
        pytest.skip("no browser on this machine to point PATH at")
    path = tools(tmp_path, "id")
    (path / "chromium").symlink_to(browser)
    rest = [] if HAS_NATS else [f"[test-setup] cannot install nats-server: no apt-get {NO_APT}"]
    assert setup(path, tmp_path) == (0, rest)


def test_without_apt_get_it_says_so_in_one_line_and_lets_the_run_go_on(tmp_path: Path) -> None:
    status, lines = setup(tools(tmp_path, "id", "grep"), tmp_path)
    assert (status, lines) == (
        0,
        [f"[test-setup] cannot install {MISSING}: no apt-get {NO_APT}"],
    )


def test_a_user_who_is_not_root_and_has_no_sudo_is_told_root_is_needed(tmp_path: Path) -> None:
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # The real thing: the same script as an unprivileged user (nobody), not a flag saying so.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and no setpriv to drop privileges with")
        prefix = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
    # Outside tmp_path, whose parents only root may enter; the script is copied there too, as
    # the checkout itself may sit where only root may enter (a clone under `mktemp -d`).
    with tempfile.TemporaryDirectory() as shared:
        Path(shared).chmod(0o755)
        path = tools(Path(shared), "id", "grep", "apt-get")
        script = Path(shutil.copy(TEST_SETUP, Path(shared) / "test-setup"))
        status, lines = setup(path, Path(shared), prefix=prefix, script=script)
    assert (status, lines) == (
        0,
        [f"[test-setup] cannot install {MISSING}: needs root or passwordless sudo; {SKIPPED}"],
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="apt-get is only reached as root")
def test_without_a_network_apt_get_fails_and_it_names_the_unreachable_mirror(
    tmp_path: Path,
) -> None:
    apt = tmp_path / "apt"
    for part in ("lists/partial", "cache/archives/partial", "parts", "prefs", "state"):
        (apt / part).mkdir(parents=True)
    (apt / "status").touch()
    (apt / "sources.list").write_text("deb http://127.0.0.1:9/debian bookworm main\n")
    config = apt / "apt.conf"
    config.write_text(
        "".join(
            f'{key} "{value}";\n'
            for key, value in {
                "Dir::State": apt / "state",
                "Dir::State::Lists": apt / "lists",
                "Dir::State::status": apt / "status",
                "Dir::Cache": apt / "cache",
                "Dir::Etc::SourceList": apt / "sources.list",
                "Dir::Etc::SourceParts": apt / "parts",
                "Dir::Etc::PreferencesParts": apt / "prefs",
                "Debug::NoLocking": "true",  # the machine's own apt is never touched
                "Acquire::Retries": "0",
                "APT::Sandbox::User": "root",  # its _apt user may not enter tmp_path
            }.items()
        )
    )
    path = tools(tmp_path, "id", "grep", "apt-get")
    status, lines = setup(path, tmp_path, APT_CONFIG=str(config))
    log = tmp_path / "certlake-test-setup.log"
    assert status == 0
    assert lines[0] == (f"[test-setup] installing {MISSING} with apt-get for the tests")
    assert len(lines) == 2, lines  # apt's own output went to the log
    assert lines[1].startswith(
        f"[test-setup] cannot install {MISSING}: apt-get failed (W: Failed to "
        "fetch http://127.0.0.1:9/debian/"
    )
    assert lines[1].endswith(f"; log: {log}); {SKIPPED}")
    assert "Unable to locate package chromium" in log.read_text()
