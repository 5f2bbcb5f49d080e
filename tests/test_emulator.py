"""The emulator over real signed HTTP: request checks, error codes, actions and their rules."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from conftest import Emulator, EmulatorFactory
from support import BASTION, BATCH1, CI, DB1, OLD, OPS, UNMANAGED, WEB1, WEB2, WIN1, live_state

GZ = "ap-guangzhou"


def ids(name: str, values: list[str]) -> dict[str, str]:
    return {f"{name}.{n}": value for n, value in enumerate(values)}


def body(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    document = response.json()
    assert isinstance(document, dict)
    return document


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_describe_key_pairs_shape(emulator: Emulator, method: str) -> None:
    doc = body(emulator.call("DescribeKeyPairs", method=method))
    assert set(doc) == {"code", "message", "data"}
    assert doc["code"] == 0 and doc["message"] == ""
    data = doc["data"]
    assert isinstance(data, dict)
    assert data["totalCount"] == 4
    keys = data["sshSet"]
    assert [k["keyId"] for k in keys] == sorted([CI, OLD, OPS, UNMANAGED])
    ci = next(k for k in keys if k["keyId"] == CI)
    assert set(ci) == {"keyId", "keyName", "pubkey", "status", "bindIps", "createTime", "bindUnInstanceIds"}
    assert ci["keyName"] == "ci-deploy"
    assert ci["status"] == 0
    assert ci["bindUnInstanceIds"] == sorted([WEB1, WEB2, BATCH1])
    # bindIps are the LAN IPs of the bound instances, in the same order.
    assert ci["bindIps"] == ["10.0.2.31", "10.0.1.11", "10.0.1.12"]


def test_describe_instances_shape_has_no_data_wrapper(emulator: Emulator) -> None:
    doc = body(emulator.call("DescribeInstances", ids("instanceIds", [DB1, WIN1])))
    assert set(doc) == {"code", "message", "codeDesc", "totalCount", "instanceSet"}
    assert doc["codeDesc"] == "Success"
    assert doc["totalCount"] == 2
    first, second = doc["instanceSet"]
    assert set(first) == {
        "instanceId",
        "unInstanceId",
        "instanceName",
        "status",
        "os",
        "Region",
        "zoneId",
        "zoneName",
        "lanIp",
        "wanIpSet",
        "createTime",
        "statusTime",
    }
    assert (first["unInstanceId"], first["instanceName"], first["status"]) == (WIN1, "win-1", 4)
    assert first["os"] == "Windows Server 2019"
    assert (second["unInstanceId"], second["status"], second["zoneId"]) == (DB1, 2, 100004)
    assert first["instanceId"] != first["unInstanceId"] and first["instanceId"].startswith("qcvm")


def test_paging_and_filters(emulator: Emulator) -> None:
    page = body(emulator.call("DescribeInstances", {"offset": "2", "limit": "3"}))
    everything = body(emulator.call("DescribeInstances", {"limit": "100"}))
    all_ids = [i["unInstanceId"] for i in everything["instanceSet"]]
    assert all_ids == sorted([WEB1, WEB2, DB1, BATCH1, BASTION, WIN1])
    assert page["totalCount"] == 6
    assert [i["unInstanceId"] for i in page["instanceSet"]] == all_ids[2:5]
    running = body(emulator.call("DescribeInstances", {"status": "2"}))
    assert [i["unInstanceId"] for i in running["instanceSet"]] == [DB1]
    web = body(emulator.call("DescribeInstances", {"searchWord": "WEB"}))
    assert web["totalCount"] == 2
    named = body(emulator.call("DescribeKeyPairs", {"keyName": "laptop"}))
    assert [k["keyId"] for k in named["data"]["sshSet"]] == [OLD]
    one = body(emulator.call("DescribeKeyPairs", {"keyIds.0": OPS, "keyIds.1": "skey-zzzzzzzz"}))
    assert one["data"]["totalCount"] == 1


def test_short_region_code_addresses_the_same_region(emulator: Emulator) -> None:
    long = body(emulator.call("DescribeKeyPairs", region="ap-guangzhou"))
    short = body(emulator.call("DescribeKeyPairs", region="gz"))
    assert long == short
    shanghai = body(emulator.call("DescribeKeyPairs", region="ap-shanghai"))
    assert shanghai["data"]["totalCount"] == 3
    empty = body(emulator.call("DescribeInstances", region="ap-beijing"))
    assert empty["totalCount"] == 0


# --------------------------------------------------------------------------- request checks


def error_of(response: httpx.Response) -> tuple[int, str]:
    doc = body(response)
    expected = {"code", "message"} if doc.get("code") == 0 else {"code", "message", "codeDesc"}
    assert set(doc) == expected
    code, message = doc["code"], doc["message"]
    assert isinstance(code, int) and isinstance(message, str)
    return code, message


def send(emulator: Emulator, params: dict[str, str], method: str = "GET") -> httpx.Response:
    with emulator.client() as client:
        if method == "GET":
            return client.get(emulator.url, params=params)
        return client.post(emulator.url, data=params)


def test_unknown_secret_id_is_4104(emulator: Emulator) -> None:
    emulator.secret_id = "AKIDnobody"
    assert error_of(emulator.call("DescribeKeyPairs"))[0] == 4104


def test_wrong_secret_key_is_4100(emulator: Emulator) -> None:
    emulator.secret_key = "not-the-key"
    code, message = error_of(emulator.call("DescribeKeyPairs"))
    assert code == 4100
    assert "emulator-secret-key" not in message


def test_signature_covers_host_method_and_params(emulator: Emulator) -> None:
    signed = emulator.signed("DescribeKeyPairs", url="https://other.host/v2/index.php")
    assert error_of(send(emulator, signed))[0] == 4100  # signed for another host
    signed = emulator.signed("DescribeKeyPairs", method="POST")
    assert error_of(send(emulator, signed, "GET"))[0] == 4100  # signed for POST, sent by GET
    signed = emulator.signed("DescribeInstances", {"limit": "5"})
    signed["limit"] = "6"
    assert error_of(send(emulator, signed))[0] == 4100  # tampered parameter


def test_replayed_nonce_is_4500_and_changes_nothing(emulator: Emulator) -> None:
    signed = emulator.signed("UnBindInstanceKey", {"keyId": CI, **ids("instanceIds", [BATCH1])})
    assert error_of(send(emulator, signed)) == (0, "")
    emulator.state.set_binding(GZ, CI, BATCH1, True)
    code, message = error_of(send(emulator, signed))
    assert code == 4500 and "Nonce" in message
    assert (CI, BATCH1) in emulator.state.bindings(GZ)
    assert len(emulator.state.mutations) == 1


@pytest.mark.parametrize("skew", [-301, 301])
def test_stale_timestamp_is_4500(emulator: Emulator, skew: int) -> None:
    params = emulator.signed("DescribeKeyPairs", {"Timestamp": str(int(time.time()) + skew)})
    code, message = error_of(send(emulator, params))
    assert code == 4500 and "Timestamp" in message


def test_clock_skew_within_window_is_accepted(emulator: Emulator) -> None:
    params = emulator.signed("DescribeKeyPairs", {"Timestamp": str(int(time.time()) - 200)})
    assert body(send(emulator, params))["code"] == 0


@pytest.mark.parametrize("drop", ["Action", "Region", "Timestamp", "Nonce", "SecretId", "Signature"])
def test_missing_public_parameter_is_4000(emulator: Emulator, drop: str) -> None:
    params = emulator.signed("DescribeKeyPairs")
    del params[drop]
    code, message = error_of(send(emulator, params))
    assert code == 4000 and drop in message


def test_malformed_public_parameters_are_4000(emulator: Emulator) -> None:
    for name, value in [("Nonce", "abc"), ("Timestamp", "-5"), ("SignatureMethod", "md5")]:
        params = emulator.signed("DescribeKeyPairs", {name: value})
        code, message = error_of(send(emulator, params))
        assert code == 4000 and name in message, (name, message)


def test_unknown_action_is_6100_and_names_it(emulator: Emulator) -> None:
    code, message = error_of(emulator.call("DeleteEverything"))
    assert code == 6100 and "DeleteEverything" in message


def test_action_first_letter_either_case(emulator: Emulator) -> None:
    response = emulator.call("unBindInstanceKey", {"keyId": CI, **ids("instanceIds", [BATCH1])})
    assert error_of(response) == (0, "")
    assert emulator.app.request_counts["UnBindInstanceKey"] == 1
    assert (CI, BATCH1) not in emulator.state.bindings(GZ)


def test_unknown_region_is_4000_and_names_it(emulator: Emulator) -> None:
    code, message = error_of(emulator.call("DescribeKeyPairs", region="mars-1"))
    assert code == 4000 and "mars-1" in message


def test_other_paths_are_404_and_other_methods_405(emulator: Emulator) -> None:
    with emulator.client() as client:
        assert client.get("https://cvm.api.qcloud.com/v3/").status_code == 404
        assert client.put(emulator.url).status_code == 405


@pytest.mark.parametrize(
    ("action", "params", "needle"),
    [
        ("UnBindInstanceKey", {"keyId": "skey-BAD", "instanceIds.0": WEB1}, "keyId"),
        ("UnBindInstanceKey", {"keyId": CI, "instanceIds.0": "ins-123"}, "instanceIds.0"),
        ("UnBindInstanceKey", {"keyId": CI}, "instanceIds"),
        ("BindInstanceKey", {"instanceIds.0": WEB1}, "keyId"),
        ("DescribeInstances", {"instanceIds.0": "i-1a2b3c4d"}, "instanceIds.0"),
        ("DescribeKeyPairs", {"keyIds.0": "skey-3GLFOT13"}, "keyIds.0"),
        ("DescribeKeyPairs", {"limit": "101"}, "limit"),
        ("DescribeInstances", {"offset": "-1"}, "offset"),
        ("StopInstances", {"instanceIds.0": DB1, "forceStop": "2"}, "forceStop"),
    ],
)
def test_malformed_action_parameters_are_4000(
    emulator: Emulator, action: str, params: dict[str, str], needle: str
) -> None:
    before = emulator.state.bindings(GZ)
    code, message = error_of(emulator.call(action, params))
    assert code == 4000 and needle in message, message
    assert emulator.state.bindings(GZ) == before


def test_more_than_100_instances_is_4000(emulator: Emulator) -> None:
    many = [f"ins-{n:08d}" for n in range(101)]
    code, message = error_of(
        emulator.call("UnBindInstanceKey", {"keyId": CI, **ids("instanceIds", many)}, method="POST")
    )
    assert code == 4000 and "100" in message


def test_unknown_key_or_instance_is_5000_naming_it(emulator: Emulator) -> None:
    code, message = error_of(
        emulator.call("UnBindInstanceKey", {"keyId": "skey-zzzzzzzz", "instanceIds.0": WEB1})
    )
    assert code == 5000 and "skey-zzzzzzzz" in message
    code, message = error_of(
        emulator.call("UnBindInstanceKey", {"keyId": CI, **ids("instanceIds", [WEB1, "ins-zzzzzzzz"])})
    )
    assert code == 5000 and "ins-zzzzzzzz" in message and WEB1 not in message
    assert emulator.state.mutations == []


# --------------------------------------------------------------------------- rules


def test_unbind_changes_bindings_and_the_file(emulator: Emulator) -> None:
    response = emulator.call("UnBindInstanceKey", {"keyId": OLD, **ids("instanceIds", [WEB1])})
    assert error_of(response) == (0, "")
    assert (OLD, WEB1) not in emulator.state.bindings(GZ)
    assert (OLD, DB1) in emulator.state.bindings(GZ)
    reloaded = type(emulator.state).from_file(emulator.fleet_path, persist=False)
    assert reloaded.bindings(GZ) == emulator.state.bindings(GZ)
    [mutation] = emulator.state.mutations
    assert (mutation.action, mutation.region, mutation.key_id, mutation.instance_ids) == (
        "UnBindInstanceKey",
        GZ,
        OLD,
        (WEB1,),
    )


@pytest.mark.parametrize(
    ("instance", "needles"),
    [(DB1, ["ins-9c8d7e6f", "running", "status 2"]), (WIN1, ["ins-7w7w7w7w", "Windows"])],
)
def test_refused_instance_fails_the_whole_call_and_changes_nothing(
    emulator: Emulator, instance: str, needles: list[str]
) -> None:
    before = emulator.state.bindings(GZ)
    saved = live_state(emulator.fleet_path)
    response = emulator.call("UnBindInstanceKey", {"keyId": OLD, **ids("instanceIds", [WEB1, instance])})
    code, message = error_of(response)
    assert code == 5100
    for needle in needles:
        assert needle in message
    assert WEB1 not in message  # only the offending instance is named
    assert emulator.state.bindings(GZ) == before
    assert live_state(emulator.fleet_path) == saved
    assert emulator.state.mutations == []


def test_unbinding_a_key_that_is_not_bound_is_a_successful_no_op(emulator: Emulator) -> None:
    before = emulator.state.bindings(GZ)
    response = emulator.call("UnBindInstanceKey", {"keyId": OPS, **ids("instanceIds", [WEB1])})
    assert error_of(response) == (0, "")
    assert emulator.state.bindings(GZ) == before
    # What it writes is the instance's latest operation (3.0's LatestOperation*), nothing else.
    assert emulator.state.saves == 1
    store = emulator.state.store
    assert store is not None
    assert store.db.execute("SELECT DISTINCT kind, a FROM changes").fetchall() == [("operation", WEB1)]


def test_bind_replaces_the_previous_keys(emulator: Emulator) -> None:
    response = emulator.call("BindInstanceKey", {"keyId": OPS, **ids("instanceIds", [WEB1])})
    assert error_of(response) == (0, "")
    on_web1 = {k for k, i in emulator.state.bindings(GZ) if i == WEB1}
    assert on_web1 == {OPS}


def test_stop_and_start_only_from_the_right_status(emulator: Emulator) -> None:
    code, message = error_of(emulator.call("StartInstances", ids("instanceIds", [DB1])))
    assert code == 5100 and DB1 in message and "running" in message
    assert error_of(emulator.call("StopInstances", {**ids("instanceIds", [DB1]), "forceStop": "1"})) == (
        0,
        "",
    )
    assert emulator.state.instance_status(GZ, DB1) == 4
    code, _ = error_of(emulator.call("StopInstances", ids("instanceIds", [DB1])))
    assert code == 5100
    assert error_of(emulator.call("StartInstances", ids("instanceIds", [DB1]))) == (0, "")
    assert emulator.state.instance_status(GZ, DB1) == 2


# --------------------------------------------------------------------------- asynchronous operations


def test_operations_take_op_seconds(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(op_seconds=5)
    assert error_of(em.call("UnBindInstanceKey", {"keyId": OLD, **ids("instanceIds", [WEB1])})) == (0, "")
    # Settled at once in the file's view; observed only when the operation ends.
    assert (OLD, WEB1) not in em.state.bindings(GZ)
    described = body(em.call("DescribeInstances", ids("instanceIds", [WEB1])))
    assert described["instanceSet"][0]["status"] == 20
    keys = body(em.call("DescribeKeyPairs", {"keyIds.0": OLD}))
    assert WEB1 in keys["data"]["sshSet"][0]["bindUnInstanceIds"]
    # A second call on the busy instance fails like any non-4 status.
    code, message = error_of(em.call("UnBindInstanceKey", {"keyId": CI, **ids("instanceIds", [WEB1])}))
    assert code == 5100 and "status 20" in message
    em.clock.advance(5)
    described = body(em.call("DescribeInstances", ids("instanceIds", [WEB1])))
    assert described["instanceSet"][0]["status"] == 4
    keys = body(em.call("DescribeKeyPairs", {"keyIds.0": OLD}))
    assert WEB1 not in keys["data"]["sshSet"][0]["bindUnInstanceIds"]
    assert error_of(em.call("UnBindInstanceKey", {"keyId": CI, **ids("instanceIds", [WEB1])})) == (0, "")


def test_stop_and_start_pass_through_9_and_8(make_emulator: EmulatorFactory) -> None:
    em = make_emulator(op_seconds=3)
    assert error_of(em.call("StopInstances", ids("instanceIds", [DB1]))) == (0, "")
    assert em.state.instance_status(GZ, DB1) == 9
    em.clock.advance(3)
    assert em.state.instance_status(GZ, DB1) == 4
    assert error_of(em.call("StartInstances", ids("instanceIds", [DB1]))) == (0, "")
    assert em.state.instance_status(GZ, DB1) == 8
    em.clock.advance(3)
    assert em.state.instance_status(GZ, DB1) == 2


# --------------------------------------------------------------------------- over a socket


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_served_over_a_real_socket(emulator: Emulator, method: str) -> None:
    with emulator.serve() as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v2/index.php")
        doc = body(emulator.call("DescribeKeyPairs", method=method, url=server.url))
        assert doc["data"]["totalCount"] == 4
        response = emulator.call(
            "UnBindInstanceKey", {"keyId": CI, **ids("instanceIds", [BATCH1])}, method=method, url=server.url
        )
        assert error_of(response) == (0, "")
        # Signed for the in-process host, sent to the socket: the Host header differs.
        params = emulator.signed("DescribeKeyPairs")
        assert error_of(httpx.get(server.url, params=params))[0] == 4100
    assert (CI, BATCH1) not in emulator.state.bindings(GZ)
