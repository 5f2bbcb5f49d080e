"""Waiting for an asynchronous call to finish: what a fresh observation of an instance says about
one call, and when to look again. Pure: no clock, no I/O; the executor passes the times in.

Both APIs behind one function (:func:`decide`), keyed by :class:`~reconciler.model.ApiVersion`,
so the executor makes one call whichever API the plan was made for:

* **3.0** (issue 13, item 3). ``DisassociateInstancesKeyPairs``, ``StopInstances`` and
  ``StartInstances`` answer at once with a ``RequestId``; the operation runs on, and
  ``DescribeInstances`` reports it on each instance: ``LatestOperationRequestId`` names it and
  ``LatestOperationState`` goes ``OPERATING`` -> ``SUCCESS`` | ``FAILED``
  (``LatestOperationErrorMsg`` says why). The instance may go on showing its *previous* operation
  for a moment after the call was accepted (Terraform sleeps 10 s before its first poll for that
  reason: "We cannot catch LatestOperationState change immediately after modification
  returns"), so an older RequestId means "not yet" within a lag allowance, and "cannot tell"
  after it: then only the binding itself (DescribeKeyPairs) can say whether the call took effect.
* **2.0**. ``UnBindInstanceKey`` puts the instance in status 20 (key issuing, the API-neutral
  ``InstanceState.BUSY``) while it runs; there is no request ID to match, so busy means wait
  and anything else means the operation is over (whether it removed the key is the
  verification's business, as it always was on 2.0).

The verdicts (:class:`Verdict`):

========  =====================================================================================
DONE      3.0: our RequestId, ``SUCCESS``. 2.0: the instance is no longer busy.
FAILED    3.0: our RequestId, ``FAILED``; ``error`` carries ``LatestOperationErrorMsg``. The
          executor observes the binding again (a failed operation may still have done part).
WAIT      3.0: our RequestId still ``OPERATING`` (or its state not reported yet), or another
          RequestId while the lag allowance lasts. 2.0: busy (status 20).
UNKNOWN   3.0: another RequestId after the lag allowance, an operation state this module does
          not know, or no RequestId for our call; both: the instance is gone. Observe the
          binding itself to decide; ``instance_busy`` says whether something is running on it.
========  =====================================================================================

When to look (:class:`PollPolicy`): the first poll of a call's instances comes the operation
time after the call was accepted (learned from earlier polls when the executor knows it, else
the API's default below), later ones back off by ``factor`` from ``step`` up to ``cap``; after
``timeout`` seconds without a final verdict the executor stops waiting (Terraform: 6 minutes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from reconciler.model import ApiVersion, InstanceState

SUCCESS = "SUCCESS"
OPERATING = "OPERATING"
FAILED = "FAILED"

# Terraform's figure, the only published one: how long after a call the instance may still show
# its previous operation (resource_tc_instance.go, waitForOperationFinished).
DEFAULT_LAG_ALLOWANCE = 10.0


class ObservedInstance(Protocol):
    """The fields of an observed instance the decision reads (``Instance`` in CONTRACT.md)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def state(self) -> InstanceState: ...

    @property
    def latest_operation(self) -> str | None: ...

    @property
    def latest_operation_state(self) -> str | None: ...

    @property
    def latest_operation_request_id(self) -> str | None: ...

    @property
    def latest_operation_error(self) -> str | None: ...


class Verdict(str, Enum):
    """What one observation says about one call on one instance."""

    DONE = "done"
    FAILED = "failed"
    WAIT = "wait"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class WaitDecision:
    """The verdict, why (for the audit and the apply report), and what the instance showed."""

    verdict: Verdict
    reason: str
    error: str | None = None  # 3.0 FAILED: LatestOperationErrorMsg ("" when Tencent gave none)
    instance_busy: bool = False  # an operation (ours or another) is running on the instance

    @property
    def final(self) -> bool:
        """DONE or FAILED: this call needs no more polls of this instance."""
        return self.verdict in (Verdict.DONE, Verdict.FAILED)


def decide(
    api: ApiVersion,
    request_id: str | None,
    accepted_at: float,
    instance: ObservedInstance | None,
    *,
    now: float,
    lag_allowance: float = DEFAULT_LAG_ALLOWANCE,
) -> WaitDecision:
    """What ``instance``, observed at ``now``, says about the call answered at ``accepted_at``
    with ``request_id`` (3.0; ignored on 2.0). ``instance`` None: not in the answer (gone)."""
    if not lag_allowance >= 0:
        raise ValueError("lag_allowance must be a non-negative number of seconds")
    if instance is None:
        return WaitDecision(Verdict.UNKNOWN, "the instance is no longer there: observe the binding")
    if api is ApiVersion.V2:
        return _decide_v2(instance)
    return _decide_v3(request_id, accepted_at, instance, now, lag_allowance)


def decide_call(
    api: ApiVersion,
    request_id: str | None,
    accepted_at: float,
    instance_ids: Iterable[str],
    observed: Mapping[str, ObservedInstance],
    *,
    now: float,
    lag_allowance: float = DEFAULT_LAG_ALLOWANCE,
) -> dict[str, WaitDecision]:
    """:func:`decide` for every instance of one call (a 3.0 call names up to 100, one RequestId)
    from one poll's answer ``observed`` (by instance ID; an absent ID is a gone instance)."""
    return {
        iid: decide(api, request_id, accepted_at, observed.get(iid), now=now, lag_allowance=lag_allowance)
        for iid in instance_ids
    }


def _decide_v2(instance: ObservedInstance) -> WaitDecision:
    if instance.state is InstanceState.BUSY:
        return WaitDecision(
            Verdict.WAIT, "status 20 (key issuing): the operation is running", instance_busy=True
        )
    return WaitDecision(Verdict.DONE, "the instance is no longer in status 20: the operation is over")


def _decide_v3(
    request_id: str | None, accepted_at: float, instance: ObservedInstance, now: float, lag_allowance: float
) -> WaitDecision:
    shown_id = instance.latest_operation_request_id
    state = instance.latest_operation_state
    busy = state == OPERATING
    if request_id is None:
        # Without our RequestId nothing on the instance can be tied to our call.
        if busy:
            return WaitDecision(
                Verdict.WAIT, "an operation is running and our call has no RequestId", instance_busy=True
            )
        return WaitDecision(Verdict.UNKNOWN, "our call has no RequestId to look for: observe the binding")
    if shown_id == request_id:
        if state == SUCCESS:
            return WaitDecision(Verdict.DONE, f"operation {request_id} succeeded")
        if state == FAILED:
            message = instance.latest_operation_error or ""
            return WaitDecision(
                Verdict.FAILED,
                f"operation {request_id} failed: {message or 'Tencent Cloud gave no message'}",
                error=message,
            )
        if busy:
            return WaitDecision(Verdict.WAIT, f"operation {request_id} is running", instance_busy=True)
        if state is None:
            # The documented field may be null; Terraform keeps waiting on null.
            return WaitDecision(Verdict.WAIT, f"operation {request_id} has no state yet")
        return WaitDecision(
            Verdict.UNKNOWN, f"operation {request_id} is in state {state!r}, which cvmkeys does not know"
        )
    shown = _describe(instance)
    if now - accepted_at < lag_allowance:
        return WaitDecision(
            Verdict.WAIT,
            f"the instance still shows {shown}: its state may lag our call by up to {lag_allowance:g} s",
            instance_busy=busy,
        )
    return WaitDecision(
        Verdict.UNKNOWN,
        f"the instance shows {shown}, not {request_id}, {now - accepted_at:.1f} s after our call: "
        "observe the binding",
        instance_busy=busy,
    )


def _describe(instance: ObservedInstance) -> str:
    if instance.latest_operation_request_id is None:
        return "no operation"
    what = instance.latest_operation or "an operation"
    return f"{what} {instance.latest_operation_request_id} ({instance.latest_operation_state or 'no state'})"


# --------------------------------------------------------------------------- when to look


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """When to poll a call's instances, in seconds.

    ``first``: from the call's acceptance to the first poll when the operation time is not
    known yet; ``step``, ``factor``, ``cap``: the backoff between later polls; ``timeout``: from
    the call's acceptance to giving up.
    """

    first: float
    step: float = 0.5
    factor: float = 1.5
    cap: float = 5.0
    timeout: float = 360.0

    def __post_init__(self) -> None:
        if not (self.first >= 0 and self.step > 0 and self.factor >= 1 and self.cap >= self.step):
            raise ValueError("a poll policy needs first >= 0, step > 0, factor >= 1 and cap >= step")
        if not self.timeout > 0:
            raise ValueError("a poll policy needs a positive timeout")

    def next_poll_at(
        self, accepted_at: float, polls_done: int, last_poll_at: float | None, learned: float | None = None
    ) -> float:
        """When to poll next: ``learned`` (the operation time earlier polls taught, if known)
        or ``first`` after acceptance for the first poll; then ``step * factor**(n-1)`` after
        the previous poll, at most ``cap``."""
        if polls_done < 0:
            raise ValueError("polls_done must not be negative")
        if polls_done == 0 or last_poll_at is None:
            wait = learned if learned is not None and learned >= 0 else self.first
            return accepted_at + wait
        return last_poll_at + self.backoff(polls_done)

    def backoff(self, polls_done: int) -> float:
        """The pause after the ``polls_done``-th poll (1-based): ``step``, growing by ``factor``
        each time, never above ``cap``."""
        if polls_done < 1:
            raise ValueError("backoff follows a poll: polls_done must be at least 1")
        # The exponent is bounded so a long wait cannot overflow the float.
        return min(self.cap, self.step * self.factor ** min(polls_done - 1, 64))

    def gave_up(self, accepted_at: float, now: float) -> bool:
        """Whether the call has been waited for as long as ``timeout`` allows."""
        return now - accepted_at >= self.timeout


# 2.0: a poll at once, as the executor does until it has learned the operation time (status 20
# is set by the call itself, so an immediate poll is never misleading). 3.0: no operation time
# is documented and an early poll within the lag allowance only answers WAIT, costing one
# DescribeInstances (40/s) per 100 instances; so poll after a second rather than Terraform's
# fixed 10 s, and let the learned time take over. Timeout: Terraform's 6 minutes.
DEFAULT_POLICIES: Mapping[ApiVersion, PollPolicy] = {
    ApiVersion.V2: PollPolicy(first=0.0),
    ApiVersion.V3: PollPolicy(first=1.0),
}
