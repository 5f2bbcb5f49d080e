"""Rate limit, latency and injected faults, in-process and over a socket; `emulator serve`."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLE_FLEET, Emulator, EmulatorFactory
from support import BATCH1, CI, DB1, OLD, OPS, WEB1, serve_fleet
from typer.testing import CliRunner

from reconciler.cloud import tc3
from reconciler.emulator.cli import emulator_app
from reconciler.emulator.faults import FaultProfile
from reconciler.emulator.state import FleetState

GZ = "ap-guangzhou"


def code_of(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    code = response.json()["code"]
    assert isinstance(code, int)
    return code


def unbind(em: Emulator, key: str, instances: list[str], **kwargs: str) -> httpx.Response:
    params = {"keyId": key, **{f"instanceIds.{n}": i for n, i in enumerate(instances)}}
    return em.call("UnBindInstanceKey", params, **kwargs)


# --------------------------------------------------------------------------- rate limit, latency


def test_rate_limit_is_a_token_bucket_per_action(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(rate_limit=2)
    em.clock.offset = 0.0
    frozen = time.time()
    em.app.clock = lambda: frozen + em.clock.offset  # frozen time, stepped by hand
    assert [code_of(em.call("DescribeKeyPairs")) for _ in range(3)] == [0, 0, 4400]
    assert code_of(em.call("DescribeInstances")) == 0  # another action has its own bucket
    em.clock.advance(0.5)  # refills one token
    assert [code_of(em.call("DescribeKeyPairs")) for _ in range(2)] == [0, 4400]
    assert em.app.request_counts["DescribeKeyPairs"] == 5


def test_latency_is_added_and_requests_overlap(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(latency_ms=300)
    with em.serve() as server:
        codes: list[int] = []

        def one() -> None:
            codes.append(code_of(em.call("DescribeKeyPairs", url=server.url)))

        threads = [threading.Thread(target=one) for _ in range(4)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    assert codes == [0, 0, 0, 0]
    assert 0.3 <= elapsed < 1.1  # four in sequence would take 1.2 s


# --------------------------------------------------------------------------- faults, one kind each


@pytest.mark.parametrize(("kind", "codes"), [("throttle", {4400}), ("error", {6000, 6200})])
def test_error_answers_change_nothing(make_emulator: EmulatorFactory, kind: str, codes: set[int]) -> None:
    em = make_emulator(faults=FaultProfile.only(kind))
    before = em.state.bindings(GZ)
    assert code_of(unbind(em, CI, [BATCH1])) in codes
    assert em.state.bindings(GZ) == before
    [fault] = em.app.injected_faults
    assert (fault.kind, fault.action) == (kind, "UnBindInstanceKey")


def test_http_errors_change_nothing(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile.only("http", seed=3))
    statuses = {unbind(em, CI, [BATCH1]).status_code for _ in range(8)}
    assert statuses == {502, 503}
    assert (CI, BATCH1) in em.state.bindings(GZ)
    assert len(em.app.injected_faults) == 8


def test_dropped_connection_in_process_and_over_a_socket(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile.only("drop"))
    with pytest.raises(httpx.RemoteProtocolError):
        unbind(em, CI, [BATCH1])
    with em.serve() as server, pytest.raises(httpx.RemoteProtocolError):
        unbind(em, CI, [BATCH1], url=server.url)
    assert (CI, BATCH1) in em.state.bindings(GZ)
    assert [f.kind for f in em.app.injected_faults] == ["drop", "drop"]


def test_lost_answer_after_the_call_was_carried_out(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile.only("lost", actions=["UnBindInstanceKey"]))
    assert code_of(em.call("DescribeKeyPairs")) == 0  # other actions are left alone
    with pytest.raises(httpx.RemoteProtocolError):
        unbind(em, CI, [BATCH1])
    assert (CI, BATCH1) not in em.state.bindings(GZ)  # committed nonetheless
    with em.serve() as server, pytest.raises(httpx.RemoteProtocolError):
        unbind(em, OLD, [WEB1], url=server.url)
    assert (OLD, WEB1) not in em.state.bindings(GZ)
    assert [m.key_id for m in em.state.mutations] == [CI, OLD]


def test_slow_answer_times_out_but_is_carried_out(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile.only("slow", slow_seconds=30))
    with em.client(timeout=1.0) as client:
        signed = em.signed("UnBindInstanceKey", {"keyId": CI, "instanceIds.0": BATCH1})
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            client.get(em.url, params=signed)
        assert time.perf_counter() - started < 1.0  # in-process: no one waits for it
    assert (CI, BATCH1) not in em.state.bindings(GZ)


def test_slow_answer_over_a_socket(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile.only("slow", slow_seconds=0.6))
    with em.serve() as server:
        signed = em.signed("DescribeKeyPairs", url=server.url)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(server.url, params=signed, timeout=0.2)
        started = time.perf_counter()
        assert code_of(em.call("DescribeKeyPairs", url=server.url)) == 0
        assert time.perf_counter() - started >= 0.6


def test_partial_batch_changes_some_and_names_the_rest(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile.only("partial", seed=7))
    em.state.set_instance_status(GZ, DB1, 4)  # both may be unbound
    response = unbind(em, OLD, [WEB1, DB1])
    body = response.json()
    assert body["code"] == 5400
    match = re.search(r"done: (.*); failed: (.*) \(injected\)$", body["message"])
    assert match is not None
    done, failed = match.group(1).split(", "), match.group(2).split(", ")
    assert sorted(done + failed) == sorted([WEB1, DB1])
    assert done and failed
    for instance in done:
        assert (OLD, instance) not in em.state.bindings(GZ)
    for instance in failed:
        assert (OLD, instance) in em.state.bindings(GZ)
    # A single instance cannot be partial: the call goes through untouched.
    assert code_of(unbind(em, CI, [BATCH1])) == 0
    # A call the API refuses anyway gets its normal answer, and changes nothing.
    assert code_of(unbind(em, OPS, [DB1, "ins-7w7w7w7w"])) == 5100  # win-1 is Windows
    assert (OPS, DB1) in em.state.bindings(GZ)
    assert [f.kind for f in em.app.injected_faults] == ["partial"]


def test_faults_replay_with_a_seed_and_combine(make_emulator: EmulatorFactory) -> None:
    profile = FaultProfile(seed=42, throttle_rate=0.2, error_rate=0.2, http_error_rate=0.2)

    def run() -> list[str]:
        em = make_emulator(faults=profile)
        for _ in range(30):
            em.call("DescribeInstances")
        return [f.kind + f.detail for f in em.app.injected_faults]

    first, second = run(), run()
    assert first == second
    assert {kind[:4] for kind in first} == {"thro", "erro", "http"}
    assert len(first) < 30  # some requests got through


def test_3_0_only_faults_never_hit_2_0_requests(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(faults=FaultProfile(lag_rate=1.0, stuck_stop_rate=1.0))
    assert code_of(unbind(em, CI, [WEB1])) == 0
    assert code_of(em.call("StopInstances", {"instanceIds.0": DB1})) == 0
    assert em.state.settled_status(GZ, DB1) == 4
    assert em.app.injected_faults == []
    with pytest.raises(ValueError, match="stuck_stop"):
        FaultProfile.only("sideways")


def test_fault_profile_checks_its_rates() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultProfile(error_rate=1.5)
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultProfile.only("meteor")


# --------------------------------------------------------------------------- `cvmkeys emulator serve`


def test_serve_command_reports_bad_fleet_files_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("credentials:\n  - {secret_id: A, secret_key: k}\nregions:\n  mars: {}\n")
    result = CliRunner().invoke(emulator_app, ["serve", "--fleet", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:4:3: unknown region 'mars'" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(emulator_app, ["serve", "--fleet", str(bad), "--fault-error", "2"])
    assert result.exit_code == 1 and "between 0 and 1" in result.output


def test_serve_command_serves_prints_credentials_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_bytes(EXAMPLE_FLEET.read_bytes())
    process, em = serve_fleet(fleet, GZ)
    try:
        response = em.call("UnBindInstanceKey", {"keyId": CI, "instanceIds.0": BATCH1}, url=em.url)
        assert code_of(response) == 0
        # The same port serves API 3.0 at "/" (TC3-signed), on the same fleet.
        base = em.url[: -len("/v2/index.php")]
        body = json.dumps({"InstanceIds": [BATCH1]}).encode()
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Host": base.split("//", 1)[1],
            "X-TC-Action": "DescribeInstances",
            "X-TC-Timestamp": str(stamp),
            "X-TC-Version": "2017-03-12",
            "X-TC-Region": GZ,
        }
        headers["Authorization"] = tc3.authorization(
            em.secret_id,
            em.secret_key,
            service="cvm",
            timestamp=stamp,
            method="POST",
            headers=headers,
            payload=body,
        )
        described = httpx.post(base + "/", content=body, headers=headers).json()["Response"]
        assert CI not in described["InstanceSet"][0]["LoginSettings"]["KeyIds"]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err
    assert fleet.read_bytes() == EXAMPLE_FLEET.read_bytes()  # a fixture: never written
    assert ("skey-3glfot13", BATCH1) not in FleetState.from_file(fleet).bindings(GZ)  # the live state
