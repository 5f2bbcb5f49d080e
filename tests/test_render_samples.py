"""Hand-built plans and apply results shared by the document and renderer tests, and the
golden-file helper. No tests of its own.

``UPDATE_GOLDEN=1 pytest tests/test_render.py tests/test_document.py`` rewrites the files in
``tests/golden/`` from the current output; review the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.model import (
    ApiVersion,
    ApplyResult,
    Batch,
    BindingResult,
    CallerIdentity,
    Change,
    ChangeStatus,
    Finding,
    Fingerprint,
    Location,
    Outcome,
    Plan,
    Premise,
    SafetyVerdict,
    Scope,
    Severity,
    SourceFile,
    Summary,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
ENDPOINT = "https://cvm.api.qcloud.com/v2/index.php"
LAST_KEY = (
    "removes the last key of ins-web00001 (web-1): login falls back to the password; if none "
    "was ever set, the instance is unreachable until ResetInstancePassword"
)
# A hostile name: terminal escapes, a bell, a newline, a bidi override, Markdown and HTML.
EVIL_NAME = "evil\x1b[31mRED\x1b[0m\x07\nname\u202e|<b>`x`</b> @org/team *bold* [link](http://x)"


def check_golden(name: str, actual: str) -> None:
    """Compare ``actual`` with ``tests/golden/NAME``; with ``UPDATE_GOLDEN=1``, rewrite it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as handle:
            handle.write(actual)
        return
    with path.open(encoding="utf-8", newline="") as handle:
        expected = handle.read()
    assert actual == expected, f"{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites it)"


def _ready(key_id: str, key_name: str, iid: str, name: str, *warnings: str) -> Change:
    return Change(
        key_id, iid, ChangeStatus.READY, "not allowed by the file", warnings, key_name, name, "4 (shut down)"
    )


def full_plan() -> Plan:
    """Every status, warnings, findings with and without a location, an unsafe verdict, two
    waves, wide (Chinese) and hostile names."""
    changes = (
        _ready("skey-deploy01", "ci-deploy", "ins-web00001", "web-1"),
        _ready("skey-deploy01", "ci-deploy", "ins-web00002", "web-2"),
        Change(
            "skey-deploy01",
            "ins-web00003",
            ChangeStatus.BLOCKED,
            "instance is running: stop it first (StopInstances), then plan and apply again",
            (),
            "ci-deploy",
            "web-3",
            "2 (running)",
        ),
        Change(
            "skey-deploy01",
            "ins-db000001",
            ChangeStatus.PROTECTED,
            "instance ins-db000001 is protected",
            (),
            "ci-deploy",
            None,
            None,
        ),
        _ready("skey-legacy01", "legacy", "ins-web00001", "web-1", LAST_KEY),
        _ready("skey-legacy01", "legacy", "ins-cn000001", "数据库-主"),
        Change(
            "skey-legacy01",
            "ins-gone0001",
            ChangeStatus.BLOCKED,
            "instance not found in ap-guangzhou (deleted, returned, or not this account's)",
            (),
            "legacy",
            None,
            None,
        ),
        _ready("skey-evil0001", EVIL_NAME, "ins-evil0001", EVIL_NAME),
    )
    batches = (
        Batch(0, ("skey-deploy01",), ("ins-web00001", "ins-web00002")),
        Batch(0, ("skey-evil0001",), ("ins-evil0001",)),
        Batch(0, ("skey-legacy01",), ("ins-cn000001",)),
        Batch(1, ("skey-legacy01",), ("ins-web00001",)),
    )
    findings = (
        Finding(
            Severity.INFO,
            "binding-missing",
            "skey-deploy01 is allowed on ins-web00009 but not bound there (cvmkeys only removes bindings)",
            key_id="skey-deploy01",
            instance_id="ins-web00009",
        ),
        Finding(
            Severity.ERROR,
            "key-not-found",
            "key skey-absent01 does not exist in ap-guangzhou: the file's intent for it cannot be enforced",
            key_id="skey-absent01",
            location=Location("examples/bindings.yaml", 12, 5),
        ),
        Finding(
            Severity.WARNING,
            "instance-not-found",
            "instance ins-gone0002 is declared but does not exist in ap-guangzhou",
            instance_id="ins-gone0002",
            location=Location("examples/bindings.yaml", 20, 9),
        ),
    )
    return Plan(
        region="ap-guangzhou",
        scope=Scope.KEYS,
        endpoint=ENDPOINT,
        api=ApiVersion.V2,
        caller=CallerIdentity("100000000001", "qcs::cam::uin/100000000001:roleName/cvmkeys-plan"),
        changes=changes,
        batches=batches,
        findings=findings,
        summary=Summary(
            to_unbind=5,
            blocked=2,
            protected=1,
            missing=1,
            owned_bindings=12,
            errors=1,
            warnings=2,
            waves=2,
            calls=4,
        ),
        safety=SafetyVerdict(
            safe=False,
            unbinds=5,
            owned_bindings=12,
            max_unbinds=4,
            max_unbind_percent=30.0,
            percent_checked=True,
            violations=(
                "5 unbinds is over max_unbinds 4",
                "5 unbinds is 41.7% of 12 owned bindings, over max_unbind_percent 30",
            ),
        ),
        sources=(SourceFile("examples/bindings.yaml", "a" * 64),),
        fingerprint=Fingerprint(
            "b" * 64,
            ("skey-deploy01", "skey-evil0001", "skey-legacy01"),
            ("ins-cn000001", "ins-evil0001", "ins-web00001", "ins-web00002"),
        ),
        observed_digest="c" * 64,
        created_at="2026-11-27T21:00:00Z",
        premises=(
            Premise("ins-cn000001", "4 (shut down)", ("skey-keep0001", "skey-legacy01")),
            Premise("ins-evil0001", "4 (shut down)", ("skey-evil0001", "skey-keep0001")),
            Premise("ins-web00001", "4 (shut down)", ("skey-deploy01", "skey-legacy01")),
            Premise("ins-web00002", "4 (shut down)", ("skey-deploy01", "skey-keep0001")),
        ),
    )


def empty_plan() -> Plan:
    """No changes, no findings, safe."""
    return Plan(
        region="ap-shanghai",
        scope=Scope.ACCOUNT,
        endpoint=ENDPOINT,
        api=ApiVersion.V2,
        changes=(),
        batches=(),
        findings=(),
        summary=Summary(0, 0, 0, 0, 3, 0, 0, 0, 0),
        safety=SafetyVerdict(True, 0, 3, None, 30.0, False),
        sources=(SourceFile("fleet/a.yaml", "d" * 64), SourceFile("fleet/b.yaml", "e" * 64)),
        fingerprint=Fingerprint("f" * 64, (), ()),
        observed_digest="0" * 64,
    )


def big_plan(count: int) -> Plan:
    """``count`` ready changes over a few keys (names that are long, to stress the budget)."""
    keys = [f"skey-big{k:05d}" for k in range(max(count // 1000, 1))]
    changes = tuple(
        _ready(keys[n % len(keys)], "a-rather-long-key-name", f"ins-{n:08d}", f"instance-name-{n:08d}")
        for n in range(count)
    )
    ready_pairs: dict[str, list[str]] = {}
    for change in changes:
        ready_pairs.setdefault(change.key_id, []).append(change.instance_id)
    batches = tuple(
        Batch(0, (key_id,), tuple(iids[i : i + 100]))
        for key_id, iids in ready_pairs.items()
        for i in range(0, len(iids), 100)
    )
    base = empty_plan()
    return Plan(
        region="ap-guangzhou",
        scope=Scope.KEYS,
        endpoint=ENDPOINT,
        api=ApiVersion.V2,
        changes=changes,
        batches=batches,
        findings=(),
        summary=Summary(count, 0, 0, 0, count, 0, 0, 1, len(batches)),
        safety=SafetyVerdict(True, count, count, None, 100.0, True),
        sources=base.sources,
        fingerprint=base.fingerprint,
        observed_digest=base.observed_digest,
        premises=tuple(Premise(c.instance_id, "4 (shut down)", (c.key_id,)) for c in changes),
    )


def full_result() -> ApplyResult:
    """Every outcome; a failure with an API code after retries."""
    return ApplyResult(
        region="ap-guangzhou",
        results=(
            BindingResult("skey-deploy01", "ins-web00001", Outcome.DONE, attempts=1),
            BindingResult("skey-deploy01", "ins-web00002", Outcome.DONE, attempts=1),
            BindingResult(
                "skey-deploy01",
                "ins-web00003",
                Outcome.BLOCKED,
                "instance is running: stop it first (StopInstances), then plan and apply again",
            ),
            BindingResult(
                "skey-deploy01", "ins-db000001", Outcome.PROTECTED, "instance ins-db000001 is protected"
            ),
            BindingResult(
                "skey-legacy01",
                "ins-cn000001",
                Outcome.FAILED,
                "resource operation failed",
                api_code=5100,
                attempts=3,
            ),
            BindingResult("skey-legacy01", "ins-web00001", Outcome.NOT_ATTEMPTED),
            BindingResult("skey-evil0001", "ins-evil0001", Outcome.DONE, attempts=1),
        ),
        calls={"UnBindInstanceKey": 4, "DescribeKeyPairs": 1, "DescribeInstances": 2},
        interrupted=True,
    )
