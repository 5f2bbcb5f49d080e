"""Run a command and write its wall time, CPU time and peak RSS as JSON (used by ``bench/run.py``).

    python -S bench/launch.py RESULT.json COMMAND [ARG...]

Why a separate small process: on Linux a child's ``ru_maxrss`` starts from the resident size
of the process that forked it (the high-water mark survives ``exec``), so a child of the
benchmark, which holds a whole generated fleet in memory, would report at least that. Started
from this launcher, which holds almost nothing, the command reports its own peak.
"""

import json
import os
import sys
import time


def main() -> None:
    result_path, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "exit_code": os.waitstatus_to_exitcode(status),
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
            },
            handle,
        )


if __name__ == "__main__":
    main()
