"""Run a command and write its peak resident set (MiB) to a file: `python maxrss.py OUT CMD...`.

Linux carries a process's `maxrss` across exec from the memory it had before, so a command
spawned straight from the test process reports at least the test process's own peak (hundreds of
MB late in a full run). Started from this small launcher instead, the command's figure starts
from the launcher's few MB and is its own.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    out, *cmd = sys.argv[1:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w") as f:
        f.write(str(usage.ru_maxrss / 1024))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
