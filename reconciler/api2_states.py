"""The instance status table of the CVM API 2.0 (DescribeInstances ``status``; the emulator's
fleet fixture stores these numbers), written once.

Part of the bottom layer (with ``model``, ``errors``, ``ids`` and ``common``): imports nothing
of the tool, so that both the tool (``model`` re-exports it for the 2.0 client) and the emulator
(which must not depend on the tool's model) can use it. Everything above the 2.0 client and the
emulator speaks ``model.InstanceState`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping

STATUS_RUNNING = 2
STATUS_SHUT_DOWN = 4
STATUS_STARTING = 8
STATUS_SHUTTING_DOWN = 9
STATUS_KEY_ISSUING = 20

INSTANCE_STATUS_NAMES: Mapping[int, str] = {
    1: "failure",
    2: "running",
    3: "creating",
    4: "shut down",
    5: "returned",
    6: "returning",
    7: "rebooting",
    8: "starting",
    9: "shutting down",
    10: "resetting password",
    11: "formatting",
    12: "making image",
    13: "setting bandwidth",
    14: "reinstalling OS",
    15: "binding domain",
    16: "unbinding domain",
    17: "binding load balancer",
    18: "unbinding load balancer",
    19: "upgrading",
    20: "key issuing",
}


def status_name(status: int) -> str:
    """Human name of an instance status; unknown numbers are maintenance states per the docs."""
    return INSTANCE_STATUS_NAMES.get(status, f"maintenance ({status})")
