"""cvmkeys import: the file it writes validates, plan on it shows no changes (example fleet in
every scope, a generated M fleet, hostile names), the output is stable, and it reads the live
state with the fewest calls. Real CLI, real client, emulator over in-process HTTP."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import CLEAN_ENV, run_cli

from bench.fleetgen import SECRET_ID, SECRET_KEY, generate
from reconciler import importer
from reconciler.cloud.client import CvmClient, instance_state
from reconciler.cloud.credentials import Credentials
from reconciler.cloud.observe import observe_for_plan
from reconciler.core.plan import build_plan
from reconciler.desired.loader import load_paths
from reconciler.emulator.app import EmulatorApp, transport
from reconciler.emulator.state import FleetState
from reconciler.errors import ConfigError
from reconciler.model import Instance, KeyPair, Observed, Plan, Scope

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
def cli(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    return run_cli(*args, env={**CLEAN_ENV, **(env or {})})


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    shutil.copy(EXAMPLES / "fleet.yaml", path)
    return path


def _client(
    state: FleetState, region: str, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY
) -> CvmClient:
    return CvmClient(
        Credentials(secret_id, secret_key),
        region,
        endpoint="http://localhost/v2/index.php",
        transport=transport(EmulatorApp(state)),
        rate_limit=None,
    )


def _plan_of(text: str, state: FleetState, tmp_path: Path, secret: tuple[str, str]) -> Plan:
    path = tmp_path / "imported.yaml"
    path.write_text(text, encoding="utf-8")
    (desired,) = load_paths([path]).by_region.values()
    with _client(state, desired.region, *secret) as client:
        observed = observe_for_plan(client, desired)
    return build_plan(desired, observed, endpoint="emulator:test")


# --------------------------------------------------------------------------- the example fleet


@pytest.mark.parametrize(
    ("region", "scope", "selection"),
    [
        ("ap-guangzhou", "keys", ["--all"]),
        ("ap-guangzhou", "keys", ["--keys", "skey-3glfot13,skey-8x9y0z12"]),
        ("ap-guangzhou", "instances", ["--keys", "skey-3glfot13"]),
        ("ap-guangzhou", "instances", ["--all"]),
        ("ap-guangzhou", "account", []),
        ("sh", "instances", ["--keys", "skey-5h0b0b0b", "--keys", "skey-5k6l7m8n"]),
        ("sh", "account", ["--all"]),
    ],
)
def test_import_then_plan_shows_no_changes(
    fleet: Path, tmp_path: Path, region: str, scope: str, selection: list[str], api: str
) -> None:
    out = tmp_path / "imported.yaml"
    code, stdout, stderr = cli(
        "import",
        "--region",
        region,
        "--scope",
        scope,
        *selection,
        "--emulator",
        str(fleet),
        "--api",
        api,
        "--out",
        str(out),
    )
    assert code == 0, stderr
    assert stdout == ""  # with --out the file is written, not printed
    assert f"Wrote {out}" in stderr
    code, stdout, stderr = cli("validate", str(out))
    assert code == 0 and "valid" in stdout, stdout + stderr
    code, stdout, stderr = cli(
        "plan", str(out), "--emulator", str(fleet), "--api", api, "--detailed-exitcode"
    )
    assert code == 0, stdout + stderr
    assert "No changes. The live bindings match the file." in stdout
    assert "warning" not in stdout.lower()


def test_import_output_shape_and_comments(fleet: Path) -> None:
    code, stdout, _ = cli("import", "--region", "gz", "--keys", "skey-3glfot13", "--emulator", str(fleet))
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=https://cvmkeys.dev/schemas/bindings.schema.json"
    body = [line for line in lines if line and not line.startswith("#")]
    assert body == [
        "version: 1",
        "region: ap-guangzhou",
        "scope: keys",
        "keys:",
        "  skey-3glfot13:",
        '    name: "ci-deploy"',
        "    instances:",
        "      - ins-0c0d0e0f  # batch-1",
        "      - ins-1a2b3c4d  # web-1",
        "      - ins-5e6f7a8b  # web-2",
    ]


def test_import_is_byte_identical_across_runs_and_between_stdout_and_out(fleet: Path, tmp_path: Path) -> None:
    args = ["import", "--region", "ap-guangzhou", "--all", "--emulator", str(fleet)]
    first = cli(*args)[1]
    second = cli(*args)[1]
    assert first == second and first.endswith("\n")
    cli(*args, "--out", str(tmp_path / "x.yaml"))
    assert (tmp_path / "x.yaml").read_text(encoding="utf-8") == first
    left = sorted(p.name for p in tmp_path.iterdir() if ".state.sqlite" not in p.name)  # not the emulator's
    assert left == ["fleet.yaml", "x.yaml"]  # no temporary left
    # The two APIs see the same fleet: the same file, byte for byte.
    assert cli(*args, "--api", "2.0")[1] == cli(*args, "--api", "3.0")[1] == first


def test_region_defaults_to_the_environment(fleet: Path) -> None:
    code, stdout, _ = cli("import", "--all", "--emulator", str(fleet), env={"TENCENTCLOUD_REGION": "sh"})
    assert code == 0
    assert "region: ap-shanghai" in stdout and "skey-5h0a0a0a" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "gz"], "say which keys to import"),
        (["--region", "gz", "--all", "--keys", "skey-3glfot13"], "say which keys to import"),
        (["--region", "gz", "--scope", "account", "--keys", "skey-3glfot13"], "scope account owns every"),
        (
            ["--region", "gz", "--keys", "skey-3glfot13,skey-nothere1"],
            "1 key not found in ap-guangzhou: skey-nothere1",
        ),
        (["--region", "gz", "--keys", "ssh-rsa"], "not a key ID: 'ssh-rsa'"),
        (["--region", "mars-1", "--all"], "unknown region 'mars-1'"),
        (["--all"], "no region given"),
    ],
)
def test_import_errors_are_one_line_with_a_hint(
    fleet: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    code, stdout, stderr = cli("import", *args, "--emulator", str(fleet), env={"HOME": str(tmp_path)})
    assert code == 1
    assert stdout == ""
    assert f"Error: {message}" in stderr
    assert "hint:" in stderr


def test_out_into_a_missing_folder_is_a_clean_error(fleet: Path, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir.yaml"
    code, _, stderr = cli("import", "--region", "gz", "--all", "--emulator", str(fleet), "--out", str(target))
    assert code == 1
    assert f"Error: cannot write {target}" in stderr


# --------------------------------------------------------------------------- fewest calls, M fleet


def test_generated_m_fleet_import_then_plan_shows_no_changes(tmp_path: Path) -> None:
    generated = generate(10_000, 500)
    state = FleetState.from_data(generated.fleet)
    live_instances = {iid for _, iid in generated.live}
    for scope in (Scope.KEYS, Scope.ACCOUNT):
        selection = importer.ImportSelection(generated.region, scope)
        with _client(state, generated.region) as client:
            observed = importer.observe_for_import(client, selection)
            calls = client.calls
        # DescribeKeyPairs: ceil(500 / 100) pages; DescribeInstances: only the bound instances.
        assert calls == {"DescribeKeyPairs": 5, "DescribeInstances": math.ceil(len(live_instances) / 100)}
        text = importer.render_desired(selection, observed)
        plan = _plan_of(text, state, tmp_path, (SECRET_ID, SECRET_KEY))
        assert plan.changes == () and plan.findings == ()
        assert plan.summary.owned_bindings == len(generated.live)


def test_keys_selection_reads_only_those_keys_and_their_instances(tmp_path: Path) -> None:
    generated = generate(2_000, 300, seed=7)
    state = FleetState.from_data(generated.fleet)
    chosen = tuple(sorted({key_id for key_id, _ in generated.live})[:150])
    bound = {iid for key_id, iid in generated.live if key_id in chosen}
    selection = importer.ImportSelection(generated.region, Scope.KEYS, chosen)
    with _client(state, generated.region) as client:
        observed = importer.observe_for_import(client, selection)
        calls = client.calls
    assert calls == {"DescribeKeyPairs": 2, "DescribeInstances": math.ceil(len(bound) / 100)}
    text = importer.render_desired(selection, observed)
    (desired,) = load_paths([_write(tmp_path, text)]).by_region.values()
    assert set(desired.keys) == set(chosen)
    assert {(k, i) for k, key in desired.keys.items() for i in key.instances} == {
        b for b in generated.live if b[0] in chosen
    }
    assert _plan_of(text, state, tmp_path, (SECRET_ID, SECRET_KEY)).changes == ()


def test_instances_scope_declares_every_key_on_the_owned_instances(tmp_path: Path) -> None:
    generated = generate(1_000, 50, seed=3)
    state = FleetState.from_data(generated.fleet)
    chosen = (sorted({key_id for key_id, _ in generated.live})[0],)
    owned = {iid for key_id, iid in generated.live if key_id in chosen}
    selection = importer.ImportSelection(generated.region, Scope.INSTANCES, chosen)
    with _client(state, generated.region) as client:
        observed = importer.observe_for_import(client, selection)
    text = importer.render_desired(selection, observed)
    (desired,) = load_paths([_write(tmp_path, text)]).by_region.values()
    assert desired.declared_instances == owned
    expected = {b for b in generated.live if b[1] in owned}
    assert {(k, i) for k, key in desired.keys.items() for i in key.instances} == expected
    assert len({k for k, _ in expected}) > 1  # other keys on those instances are declared too
    plan = _plan_of(text, state, tmp_path, (SECRET_ID, SECRET_KEY))
    assert plan.changes == () and plan.summary.owned_bindings == len(expected)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "check.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- hostile names

HOSTILE_NAMES = [
    "web-1 # not a comment",
    "two\nlines",
    "cr\rlf\r\n",
    'quote " and \\ backslash',
    "'single'",
    "  leading and trailing  ",
    "yes",
    "null",
    "~",
    "2024-01-01",
    "0x1F",
    "- item",
    "key: value",
    "{flow: map}",
    "[flow, seq]",
    "&anchor *alias !tag %directive @at `tick` |pipe >fold",
    "\x1b[31mred\x1b[0m\x07",
    "tab\there",
    "nel\x85ls\u2028ps\u2029",
    "nbsp\xa0zwsp\u200bbom\ufeff",
    "rtl \u202eevil\u202c",
    "生产-数据库-01",
    "emoji 🔑🚀",
    "nul\x00del\x7fc1\x9b",
    "private \ue000 use",
    "#",
    "...",
    "---",
]


def _hostile_fleet() -> dict[str, Any]:
    instances = [
        {"id": f"ins-h{n:07d}", "name": name, "os": "centos7.6x86_64", "status": 4}
        for n, name in enumerate(HOSTILE_NAMES)
    ]
    keys = [
        {
            "id": f"skey-h{n:07d}",
            "name": name,
            "bound": [f"ins-h{n:07d}", f"ins-h{(n + 1) % len(HOSTILE_NAMES):07d}"],
        }
        for n, name in enumerate(HOSTILE_NAMES)
    ]
    return {
        "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "regions": {"ap-guangzhou": {"instances": instances, "keys": keys}},
    }


def test_hostile_names_round_trip_through_the_loader(tmp_path: Path) -> None:
    state = FleetState.from_data(_hostile_fleet())
    selection = importer.ImportSelection("ap-guangzhou", Scope.ACCOUNT)
    with _client(state, "ap-guangzhou") as client:
        observed = importer.observe_for_import(client, selection)
    assert {pair.name for pair in observed.keys.values()} == set(HOSTILE_NAMES)  # the wire kept them
    text = importer.render_desired(selection, observed)

    (desired,) = load_paths([_write(tmp_path, text)]).by_region.values()
    assert {key.name for key in desired.keys.values()} == set(HOSTILE_NAMES)  # exactly, as data
    assert {(k, i) for k, key in desired.keys.items() for i in key.instances} == {
        (k, i) for k, pair in observed.keys.items() for i in pair.bound_instance_ids
    }
    plan = _plan_of(text, state, tmp_path, (SECRET_ID, SECRET_KEY))
    assert plan.changes == () and plan.findings == ()  # no key-name-mismatch either

    # One line per item: no name can add a line, and comments hold printable text only.
    item_lines = [line for line in text.splitlines() if line.startswith("      - ")]
    assert len(item_lines) == 2 * len(HOSTILE_NAMES)
    for line in text.splitlines():
        assert line.isprintable(), repr(line)
        assert "\u202e" not in line and "\x1b" not in line
    assert "      - ins-h0000000  # web-1 # not a comment" in item_lines
    assert "      - ins-h0000001  # two lines" in item_lines


def test_yaml_double_quoted_escapes_what_is_not_plainly_printable() -> None:
    assert importer.yaml_double_quoted("ci-deploy") == '"ci-deploy"'
    assert importer.yaml_double_quoted('a"b\\c') == '"a\\"b\\\\c"'
    assert importer.yaml_double_quoted("a\nb\x00") == '"a\\x0ab\\x00"'
    assert importer.yaml_double_quoted("\u202e") == '"\\u202e"'
    assert importer.yaml_double_quoted("\U0001f511") == '"🔑"'  # printable: kept
    assert importer.yaml_double_quoted("\U000e0001") == '"\\U000e0001"'  # a tag character: escaped
    assert importer.yaml_double_quoted("生产") == '"生产"'


def test_a_name_with_a_lone_surrogate_is_left_out_not_mangled(tmp_path: Path) -> None:
    observed_keys = {
        "skey-aaaaaaaa": KeyPair("skey-aaaaaaaa", "bad\ud800name", ("ins-aaaaaaaa",)),
    }

    observed = Observed(
        "ap-guangzhou",
        observed_keys,
        {"ins-aaaaaaaa": Instance("ins-aaaaaaaa", "x\udfffy", *instance_state(4), "centos")},
    )
    text = importer.render_desired(importer.ImportSelection("ap-guangzhou", Scope.ACCOUNT), observed)
    assert "name:" not in text and "# name not written" in text
    (desired,) = load_paths([_write(tmp_path, text)]).by_region.values()
    assert desired.keys["skey-aaaaaaaa"].name is None
    assert desired.keys["skey-aaaaaaaa"].instances == {"ins-aaaaaaaa"}


def test_selection_rules() -> None:
    assert importer.parse_key_ids(["skey-b0000000, skey-a0000000", "skey-b0000000", ""]) == (
        "skey-a0000000",
        "skey-b0000000",
    )
    with pytest.raises(ConfigError, match="scope account"):
        importer.ImportSelection("ap-guangzhou", Scope.ACCOUNT, ("skey-a0000000",))
    with pytest.raises(ConfigError, match="unknown region"):
        importer.canonical_region("xx")
    assert importer.canonical_region("gz") == "ap-guangzhou"


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40))
def test_any_key_name_round_trips_exactly(name: str) -> None:
    observed = Observed(
        "ap-guangzhou",
        {"skey-aaaaaaaa": KeyPair("skey-aaaaaaaa", name, ("ins-aaaaaaaa",))},
        {"ins-aaaaaaaa": Instance("ins-aaaaaaaa", name, *instance_state(4), "centos")},
    )
    text = importer.render_desired(importer.ImportSelection("ap-guangzhou", Scope.KEYS), observed)
    with tempfile.TemporaryDirectory() as folder:
        (desired,) = load_paths([_write(Path(folder), text)]).by_region.values()
    assert desired.keys["skey-aaaaaaaa"].name == name
    assert desired.keys["skey-aaaaaaaa"].instances == {"ins-aaaaaaaa"}
