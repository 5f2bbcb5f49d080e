"""Benchmark of ``cvmkeys`` at fleet scale: API calls, wall time, CPU and memory (issues 6, 16).

    python bench/run.py --size M [--mode inprocess|served|both] [--api 2.0|3.0] [--remove 0.1]

For each size it generates a fleet and a desired-state file (``bench/fleetgen.py``, seeded), then
runs the real command line (``python -m reconciler``, i.e. ``cvmkeys``) as a subprocess and
measures each run's wall time, CPU time (user + system) and peak RSS (``bench/launch.py``):

* in-process: ``cvmkeys plan --emulator FLEET --out plan.json`` then ``cvmkeys apply plan.json``;
  the emulator runs inside the tool's process with no latency (``--rate-limit 0``: nothing to
  protect). The same two commands are also run against an unthrottled emulator in another
  process ("tool alone", ``--endpoint URL``), which gives the tool's own CPU without the
  emulator's share;
* served: the emulator in its own process (``bench/served.py``) with ``--latency-ms 50
  --op-seconds 2`` and the documented per-action limits (DescribeInstances 40/s, the rest 10/s;
  ``--served-rate-limit R``: R for every action; ``--op-lag S``: 3.0's state lag), the tool with
  its defaults (the client's documented per-action limits); then
  the peers (``bench/peer.py``: Terraform-like, and one call per binding) on fresh copies of the
  same fleet, on samples, extrapolated linearly.

Calls are counted from the tool's ``--audit-log`` (every attempt) and, when served, by the
emulator too; they are compared with minimums computed from the fleet and the desired file
alone (``bench/minimum.py``, never the tool's plan). Results go to ``OUT/<size>-<mode>.json``;
the Markdown tables of every result in OUT are printed, and written into ``bench/README.md``
with ``--update-readme``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python bench/run.py`` puts bench/, not the root, on the path
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.fleetgen import SECRET_ID, SECRET_KEY, SIZES, Generated, generate_size, write  # noqa: E402
from bench.minimum import (  # noqa: E402
    Truth,
    apply_minimum,
    plan_minimum,
    truth_of,
    unbind_lower_bound_3,
    unbind_minimum_2,
)
from bench.minimum import summary as minimum_summary  # noqa: E402
from bench.peer import PeerResult, Polling, TerraformPeer, peer_apply  # noqa: E402
from reconciler.cloud.client import instance_state  # noqa: E402
from reconciler.core.plan import build_plan  # noqa: E402
from reconciler.desired.loader import load_paths  # noqa: E402
from reconciler.model import (  # noqa: E402
    DEFAULT_RATE_LIMIT,
    DOCUMENTED_RATE_LIMITS,
    Desired,
    Instance,
    KeyPair,
    Observed,
    Plan,
)
from reconciler.planfile import load_plan  # noqa: E402

PAGE = 100  # IDs per describe call and instances per (un)bind call
# STS, which a 3.0 run asks who its credentials are: not CVM calls (not held against a minimum).
STS_ACTIONS = frozenset({"GetCallerIdentity", "AssumeRole", "AssumeRoleWithWebIdentity"})
# The served emulator: 50 ms latency, 2 s operations, no state lag; ``rate_limit`` None: the
# documented per-action limits (DescribeInstances 40/s, the rest 10/s), else one for every action.
SERVED: dict[str, float | None] = {"latency_ms": 50.0, "rate_limit": None, "op_seconds": 2.0, "op_lag": 0.0}
README = Path(__file__).resolve().parent / "README.md"
TABLES_START = "<!-- results:start -->"
TABLES_END = "<!-- results:end -->"


# --------------------------------------------------------------------------- the minimum
# The minimums themselves are in bench/minimum.py, computed from the fleet and the desired file
# without the product. What is here only arranges the executor's polls for the waves a plan
# chose (a figure reported beside the minimum, not the minimum: the waves are the tool's choice).


def _pages(count: int) -> int:
    return math.ceil(count / PAGE)


def poll_minimum(waves: Sequence[Collection[str]]) -> int:
    """The fewest DescribeInstances that see each instance idle once after each of its calls,
    for the given waves (the instances of each), packed as the executor packs them.

    Before wave *w + 1* starts, its instances with a call not yet seen finished must be seen
    idle (mandatory in that round); after the last wave, every instance before the
    verification (in status 20 an instance still reports its old keys). The free places of a
    round's last call carry instances that the next wave does not touch, oldest calls first;
    the rest are polled at the end. 100 instances a call.
    """
    latest: dict[str, int] = {}  # instance not yet seen idle -> wave of its latest call
    calls = 0
    for w, instances in enumerate(waves):
        latest.update(dict.fromkeys(instances, w))
        if w + 1 == len(waves):
            break
        following = set(waves[w + 1])
        mandatory = [i for i in latest if i in following]
        if not mandatory:
            continue
        calls += _pages(len(mandatory))
        free = -len(mandatory) % PAGE
        fillers = sorted((latest[i], i) for i in latest if i not in following)[:free]
        for iid in [*mandatory, *(i for _, i in fillers)]:
            del latest[iid]
    return calls + _pages(len(latest))


def lower_bound_s(
    minimum: Mapping[str, int], rate: float | Mapping[str, float], waves: int = 0, op_seconds: float = 0.0
) -> float:
    """Wall-time lower bound: the busiest action's calls at its rate a second (each action has
    its own limit: ``rate`` is one for all or a table by action), or the waves one after another
    at ``op_seconds`` each, whichever is larger."""

    def rate_of(action: str) -> float:
        return rate.get(action, DEFAULT_RATE_LIMIT) if isinstance(rate, Mapping) else rate

    by_rate = max((calls / rate_of(action) for action, calls in minimum.items()), default=0.0)
    return max(by_rate, waves * op_seconds)


def observed_truth(gen: Generated) -> Observed:
    """The live state of a generated fleet, as a plan would observe it (no API involved)."""
    region: Any = gen.fleet["regions"]
    data = region[gen.region]
    keys = {k["id"]: KeyPair(k["id"], k["name"], tuple(k["bound"])) for k in data["keys"]}
    instances = {
        i["id"]: Instance(i["id"], i["name"], *instance_state(i["status"]), i["os"])
        for i in data["instances"]
    }
    return Observed(region=gen.region, keys=keys, instances=instances)


# --------------------------------------------------------------------------- running things


@dataclass
class Run:
    """One run of the tool as a subprocess."""

    command: str
    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    calls: dict[str, int] = field(default_factory=dict)  # attempts, from the audit log
    api_wall_s: float = 0.0  # from the start of the first call to the end of the last one
    throttled: int = 0  # attempts answered 4400
    server_calls: dict[str, int] | None = None  # requests the served emulator received


def tool_env() -> dict[str, str]:
    """The environment of the tool: the generated fleet's credentials and nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENCENTCLOUD_", "TCCLI_"))}
    env.update(TENCENTCLOUD_SECRET_ID=SECRET_ID, TENCENTCLOUD_SECRET_KEY=SECRET_KEY, NO_COLOR="1")
    return env


def measure(argv: Sequence[str], *, cwd: Path, stdout: Path, stderr: Path) -> tuple[int, float, float, float]:
    """Run ``argv`` through ``bench/launch.py``; (exit code, wall s, CPU s, peak RSS in MB) of
    that process alone."""
    report = stdout.with_suffix(".usage.json")
    launcher = [sys.executable, "-S", str(Path(__file__).resolve().parent / "launch.py"), str(report)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        subprocess.run([*launcher, *argv], cwd=cwd, stdout=out, stderr=err, env=tool_env(), check=True)
    usage = json.loads(report.read_text(encoding="utf-8"))
    return usage["exit_code"], usage["wall_s"], usage["cpu_s"], usage["peak_rss_mb"]


def run_tool(args: Sequence[str], work: Path, name: str) -> Run:
    """``cvmkeys ARGS --audit-log`` in ``work``; calls counted from the audit log."""
    audit = work / f"{name}.audit.jsonl"
    audit.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "reconciler", *args, "--audit-log", str(audit)]
    code, wall, cpu, rss = measure(argv, cwd=work, stdout=work / f"{name}.out", stderr=work / f"{name}.err")
    calls: collections.Counter[str] = collections.Counter()
    throttled = 0
    first, last = math.inf, -math.inf
    if audit.exists():
        for line in audit.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            calls[record["action"]] += 1
            throttled += record["code"] == 4400
            began = dt.datetime.fromisoformat(record["time"]).timestamp()
            first, last = min(first, began), max(last, began + record["durationMs"] / 1000)
    api = round(last - first, 3) if calls else 0.0
    shown = " ".join(["cvmkeys", *args]).replace(str(work) + os.sep, "")
    return Run(shown, code, round(wall, 3), round(cpu, 3), round(rss, 1), dict(calls), api, throttled)


def cpu_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """The smallest CPU time (process time) of ``repeat`` calls of ``fn``."""
    best = math.inf
    for _ in range(repeat):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return round(best, 4)


class ServedEmulator:
    """``bench/served.py`` in its own process; ``counts()`` asks it what it received."""

    def __init__(
        self,
        fleet: Path,
        *,
        latency_ms: float | None,
        rate_limit: float | None,
        op_seconds: float | None,
        op_lag: float | None = 0.0,
    ) -> None:
        # rate_limit: None, the documented per-action limits; 0, none; else one for every action.
        argv = [sys.executable, "-m", "bench.served", "--fleet", str(fleet)]
        argv += ["--latency-ms", str(latency_ms or 0), "--op-seconds", str(op_seconds or 0)]
        argv += ["--op-lag", str(op_lag or 0)]
        if rate_limit == 0:
            argv += ["--no-limits"]
        elif rate_limit is not None:
            argv += ["--rate-limit", str(rate_limit)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        first = self.proc.stdout.readline()
        if not first.startswith("URL "):
            self.close()
            raise RuntimeError(f"the emulator did not start: {first!r}")
        self.url = first.split(" ", 1)[1].strip()

    def counts(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        requests: dict[str, int] = json.loads(self.proc.stdout.readline())["requests"]
        return requests

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServedEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {a: after[a] - before.get(a, 0) for a in sorted(after) if after[a] - before.get(a, 0)}


def _outcomes(run_out: Path) -> dict[str, int]:
    try:
        summary: dict[str, int] = json.loads(run_out.read_text(encoding="utf-8"))["summary"]
    except (OSError, ValueError, KeyError):
        return {}
    return summary


# --------------------------------------------------------------------------- one size


@dataclass
class Settings:
    """How a run is configured (from the command line; the smoke test shrinks the waits)."""

    api: str = "2.0"
    served: dict[str, float | None] = field(default_factory=lambda: dict(SERVED))
    peer_sample: int = 20  # bindings the per-binding peer is timed on (0: all)
    tf_sample: int = 20  # instances the Terraform-like apply is timed on (0: all)
    tf_refresh_sample: int = 200  # instances its refresh is timed on (0: all)
    terraform: TerraformPeer = field(default_factory=TerraformPeer)  # its sleep, polling, parallelism


@dataclass
class Prepared:
    size: str
    work: Path
    gen: Generated
    fleet: Path  # pristine copy; every mode works on its own copy
    desired_file: Path
    facts: dict[str, Any]
    truth: Truth
    plan_min: dict[str, int]


def libyaml_fresh_s(path: Path) -> float:
    """CPU time of one libyaml parse of ``path`` in a fresh interpreter (no warm caches): the
    yardstick of the plan CPU target. The smallest of three processes."""
    code = (
        "import sys, time, yaml\n"
        "text = open(sys.argv[1], encoding='utf-8').read()\n"
        "t = time.process_time(); yaml.load(text, Loader=yaml.CSafeLoader)\n"
        "print(time.process_time() - t)\n"
    )
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(3)
    ]
    return round(min(runs), 4)


def planner_batching(desired: Desired, observed: Observed) -> dict[str, Any]:
    """The product's batching of the plan, for 2.0 and 3.0 (pure; reported next to the minimum)."""
    from reconciler.core.batching import make_batches, wave_count
    from reconciler.core.diff import diff

    changes = diff(desired, observed).changes
    out: dict[str, Any] = {}
    for api in ("2.0", "3.0"):
        batches = make_batches(changes, api=api)
        out[api] = {"calls": len(batches), "waves": wave_count(batches)}
    return out


def prepare(size: str, remove: float, seed: int, work: Path) -> Prepared:
    """Generate the fleet and the desired file; compute the minimum and the static timings."""
    n_instances, n_keys = SIZES[size]
    gen = generate_size(size, seed=seed, remove_fraction=remove)
    folder = work / size
    fleet, desired_file = write(gen, folder)
    pristine = folder / "fleet.pristine.json"
    shutil.copyfile(fleet, pristine)
    text = desired_file.read_text(encoding="utf-8")
    truth = truth_of(fleet, desired_file)
    desired = load_paths([desired_file]).by_region[gen.region]
    observed = observed_truth(gen)
    facts: dict[str, Any] = {
        "instances": n_instances,
        "keys": n_keys,
        "live_bindings": len(gen.live),
        "desired_file_bytes": len(text.encode()),
        "fleet_file_bytes": fleet.stat().st_size,
        "truth": dict(minimum_summary(truth)),
        "unbind_minimum_2": unbind_minimum_2(truth),
        "unbind_lower_bound_3": unbind_lower_bound_3(truth),
        "planner": planner_batching(desired, observed),
        "libyaml_parse_s": libyaml_fresh_s(desired_file),
        "libyaml_parse_warm_s": cpu_of(lambda: yaml.load(text, Loader=yaml.CSafeLoader)),
        "desired_load_s": cpu_of(lambda: load_paths([desired_file])),
        "pure_diff_s": cpu_of(lambda: build_plan(desired, observed, endpoint="truth")),
        "emulator_fleet_load_s": _fleet_load_s(pristine),
    }
    return Prepared(size, folder, gen, pristine, desired_file, facts, truth, plan_minimum(truth))


def _fleet_load_s(fleet: Path) -> float:
    from reconciler.emulator.state import FleetState

    return cpu_of(lambda: FleetState.from_file(fleet, persist=False))


def startup_cost(work: Path) -> tuple[float, float]:
    """CPU time and peak RSS (MB) of ``cvmkeys --version``: interpreter start and imports,
    the fixed cost of every command (the smallest of three runs)."""
    best, rss = math.inf, math.inf
    for _ in range(3):
        _, _, cpu, peak = measure(
            [sys.executable, "-m", "reconciler", "--version"],
            cwd=work,
            stdout=work / "version.out",
            stderr=work / "version.err",
        )
        best, rss = min(best, cpu), min(rss, peak)
    return round(best, 3), round(rss, 1)


def _api_args(api: str) -> list[str]:
    # Always said: cvmkeys speaks 3.0 by default since the 3.0 client was wired in.
    return ["--api", api]


def _endpoint(url: str, api: str) -> str:
    """The served emulator's endpoint for ``api``: 2.0 at ``/v2/index.php`` (the URL it prints),
    3.0 at ``/`` of the same port."""
    return url if api == "2.0" else url.removesuffix("v2/index.php")


def _plan_and_apply(
    p: Prepared, mode: str, connect: list[str], apply_connect: list[str], api: str
) -> dict[str, Any]:
    """plan --out, then apply of that plan; the runs, their minimums and outcomes."""
    plan_file = p.work / f"plan-{mode}.json"
    plan_run = run_tool(
        ["plan", str(p.desired_file), *connect, *_api_args(api), "--out", str(plan_file)],
        p.work,
        f"plan-{mode}",
    )
    if plan_run.exit_code != 0 or not plan_file.exists():
        raise RuntimeError(f"{mode} plan failed: see {p.work}/plan-{mode}.err")
    plan = load_plan(plan_file.read_text(encoding="utf-8"), str(plan_file))
    apply_run = run_tool(
        ["apply", str(plan_file), *apply_connect, "--format", "json"], p.work, f"apply-{mode}"
    )
    outcomes = _outcomes(p.work / f"apply-{mode}.out")
    if outcomes.get("done") != plan.summary.to_unbind or outcomes.get("failed"):
        raise RuntimeError(f"{mode} apply did not do the plan ({outcomes}): see {p.work}/apply-{mode}.err")
    waves: dict[int, set[str]] = collections.defaultdict(set)
    for batch in plan.batches:
        waves[batch.wave].update(batch.instance_ids)
    return {
        "api": api,
        "plan": asdict(plan_run),
        "plan_minimum": p.plan_min,
        "apply": asdict(apply_run),
        "apply_minimum": apply_minimum(p.truth, api),
        "apply_outcomes": outcomes,
        "waves": plan.summary.waves,
        "plan_calls": len(plan.batches),
        # The fewest polls for the waves this plan chose (beside the minimum, which does not
        # depend on the tool's choices).
        "polls_for_plan_waves": poll_minimum([waves[w] for w in sorted(waves)]),
        "apply_polls": apply_run.calls.get("DescribeInstances", 0)
        - _pages(len(plan.fingerprint.instance_ids)),
        "ready_unbinds": plan.summary.to_unbind,
        "truth_ready_unbinds": len(p.truth.ready),
        "_plan": plan,
    }


def run_inprocess(p: Prepared, settings: Settings, *, tool_alone: bool = True) -> dict[str, Any]:
    """plan and apply against the emulator in the tool's process; with ``tool_alone``, also
    against one in another process (the tool's own cost) and the start-up cost."""
    fleet = p.work / "fleet-inprocess.json"
    shutil.copyfile(p.fleet, fleet)
    fleet.with_name(fleet.name + ".state.sqlite").unlink(missing_ok=True)
    # The emulator's live state (SQLite) is built from the fixture once, before the first
    # command, as an account exists before the tool runs: timed on its own, not as the plan's.
    code, wall, cpu, rss = measure(
        [sys.executable, "-m", "reconciler", "emulator", "reset", "--fleet", str(fleet)],
        cwd=p.work,
        stdout=p.work / "state-build.out",
        stderr=p.work / "state-build.err",
    )
    if code != 0:
        raise RuntimeError(f"emulator reset failed: see {p.work}/state-build.err")
    state_build = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "peak_rss_mb": round(rss, 1)}
    no_limit = ["--rate-limit", "0"]
    result = _plan_and_apply(p, "inprocess", ["--emulator", str(fleet), *no_limit], no_limit, settings.api)
    result.pop("_plan")
    result["state_build"] = state_build
    if not tool_alone:
        return result
    # The same commands against an unthrottled emulator in another process: the tool alone.
    alone = p.work / "fleet-alone.json"
    shutil.copyfile(p.fleet, alone)
    with ServedEmulator(alone, latency_ms=0, rate_limit=0, op_seconds=0) as emulator:
        connect = ["--endpoint", _endpoint(emulator.url, settings.api), *no_limit]
        # The plan changes nothing: two more plans, and the CPU target takes the least CPU of
        # the three, as the libyaml yardstick is the least of three parses (a shared machine).
        again = [
            run_tool(["plan", str(p.desired_file), *connect, *_api_args(settings.api)], p.work, f"replan-{n}")
            for n in range(2)
        ]
        solo = _plan_and_apply(p, "alone", connect, connect, settings.api)
    result["plan_tool_alone"] = solo["plan"]
    result["plan_tool_alone_cpu_s"] = [*(run.cpu_s for run in again), solo["plan"]["cpu_s"]]
    result["apply_tool_alone"] = solo["apply"]
    result["startup_cpu_s"], result["startup_rss_mb"] = startup_cost(p.work)
    return result


def _peer_client(api: str, url: str, region: str, rate: float | None) -> Any:
    """Our own client for the peers (same signing and rate limits as the tool: ``rate`` for
    every action, or None: the documented ones)."""
    from reconciler.cloud.api3 import Api3Client
    from reconciler.cloud.client import CvmClient
    from reconciler.cloud.credentials import Credentials

    client_class = CvmClient if api == "2.0" else Api3Client
    limits = DOCUMENTED_RATE_LIMITS if rate is None else rate
    return client_class(Credentials(SECRET_ID, SECRET_KEY), region, endpoint=url, rate_limit=limits)


def _scaled(run: PeerResult, done: int, total: int) -> dict[str, Any]:
    scale = total / max(1, done)
    return {
        "sample": done,
        "of": total,
        "sample_wall_s": round(run.wall_s, 3),
        "sample_calls": run.calls,
        "failed": run.failed[:5],
        "extrapolated": done < total,
        "wall_s": round(run.wall_s * scale, 1),
        "calls": round(sum(run.calls.values()) * scale),
        "calls_by_action": {a: round(n * scale) for a, n in run.calls.items()},
    }


def run_peers(p: Prepared, settings: Settings, bindings: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The per-binding peer and the Terraform-like peer, each on a fresh copy of the fleet."""
    served = settings.served
    out: dict[str, Any] = {}
    peer_fleet = p.work / "fleet-peer.json"
    shutil.copyfile(p.fleet, peer_fleet)
    sample = list(bindings) if settings.peer_sample <= 0 else list(bindings[: settings.peer_sample])
    with (
        ServedEmulator(peer_fleet, **served) as emulator,
        _peer_client(settings.api, _endpoint(emulator.url, settings.api), p.gen.region, served["rate_limit"])
        as client,
    ):
        run = peer_apply(client, sample, api=settings.api)
    out["per_binding"] = _scaled(run, len(sample), len(bindings))

    tf_fleet = p.work / "fleet-terraform.json"
    shutil.copyfile(p.fleet, tf_fleet)
    managed = sorted(p.truth.managed_instances)
    refresh_ids = managed if settings.tf_refresh_sample <= 0 else managed[: settings.tf_refresh_sample]
    instances = sorted({i for _, i in bindings})
    chosen = set(instances if settings.tf_sample <= 0 else instances[: settings.tf_sample])
    tf_bindings = [b for b in bindings if b[1] in chosen]
    with (
        ServedEmulator(tf_fleet, **served) as emulator,
        _peer_client(settings.api, _endpoint(emulator.url, settings.api), p.gen.region, served["rate_limit"])
        as client,
    ):
        refresh = settings.terraform.refresh(client, refresh_ids)
        applied = settings.terraform.apply(client, tf_bindings, api=settings.api)
    out["terraform_refresh"] = _scaled(refresh, len(refresh_ids), len(managed))
    out["terraform_apply"] = _scaled(applied, len(chosen), len(instances))
    out["terraform"] = {
        "sleep_s": settings.terraform.sleep_s,
        "poll_s": settings.terraform.polling.interval,
        "parallelism": settings.terraform.parallelism,
        "wall_s": round(out["terraform_refresh"]["wall_s"] + out["terraform_apply"]["wall_s"], 1),
        "calls": out["terraform_refresh"]["calls"] + out["terraform_apply"]["calls"],
    }
    return out


def run_served(p: Prepared, settings: Settings) -> dict[str, Any]:
    fleet = p.work / "fleet-served.json"
    shutil.copyfile(p.fleet, fleet)
    served = settings.served
    with ServedEmulator(fleet, **served) as emulator:
        before = emulator.counts()
        connect = ["--endpoint", _endpoint(emulator.url, settings.api)]
        result = _plan_and_apply(p, "served", connect, connect, settings.api)
        # The emulator's own count of the plan's and apply's requests (4400 answers included).
        after = emulator.counts()
    plan: Plan = result.pop("_plan")
    rate: float | Mapping[str, float] = served["rate_limit"] or DOCUMENTED_RATE_LIMITS
    op = served["op_seconds"] or 0.0
    result["server_requests"] = _delta(after, before)
    result["plan_lower_bound_s"] = round(lower_bound_s(result["plan_minimum"], rate), 3)
    # Waves: at least the most keys one instance loses (2.0), computed from the input.
    least_waves = (
        p.truth.most_keys_lost if settings.api == "2.0" else math.ceil(p.truth.most_keys_lost / PAGE)
    )
    result["apply_lower_bound_s"] = round(lower_bound_s(result["apply_minimum"], rate, least_waves, op), 3)
    bindings = [(c.key_id, c.instance_id) for c in plan.ready_changes]
    result["peers"] = run_peers(p, settings, bindings)
    return result


# --------------------------------------------------------------------------- reporting


def machine() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


_SHORT = {
    "DescribeKeyPairs": "keys",
    "DescribeInstances": "inst",
    "UnBindInstanceKey": "unbind",
    "DisassociateInstancesKeyPairs": "unbind",
}


def _calls_cell(made: Mapping[str, int], minimum: Mapping[str, int], actions: Iterable[str]) -> str:
    parts = []
    for action in actions:
        if action in made or action in minimum:
            parts.append(f"{_SHORT[action]} {made.get(action, 0)}/{minimum.get(action, 0)}")
    return ", ".join(parts)


def _total(calls: Mapping[str, int]) -> int:
    return sum(calls.values())


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def load_results(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(data, dict) and "size" in data and "mode" in data and "api" in data:
            found.append(data)
    order = {s: n for n, s in enumerate(SIZES)}
    found.sort(key=lambda d: (order.get(d["size"], 9), d["api"], d["mode"]))
    return found


def _server_agrees(result: Mapping[str, Any]) -> bool:
    total: collections.Counter[str] = collections.Counter()
    for name in ("plan", "apply"):
        total.update(result[name]["calls"])
    return bool(result.get("server_requests") == dict(total))


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table; columns after the first two are right-aligned."""
    align = ["---" if n < 2 else "---:" for n in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _s(seconds: float, digits: int = 1) -> str:
    return f"{seconds:,.{digits}f} s"


def _unbind_action(api: str) -> str:
    return "UnBindInstanceKey" if api == "2.0" else "DisassociateInstancesKeyPairs"


def _growth(results: Mapping[str, dict[str, Any]]) -> list[str]:
    """Each in-process cost (above start-up) at every size run, and its growth from the second
    smallest size (S is mostly fixed costs) to the largest, next to the growth of the input."""
    order = [s for s in SIZES if s in results]
    base = order[1] if len(order) > 2 else order[0]
    small, big = results[base], results[order[-1]]
    size_ratio = big["facts"]["live_bindings"] / small["facts"]["live_bindings"]
    picks: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        ("plan CPU (s)", lambda d: d["result"]["plan"]["cpu_s"] - d["result"]["startup_cpu_s"]),
        ("plan peak RSS (MB)", lambda d: d["result"]["plan"]["peak_rss_mb"] - d["result"]["startup_rss_mb"]),
        ("apply CPU (s)", lambda d: d["result"]["apply"]["cpu_s"] - d["result"]["startup_cpu_s"]),
        (
            "apply peak RSS (MB)",
            lambda d: d["result"]["apply"]["peak_rss_mb"] - d["result"]["startup_rss_mb"],
        ),
        (
            "tool alone plan CPU (s)",
            lambda d: d["result"]["plan_tool_alone"]["cpu_s"] - d["result"]["startup_cpu_s"],
        ),
        (
            "tool alone plan RSS (MB)",
            lambda d: d["result"]["plan_tool_alone"]["peak_rss_mb"] - d["result"]["startup_rss_mb"],
        ),
        (
            "tool alone apply CPU (s)",
            lambda d: d["result"]["apply_tool_alone"]["cpu_s"] - d["result"]["startup_cpu_s"],
        ),
        ("pure diff (s)", lambda d: d["facts"]["pure_diff_s"]),
    ]
    rows = []
    for label, pick in picks:
        a, b = pick(small), pick(big)
        growth = (b / a) / size_ratio if a > 0 else math.inf
        values = [f"{pick(results[size]):.2f}" for size in order]
        rows.append([label, *values, f"{b / a:.1f}", f"{size_ratio:.1f}", f"{growth:.2f}"])
    header = [
        "measure (above start-up)",
        *order,
        f"{order[-1]} / {base}",
        "bindings ratio",
        "growth vs linear",
    ]
    return _table(header, rows)


def render_tables(results: Sequence[dict[str, Any]]) -> str:
    """The Markdown tables of the README, from the result files."""
    if not results:
        return "(no results yet: run `python bench/run.py --size S`)\n"
    m = results[0]["machine"]
    out = [f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['system']}.", ""]
    out += [f"- `{r['command']}` ({r['date']})" for r in results]
    out.append("")

    out += ["### Batching: unbind calls and waves the planner makes, next to the minimum", ""]
    rows = []
    seen: set[str] = set()
    for r in results:
        f = r["facts"]
        if r["size"] in seen:
            continue
        seen.add(r["size"])
        t, pl = f["truth"], f["planner"]
        rows.append(
            [
                r["size"],
                f"{f['live_bindings']:,}",
                f"{t['ready']:,}",
                f"{t['most_keys_lost']}",
                f"{pl['2.0']['calls']:,} / {f['unbind_minimum_2']:,}",
                _ok(pl["2.0"]["calls"] == f["unbind_minimum_2"]),
                f"{pl['2.0']['waves']}",
                f"{pl['3.0']['calls']:,} (>= {f['unbind_lower_bound_3']:,})",
                f"{pl['3.0']['waves']}",
            ]
        )
    header = ["size", "bindings", "ready unbinds", "most keys lost by one instance", "2.0 calls / minimum"]
    out += _table([*header, "= minimum", "2.0 waves", "3.0 calls (lower bound)", "3.0 waves"], rows)

    out += ["### API calls: made / minimum (apply reads: made / lower bound)", ""]
    rows = []
    for r in results:
        x, api = r["result"], r["api"]
        unbind = _unbind_action(api)
        # A 3.0 plan also asks STS once who its credentials are (GetCallerIdentity, for the
        # account guard): not a CVM call, so not held against the CVM minimum.
        cvm_calls = {a: n for a, n in x["plan"]["calls"].items() if a not in STS_ACTIONS}
        plan_ok = cvm_calls == x["plan_minimum"]
        made = x["apply"]["calls"].get(unbind, 0)
        # 2.0: the exact minimum; 3.0: its minimum is not known exactly (a biclique partition),
        # so the check is "no more than 2.0's minimum" (its lower bound is shown beside).
        unbind_ok = (
            made == x["apply_minimum"].get(unbind, 0)
            if api == "2.0"
            else made <= r["facts"]["unbind_minimum_2"]
        )
        reads = ("DescribeKeyPairs", "DescribeInstances")
        rows.append(
            [
                r["size"],
                f"{r['mode']} {api}",
                f"{x['ready_unbinds']:,}"
                + ("" if x["ready_unbinds"] == x["truth_ready_unbinds"] else " (!)"),
                _calls_cell(x["plan"]["calls"], x["plan_minimum"], reads),
                _ok(plan_ok),
                _calls_cell(x["apply"]["calls"], x["apply_minimum"], (unbind,)),
                _ok(unbind_ok),
                _calls_cell(x["apply"]["calls"], x["apply_minimum"], reads),
                f"{x['apply_polls']}/{x['polls_for_plan_waves']}",
            ]
        )
    header = ["size", "mode", "unbinds", "plan", "plan = min", "unbind calls", "unbind = min", "apply reads"]
    out += _table([*header, "apply polls / packing model for the plan's waves"], rows)
    agree = [
        f"{r['size']} {r['api']}" for r in results if r["mode"] == "served" and _server_agrees(r["result"])
    ]
    if agree:
        out += [
            "Served runs where the emulator counted exactly the requests of the audit logs: "
            + ", ".join(agree)
            + ".",
            "",
        ]

    served = [r for r in results if r["mode"] == "served"]
    if served:
        out += ["### Served: wall time next to the lower bound", ""]
        rows = []
        for r in served:
            x = r["result"]
            for name in ("plan", "apply"):
                run, bound = x[name], x[f"{name}_lower_bound_s"]
                ratio = run["wall_s"] / max(bound, 1e-9)
                rows.append(
                    [
                        r["size"],
                        f"{name} {r['api']}",
                        _s(run["wall_s"]),
                        _s(run["api_wall_s"]),
                        _s(bound),
                        f"{ratio:.2f}",
                        f"{run['api_wall_s'] / max(bound, 1e-9):.2f}",
                        _ok(ratio <= 1.2),
                    ]
                )
        header = ["size", "command", "wall", "API phase", "lower bound", "wall / bound", "API / bound"]
        out += _table([*header, "<= 1.2"], rows)

        out += ["### Plan + apply next to the peers (served)", ""]
        rows = []
        for r in served:
            x = r["result"]
            peers = x["peers"]
            ours_calls = _total(x["plan"]["calls"]) + _total(x["apply"]["calls"])
            ours_wall = x["plan"]["wall_s"] + x["apply"]["wall_s"]
            tf, ref, tfa, pb = (
                peers["terraform"],
                peers["terraform_refresh"],
                peers["terraform_apply"],
                peers["per_binding"],
            )
            rows.append(
                [
                    r["size"],
                    r["api"],
                    f"{ours_calls:,} in {_s(ours_wall)}",
                    f"{tf['calls']:,} in {_s(tf['wall_s'], 0)}",
                    f"{ref['sample']:,} of {ref['of']:,} refreshed, {tfa['sample']} of {tfa['of']:,} applied",
                    f"{tf['calls'] / max(ours_calls, 1):.1f}x",
                    f"{tf['wall_s'] / max(ours_wall, 1e-9):.1f}x",
                    f"{pb['calls']:,} in {_s(pb['wall_s'], 0)} ({pb['sample']} of {pb['of']:,})",
                    f"{pb['wall_s'] / max(x['apply']['wall_s'], 1e-9):.1f}x",
                    _ok(tf["wall_s"] / max(ours_wall, 1e-9) >= 10),
                ]
            )
        header = ["size", "API", "cvmkeys plan + apply", "Terraform-like refresh + apply", "timed on"]
        header += ["calls ratio", "wall ratio", "per-binding peer (apply only)", "its wall ratio to apply"]
        out += _table([*header, ">= 10x (Terraform-like)"], rows)

    out += ["### CPU time and peak memory of the tool's process", ""]
    rows = []
    for r in results:
        x = r["result"]
        pairs = [(f"{r['mode']} {r['api']}", x["plan"], x["apply"])]
        if "plan_tool_alone" in x:
            pairs.append((f"tool alone {r['api']}", x["plan_tool_alone"], x["apply_tool_alone"]))
        for label, pl, ap in pairs:
            rows.append(
                [
                    r["size"],
                    label,
                    _s(pl["cpu_s"], 2),
                    f"{pl['peak_rss_mb']:.0f} MB",
                    _s(pl["wall_s"], 2),
                    _s(ap["cpu_s"], 2),
                    f"{ap['peak_rss_mb']:.0f} MB",
                    _s(ap["wall_s"], 2),
                ]
            )
    header = ["size", "mode", "plan CPU", "plan RSS", "plan wall", "apply CPU", "apply RSS", "apply wall"]
    out += _table(header, rows)
    builds = [(r["size"], r["result"]["state_build"]) for r in results if "state_build" in r["result"]]
    if builds:
        out += [
            "",
            "Before the in-process runs, the emulator's live state is built from the fleet file once "
            "(`cvmkeys emulator reset --fleet FLEET`, not counted above): "
            + "; ".join(
                f"{size} {b['cpu_s']:.2f} s CPU, {b['peak_rss_mb']:.0f} MB" for size, b in builds
            )
            + ".",
            "",
        ]

    inproc = {r["size"]: r for r in results if r["mode"] == "inprocess" and r["api"] == "2.0"}
    if inproc:
        out += [
            "### In-process: the tool's CPU next to a fresh-process libyaml parse of the desired file",
            "",
        ]
        rows = []
        for size, r in inproc.items():
            x, f = r["result"], r["facts"]
            y = f["libyaml_parse_s"]
            cpu = x["plan"]["cpu_s"]
            # The least of three tool-alone plans (as the yardstick is the least of three).
            alone = min(x.get("plan_tool_alone_cpu_s") or [x["plan_tool_alone"]["cpu_s"]])
            apply_ratio = x["apply"]["wall_s"] / max(x["apply_tool_alone"]["wall_s"], 1e-9)
            rows.append(
                [
                    size,
                    _s(y, 3),
                    _s(f["libyaml_parse_warm_s"], 3),
                    _s(cpu, 2),
                    f"{cpu / y:.1f}x",
                    _s(alone, 2),
                    f"{alone / y:.1f}x",
                    _ok(alone / y <= 5) + ("" if alone / y > 3 else " (<= 3x too)"),
                    f"{apply_ratio:.2f}",
                    _ok(apply_ratio <= 2),
                    _s(x["startup_cpu_s"], 2),
                    _s(f["pure_diff_s"], 3),
                ]
            )
        header = ["size", "libyaml (fresh)", "libyaml (warm)", "plan CPU", "ratio"]
        header += ["tool alone CPU (least of 3)", "ratio"]
        header += ["<= 5x", "apply wall in-process / alone", "<= 2", "start-up", "pure diff"]
        out += _table(header, rows)
        if len(inproc) > 1:
            out += ["### Growth (in-process)", ""]
            out += _growth(inproc)
    return "\n".join(out) + "\n"


def update_readme(tables: str) -> None:
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(TABLES_START) + ".*?" + re.escape(TABLES_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{README}: no {TABLES_START} ... {TABLES_END} section to fill")
    README.write_text(pattern.sub(lambda _: f"{TABLES_START}\n{tables}{TABLES_END}", text), encoding="utf-8")


# --------------------------------------------------------------------------- main


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", choices=list(SIZES), default=["S"])
    parser.add_argument("--mode", choices=["inprocess", "served", "both"], default="both")
    parser.add_argument(
        "--api", choices=["2.0", "3.0"], default="2.0", help="the API the tool and peers speak"
    )
    parser.add_argument(
        "--remove", type=float, default=0.1, help="fraction of owned bindings the file removes (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--peer-sample", type=int, default=20, help="bindings the per-binding peer is timed on (0: all)"
    )
    parser.add_argument(
        "--tf-sample", type=int, default=20, help="instances the Terraform-like apply is timed on"
    )
    parser.add_argument(
        "--tf-refresh-sample", type=int, default=200, help="instances its refresh is timed on"
    )
    parser.add_argument(
        "--tf-sleep", type=float, default=10.0, help="its sleep after a call (the provider's 10 s)"
    )
    parser.add_argument("--tf-poll", type=float, default=1.0, help="its polling interval")
    parser.add_argument(
        "--op-seconds", type=float, default=SERVED["op_seconds"], help="served operation time"
    )
    parser.add_argument(
        "--op-lag", type=float, default=0.0, help="served: seconds 3.0's operation state lags (default 0)"
    )
    parser.add_argument(
        "--served-rate-limit",
        type=float,
        default=None,
        help="served: one limit for every action (default: the documented per-action limits)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work", type=Path, default=None, help="keep the generated files here")
    parser.add_argument("--update-readme", action="store_true", help="write the tables into bench/README.md")
    parser.add_argument("--report-only", action="store_true", help="only print the tables of OUT")
    args = parser.parse_args(list(argv) if argv is not None else None)
    settings = Settings(
        api=args.api,
        served={
            **SERVED,
            "op_seconds": args.op_seconds,
            "op_lag": args.op_lag,
            "rate_limit": args.served_rate_limit,
        },
        peer_sample=args.peer_sample,
        tf_sample=args.tf_sample,
        tf_refresh_sample=args.tf_refresh_sample,
        terraform=TerraformPeer(sleep_s=args.tf_sleep, polling=Polling(interval=args.tf_poll, timeout=300.0)),
    )

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if args.api != "2.0":
            _require_api_option()
        work = args.work or Path(tempfile.mkdtemp(prefix="cvmkeys-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            for size in args.size:
                _run_size(size, args, settings, work)
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    tables = render_tables(load_results(args.out))
    print(tables)
    if args.update_readme:
        update_readme(tables)


def _require_api_option() -> None:
    """``--api 3.0`` needs a cvmkeys that speaks 3.0 (another branch, not merged yet)."""
    helped = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--help"], capture_output=True, text=True, env=tool_env()
    )
    if "--api" not in helped.stdout:
        raise SystemExit(
            "this cvmkeys has no --api option yet (the 3.0 client is not merged): run with --api 2.0"
        )


def _run_size(size: str, args: argparse.Namespace, settings: Settings, work: Path) -> None:
    print(f"[{size}] generating and preparing...", file=sys.stderr, flush=True)
    p = prepare(size, args.remove, args.seed, work)
    modes = ["inprocess", "served"] if args.mode == "both" else [args.mode]
    for mode in modes:
        print(f"[{size}] {mode} {settings.api}...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = run_inprocess(p, settings) if mode == "inprocess" else run_served(p, settings)
        command = (
            f"python bench/run.py --size {size} --mode {mode} --api {settings.api} --remove {args.remove:g}"
        )
        command += f" --seed {args.seed}"
        if mode == "served":
            command += f" --peer-sample {args.peer_sample} --tf-sample {args.tf_sample}"
            command += f" --tf-refresh-sample {args.tf_refresh_sample} --tf-sleep {args.tf_sleep:g}"
            command += f" --tf-poll {args.tf_poll:g} --op-seconds {args.op_seconds:g}"
            if args.op_lag:
                command += f" --op-lag {args.op_lag:g}"
            if args.served_rate_limit:
                command += f" --served-rate-limit {args.served_rate_limit:g}"
        result["truth_ready_instances"] = len(p.truth.ready_instances)
        record = {
            "size": size,
            "mode": mode,
            "api": settings.api,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "machine": machine(),
            "params": {
                "remove": args.remove,
                "seed": args.seed,
                **(settings.served if mode == "served" else {}),
            },
            "facts": p.facts,
            "result": result,
            "bench_wall_s": round(time.perf_counter() - started, 1),
        }
        suffix = "" if settings.api == "2.0" else "-api3"
        path = args.out / f"{size}-{mode}{suffix}.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"[{size}] {mode}: {path} ({record['bench_wall_s']} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
