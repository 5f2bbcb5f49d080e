"""The Markdown apply result (a PR comment after the merge): the outcome line, a summary per
key, the bindings folded by outcome with failures first, within the size limit and with a
valid structure when cut."""

from __future__ import annotations

import dataclasses
import re

from test_markdown_plan import assert_valid_structure
from test_render_samples import EVIL_NAME, check_golden, full_plan, full_result

from reconciler.model import ApplyResult, BindingResult, Outcome
from reconciler.render.markdown import render_result_markdown


def test_golden() -> None:
    check_golden("result.md", render_result_markdown(full_result(), full_plan()))


def test_outcome_first_then_summary_then_failures_first() -> None:
    result = full_result()
    text = render_result_markdown(result, full_plan())
    assert text.startswith("### cvmkeys apply: `ap-guangzhou`\n\n**Apply interrupted: 3 done, 1 failed")
    order = ["#### Summary", "Failed: still bound (1)", "Not attempted: apply stopped first (1)", "Done (3)"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert "| `skey-legacy01` | legacy | 1 | 1 | 0 | 0 | 0 |" in text  # the key with failures first
    rows = [line for line in text.splitlines() if line.startswith("| `ins-") or line.startswith("| `skey-")]
    detail_rows = [row for row in rows if "`ins-" in row]
    assert len(detail_rows) == len(result.results)
    assert "API code 5100: resource operation failed (after 3 attempts)" in text
    assert_valid_structure(text)
    assert EVIL_NAME not in text and "@\u200borg" in text


def test_a_big_result_fits_and_names_every_key() -> None:
    results = tuple(
        BindingResult(
            f"skey-k{n % 300:07d}",
            f"ins-{n:08d}",
            Outcome.FAILED if n % 50 == 0 else Outcome.DONE,
            "resource operation failed" if n % 50 == 0 else "",
            5100 if n % 50 == 0 else None,
            3 if n % 50 == 0 else 1,
        )
        for n in range(10_000)
    )
    result = ApplyResult("ap-guangzhou", results, {"UnBindInstanceKey": 10_300})
    text = render_result_markdown(result)
    assert len(text) <= 65_000
    assert_valid_structure(text)
    for n in range(300):
        assert f"`skey-k{n:07d}`" in text
    assert "**Shortened to fit a comment**" in text
    match = re.search(r"\.\.\. and ([\d,]+) more done bindings not shown", text)
    assert match is not None
    assert "Failed: still bound (200)" in text
    failed_shown = text.count("| failed |")
    assert failed_shown == 200  # the failures are small enough to be shown whole


def test_small_budgets_stay_within_the_limit() -> None:
    result = full_result()
    for max_chars in (200, 600, 1_500, 3_000):
        text = render_result_markdown(result, max_chars=max_chars)
        assert len(text) <= max_chars
        if "truncated" not in text:
            assert_valid_structure(text)
    text = render_result_markdown(dataclasses.replace(result, results=()), max_chars=65_000)
    assert "#### Summary" not in text and "API calls" in text
