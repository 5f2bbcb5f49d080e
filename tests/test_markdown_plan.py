"""The Markdown plan (a PR comment): summary first, details folded in order of importance, every
changing key named, never over the size limit, and a structure that stays valid when cut.

The 10,000-instance plan is made the real way: a fleet from ``bench.fleetgen``, observed through
the in-process emulator by the real client, planned by the core.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from support import emulator_client, run_cli
from test_render_samples import EVIL_NAME, LAST_KEY, big_plan, empty_plan, full_plan

from bench.fleetgen import generate, write
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_text
from reconciler.emulator.app import EmulatorApp
from reconciler.emulator.state import FleetState
from reconciler.model import Change, ChangeStatus, Finding, Plan, Severity
from reconciler.render.markdown import GITHUB_COMMENT_LIMIT, render_plan_markdown

_CELL_BAR = re.compile(r"(?<!\\)\|")
_DETAILS_TAG = re.compile(r"<(/?)(details|summary)(?: open)?>")


def assert_valid_structure(md: str) -> None:
    """Every <details> and <summary> closed and properly nested; every row of a table has the
    table's number of cells, and is read as a row by a Markdown parser."""
    stack: list[str] = []
    for match in _DETAILS_TAG.finditer(md):
        closing, tag = match.group(1) == "/", match.group(2)
        if closing:
            assert stack and stack[-1] == tag, f"</{tag}> without its opening at {match.start()}"
            stack.pop()
        else:
            if tag == "summary":
                assert stack and stack[-1] == "details", "<summary> outside <details>"
            stack.append(tag)
    assert not stack, f"unclosed: {stack}"
    columns: int | None = None
    for line in md.split("\n"):
        if line.startswith("|"):
            assert line.endswith("|"), line
            cells = len(_CELL_BAR.findall(line)) - 1
            if columns is None:
                columns = cells
            assert cells == columns, f"{cells} cells in a table of {columns}: {line}"
        else:
            columns = None
    # And a CommonMark parser with GitHub's tables (markdown-it, which rich brings) reads every
    # table row as a row: no table swallowed by the HTML block around it.
    html = MarkdownIt("commonmark").enable("table").render(md)
    rows = sum(1 for line in md.split("\n") if line.startswith("|") and not line.startswith("|-"))
    assert html.count("<tr>") == rows


@cache
def fleet_plan() -> Plan:
    """A 10,000-instance, 500-key fleet with 10% of the owned bindings to remove."""
    gen = generate(10_000, 500, seed=1, remove_fraction=0.1)
    client = emulator_client(EmulatorApp(FleetState.from_data(gen.fleet)), gen.region)
    desired = load_text(gen.desired_text, "bindings.yaml").by_region[gen.region]
    return build_plan(
        desired, observe_for_plan(client, desired), endpoint="https://cvm.api.qcloud.com/v2/index.php"
    )


def test_ten_thousand_instances_fit_and_every_changing_key_is_named() -> None:
    plan = fleet_plan()
    assert len(plan.changes) > 1_000  # big enough that rows must be cut
    md = render_plan_markdown(plan)
    assert len(md) < GITHUB_COMMENT_LIMIT
    assert_valid_structure(md)
    for key_id in {c.key_id for c in plan.changes}:
        assert f"`{key_id}`" in md, key_id
    # The cut is said plainly, first, with where to see everything.
    head = md[: md.index("#### Summary")]
    assert "**Shortened to fit a comment**" in head and "`cvmkeys show plan.json`" in head
    match = re.search(r"Left out of the details: ([^.]*)\.", head)
    assert match is not None
    for part in match.group(1).split(", "):
        omitted, _total, noun = re.fullmatch(r"([\d,]+) of ([\d,]+) (.+)", part).groups()  # type: ignore[union-attr]
        assert f"... and {omitted} more {noun} not shown" in md
    # The summary counts every change, whatever the details show.
    region_row = next(line for line in md.splitlines() if line.startswith("| `ap-guangzhou`"))
    ready = sum(1 for c in plan.changes if c.status is ChangeStatus.READY)
    blocked = sum(1 for c in plan.changes if c.status is ChangeStatus.BLOCKED)
    assert f"| {ready:,} | {blocked:,} |" in region_row


def test_summary_comes_first_then_details_in_order_of_importance() -> None:
    md = render_plan_markdown(full_plan())
    order = [
        "> [!CAUTION]",
        "#### Summary",
        "| Region |",
        "| Key | Key name |",
        "Errors: apply refuses this plan (1)",
        "Last-key warnings (1)",
        "Unbinds (5)",
        "Blocked: not attempted (2)",
        "Protected: never touched (1)",
        "Other findings (2)",
        "<sub>endpoint",
    ]
    positions = [md.index(part) for part in order]
    assert positions == sorted(positions)
    assert "not shown" not in md and "Shortened" not in md
    assert_valid_structure(md)
    assert "| `ap-guangzhou` | 3 | 5 | 2 | 1 | 0 | 1 | 1 |" in md
    assert "| `skey-legacy01` | legacy | 2 | 1 | 0 | 0 | 1 |" in md
    # The last-key consequence is said once; the instance and the keys removing it are listed.
    assert md.count("unreachable until ResetInstancePassword") == 1
    assert "| `ins-web00001` | web-1 | `skey-legacy01` |" in md
    assert "- **error** `examples/bindings.yaml:12:5`: key skey-absent01" in md


def test_small_sections_are_open_and_big_ones_folded() -> None:
    md = render_plan_markdown(big_plan(40))
    assert "<details><summary><b>Unbinds (40)</b></summary>" in md
    assert "<details open><summary><b>Unbinds (10)</b></summary>" in render_plan_markdown(big_plan(10))
    errors = tuple(Finding(Severity.ERROR, "key-not-found", f"key {n} missing") for n in range(30))
    md = render_plan_markdown(dataclasses.replace(full_plan(), findings=errors))
    assert "<details open><summary><b>Errors: apply refuses this plan (30)</b>" in md


def test_unchangeable_changes_have_their_section() -> None:
    plan = full_plan()
    windows = dataclasses.replace(
        plan.changes[0], status=ChangeStatus.UNCHANGEABLE, reason="Windows instance"
    )
    md = render_plan_markdown(dataclasses.replace(plan, changes=(*plan.changes, windows)))
    assert "Unchangeable: no API can unbind these (1)" in md
    positions = [md.index(t) for t in ("Protected: never", "Unchangeable: no API", "Other findings")]
    assert positions == sorted(positions)


def test_untrusted_names_cannot_change_the_structure() -> None:
    md = render_plan_markdown(full_plan())
    assert_valid_structure(md)
    assert "<b>evil" not in md and "&lt;b&gt;" in md
    assert "@org" not in md and "@\u200borg" in md  # nobody is mentioned
    assert "\x1b" not in md and "\x07" not in md and "\u202e" not in md
    assert EVIL_NAME not in md


def test_no_changes() -> None:
    md = render_plan_markdown(empty_plan())
    assert "**No changes.** The live bindings match the file." in md
    assert "|" not in md and "CAUTION" not in md and "<details" not in md


def _one_key_each_rendered(max_chars: int) -> tuple[tuple[Change, ...], str]:
    """3,000 unbinds, each of its own key, and their Markdown in at most ``max_chars``
    characters (which is checked, with the structure)."""
    plan = big_plan(3_000)
    spread = tuple(dataclasses.replace(c, key_id=f"skey-k{n:07d}") for n, c in enumerate(plan.changes))
    md = render_plan_markdown(dataclasses.replace(plan, changes=spread), max_chars=max_chars)
    assert len(md) <= max_chars
    assert_valid_structure(md)
    return spread, md


def test_keys_that_do_not_fit_the_table_are_still_named() -> None:
    # 3,000 keys with one unbind each: the per-key table cannot fit in 40,000 characters.
    spread, md = _one_key_each_rendered(max_chars=65_000)
    assert "No room for their rows, but these keys change too:" in md
    for change in spread:
        assert f"`{change.key_id}`" in md
    assert "of the 3,000 keys that change are named without their counts" in md


def test_when_not_even_the_ids_fit_the_count_left_out_is_said() -> None:
    spread, md = _one_key_each_rendered(max_chars=20_000)
    match = re.search(r"\.\.\. and ([\d,]+) more keys not named", md)
    assert match is not None
    named = sum(1 for c in spread if f"`{c.key_id}`" in md)
    assert named + int(match.group(1).replace(",", "")) == 3_000
    assert "of the 3,000 keys that change could not be named" in md


def test_sections_share_the_budget() -> None:
    plan = big_plan(3000)
    blocked = tuple(
        dataclasses.replace(c, status=ChangeStatus.BLOCKED, reason="instance is running " * 3)
        if n % 2
        else dataclasses.replace(c, warnings=(LAST_KEY,))
        for n, c in enumerate(plan.changes)
    )
    md = render_plan_markdown(dataclasses.replace(plan, changes=blocked), max_chars=30_000)
    assert len(md) <= 30_000
    assert_valid_structure(md)
    for noun in ("instances", "unbinds", "blocked changes"):
        assert re.search(rf"\.\.\. and [\d,]+ more {noun} not shown", md), noun
    sections = md.split("<details")[1:]
    assert all(section.count("\n| `") > 10 for section in sections)  # none starved


def test_the_cut_points_at_the_plan_file_given() -> None:
    md = render_plan_markdown(big_plan(2000), max_chars=10_000, plan_file="plans/prod.json")
    assert "`cvmkeys show plans/prod.json`" in md


@settings(max_examples=40, deadline=None)
@given(max_chars=st.integers(min_value=0, max_value=12_000), size=st.sampled_from([0, 8, 150]))
def test_never_over_max_chars(max_chars: int, size: int) -> None:
    plan = full_plan() if size == 8 else empty_plan() if size == 0 else big_plan(size)
    md = render_plan_markdown(plan, max_chars=max_chars)
    assert len(md) <= max_chars
    whole = render_plan_markdown(plan, max_chars=10**9)
    if len(whole) <= max_chars:
        assert md == whole and "not shown" not in md and "truncated" not in md
    elif "truncated" not in md:
        assert_valid_structure(md)


@pytest.mark.parametrize("max_chars", [3_000, 6_000, 65_000])
def test_structure_is_valid_at_every_size(max_chars: int) -> None:
    md = render_plan_markdown(fleet_plan(), max_chars=max_chars)
    assert len(md) <= max_chars
    assert_valid_structure(md)


def test_show_and_plan_name_the_plan_file_in_the_cut_note(tmp_path: Path) -> None:
    gen = generate(3_000, 150, seed=2, remove_fraction=0.6)
    fleet, desired = write(gen, tmp_path / "world")
    plan_file = tmp_path / "plans" / "prod.json"
    plan_file.parent.mkdir()
    code, out, err = run_cli(
        "plan", str(desired), "--emulator", str(fleet), "--out", str(plan_file), "--format", "markdown"
    )
    assert code == 0, err
    assert len(out) <= 65_001 and f"`cvmkeys show {plan_file}`" in out  # cut, and says where
    code, out, _ = run_cli("show", str(plan_file), "--format", "markdown")
    assert code == 0 and f"`cvmkeys show {plan_file}`" in out
    assert_valid_structure(out)
