"""The renderers: golden files for text (with and without colour), Markdown and apply results;
untrusted names made harmless; the Markdown size budget."""

from __future__ import annotations

import dataclasses
import re

import pytest
from test_render_samples import big_plan, check_golden, empty_plan, full_plan, full_result

from reconciler.model import ApiVersion, ApplyResult, BindingResult, Outcome, SafetyVerdict
from reconciler.render import (
    render_plan_markdown,
    render_plan_text,
    render_result_json,
    render_result_text,
)
from reconciler.render._sanitize import clean, display_width

ANSI = re.compile(r"\x1b\[[0-9;]*m")

# --------------------------------------------------------------------------- goldens


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("plan_full.txt", lambda: render_plan_text(full_plan(), color=False)),
        ("plan_full.color.txt", lambda: render_plan_text(full_plan(), color=True)),
        ("plan_empty.txt", lambda: render_plan_text(empty_plan(), color=False)),
        ("plan_full.md", lambda: render_plan_markdown(full_plan())),
        ("plan_empty.md", lambda: render_plan_markdown(empty_plan())),
        ("plan_big.md", lambda: render_plan_markdown(big_plan(200), max_chars=6000)),
        ("result.txt", lambda: render_result_text(full_result(), color=False, plan=full_plan())),
        ("result.color.txt", lambda: render_result_text(full_result(), color=True)),
    ],
)
def test_golden(name: str, render: object) -> None:
    assert callable(render)
    check_golden(name, render())


# --------------------------------------------------------------------------- text


def test_text_plan_line_and_colour() -> None:
    plain = render_plan_text(full_plan(), color=False)
    assert plain.endswith("\nPlan: 5 to unbind (1 with a warning), 2 blocked, 1 protected.\n")
    assert "\x1b" not in plain
    coloured = render_plan_text(full_plan(), color=True)
    assert "\x1b[31m-\x1b[0m" in coloured and "\x1b[33m!\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == plain  # colour adds codes and nothing else


def test_text_shows_every_status_reason_warning_and_finding() -> None:
    text = render_plan_text(full_plan(), color=False)
    lines = text.splitlines()
    assert "  key skey-deploy01 (ci-deploy)" in lines
    assert any(re.fullmatch(r"    - ins-web00002 +web-2", line) for line in lines)
    blocked = next(line for line in lines if "ins-web00003" in line)
    assert blocked.startswith("    ! ") and "blocked: instance is running" in blocked
    protected = next(line for line in lines if "ins-db000001" in line and "protected:" in line)
    assert protected.startswith("    = ")
    # the last-key warning sits under the second ins-web00001 line (key legacy), not the first
    legacy_web1 = [i for i, ln in enumerate(lines) if ln.startswith("    - ins-web00001")][1]
    assert lines[legacy_web1 + 1].startswith("        warning: removes the last key of ins-web00001")
    assert "  error: examples/bindings.yaml:12:5: key skey-absent01 does not exist" in text
    assert "  info: skey-deploy01 is allowed on ins-web00009" in text  # no location, no prefix
    # errors first, then warnings, then info
    assert text.index("  error:") < text.index("  warning: examples") < text.index("  info:")
    assert (
        "Calls: 2 waves, 4 calls to UnBindInstanceKey "
        "(wave 1: 3 calls, 4 instances; wave 2: 1 call, 1 instance)."
    ) in text
    assert "UNSAFE: this plan exceeds its safety limits" in text
    assert "  - 5 unbinds is over max_unbinds 4" in text
    assert "This plan has 1 error (see Findings); apply refuses it." in text


def test_text_aligns_wide_names() -> None:
    lines = render_plan_text(full_plan(), color=False).splitlines()
    legacy = [ln for ln in lines if ln.startswith(("    - ins-cn000001", "    ! ins-gone0001"))]
    cn, gone = legacy
    # "数据库-主" is 9 columns wide; the blocked reason after the empty name starts in the
    # same column as it would after the wide name.
    assert display_width(cn) == display_width("    - ins-cn000001  数据库-主")
    assert display_width(gone[: gone.index("blocked:")]) == display_width("    ! ins-gone0001  ") + 9 + 2


def test_text_no_changes() -> None:
    text = render_plan_text(empty_plan(), color=False)
    assert text.endswith("\nNo changes. The live bindings match the file.\n")
    assert "UNSAFE" not in text and "Calls:" not in text
    assert "  source    fleet/a.yaml  sha256:dddddddddddd" in text


def test_text_all_blocked_says_no_calls() -> None:
    plan = full_plan()
    blocked_only = dataclasses.replace(
        plan,
        changes=tuple(c for c in plan.changes if c.status.value != "ready"),
        batches=(),
        findings=(),
        safety=SafetyVerdict(True, 0, 12, None, 30.0, True),
    )
    text = render_plan_text(blocked_only, color=False)
    assert "Calls: none; nothing is ready to unbind." in text
    assert text.endswith("Plan: 0 to unbind, 2 blocked, 1 protected.\n")


@pytest.mark.parametrize("color", [False, True])
def test_text_strips_escapes_and_controls_from_cloud_text(color: bool) -> None:
    text = render_plan_text(full_plan(), color=color)
    payload = ANSI.sub("", text) if color else text
    assert "\x1b" not in payload and "\x07" not in payload and "\u202e" not in payload
    assert "evilRED name|<b>`x`</b> @org/team" in text  # readable, inert
    assert "[31m" not in payload  # the escape went whole, no residue
    # every line is one line: the name's newline did not break the layout
    assert all(not line.startswith("name") for line in text.splitlines())


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain", "plain"),
        ("a\x1b[2Jb", "ab"),
        ("a\x1b]0;title\x07b", "ab"),  # OSC: set window title
        ("a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),  # OSC 8 hyperlink
        ("a\x9b31mb", "ab"),  # 8-bit CSI
        ("a\x1bcb", "ab"),  # full reset
        ("tab\there\r\nnext", "tab here  next"),
        ("a\u202eb\u2066c", "abc"),
        ("a\x00\x7fb", "ab"),
        ("数据库", "数据库"),
        ("bad\ud800", "bad\ufffd"),
        ("trailing escape\x1b", "trailing escape"),
    ],
)
def test_clean(raw: str, shown: str) -> None:
    assert clean(raw) == shown


def test_clean_limit() -> None:
    assert clean("x" * 100, 10) == "x" * 9 + "\u2026"
    assert clean("short", 10) == "short"


def test_result_text() -> None:
    text = render_result_text(full_result(), color=False, plan=full_plan())
    assert text.endswith(
        "\nApply interrupted: 3 done, 1 failed, 1 blocked, 1 protected, 1 not attempted.\n"
    )
    failed = next(line for line in text.splitlines() if "ins-cn000001" in line)
    assert failed.startswith("    failed ")
    assert "数据库-主" in failed  # names come from the plan
    assert failed.endswith("API code 5100: resource operation failed (after 3 attempts)")
    assert "API calls: DescribeInstances 2, DescribeKeyPairs 1, UnBindInstanceKey 4" in text
    assert "\x1b" not in text and "\u202e" not in text


def test_result_line_complete() -> None:
    result = ApplyResult(
        "ap-guangzhou",
        (
            BindingResult("skey-aaaa0001", "ins-aaaa0001", Outcome.DONE, attempts=1),
            BindingResult("skey-aaaa0001", "ins-aaaa0002", Outcome.BLOCKED, "running"),
        ),
        {"UnBindInstanceKey": 1},
    )
    assert render_result_text(result, color=False).endswith(
        "\nApply complete: 1 done, 0 failed, 1 blocked, 0 protected.\n"
    )
    assert '"interrupted": false' in render_result_json(result)


# --------------------------------------------------------------------------- markdown


# The Markdown plan itself: tests/test_markdown_plan.py.


def test_calls_are_named_for_the_plans_api() -> None:
    v2 = full_plan()
    v3 = dataclasses.replace(v2, api=ApiVersion.V3)
    assert "calls to UnBindInstanceKey" in render_plan_text(v2, color=False)
    for text in (render_plan_text(v3, color=False), render_plan_markdown(v3)):
        assert "calls to DisassociateInstancesKeyPairs" in text and "UnBindInstanceKey" not in text


# The Markdown result: tests/test_markdown_result.py.
