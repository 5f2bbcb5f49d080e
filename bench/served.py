"""The emulator served over a real socket in its own process, counting the requests it gets.

Started by ``bench/run.py`` (one process per measured fleet), never imported by the product:

    python -m bench.served --fleet FLEET [--latency-ms 50] [--op-seconds 2] [--op-lag 0]
                           [--rate-limit R | --no-limits]

It serves ``reconciler.emulator`` with ``serve_in_thread`` (the same server as ``cvmkeys
emulator serve``) with changes kept in memory (``--no-save``: a cloud does not rewrite a file
after every call, and the benchmark measures the tool, not the emulator's persistence) and, as
``cvmkeys emulator serve`` does by default, the documented per-action limits
(``model.DOCUMENTED_RATE_LIMITS``; ``--rate-limit R``: R for every action; ``--no-limits``:
none, for "tool alone"; ``--op-lag``: the 3.0 operation state's lag), prints
``URL <endpoint>`` once it listens, then answers each line read on stdin: ``counts`` prints one
JSON line ``{"requests": {action: n}, "mutations": n}`` (everything received so far, rejected
requests included); end of input stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.server import serve_in_thread
from reconciler.emulator.state import FleetState
from reconciler.model import DOCUMENTED_RATE_LIMITS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--no-limits", action="store_true")
    parser.add_argument("--op-seconds", type=float, default=0.0)
    parser.add_argument("--op-lag", type=float, default=0.0)
    args = parser.parse_args()
    state = FleetState.from_file(args.fleet, op_seconds=args.op_seconds, persist=False)
    state.op_lag = args.op_lag
    documented = None if args.no_limits or args.rate_limit else DOCUMENTED_RATE_LIMITS
    app = EmulatorApp(state, rate_limit=args.rate_limit, latency_ms=args.latency_ms, limits=documented)
    with serve_in_thread(app) as server:
        print(f"URL {server.url}", flush=True)
        for line in sys.stdin:
            if line.strip() == "counts":
                counts = {"requests": dict(app.request_counts), "mutations": len(state.mutations)}
                print(json.dumps(counts, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
