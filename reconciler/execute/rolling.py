"""Apply's rolling stop -> unbind -> start of the plan's scheduled instances (docs/disruption.md).

The executor starts a ``RollingStops`` beside its waves (``Executor.run``) when the plan has a
stop schedule; it runs in its own thread and the executor waits for it (``finish``) before it
verifies and reports. The rules:

* **The budget.** At most ``budget`` scheduled instances are down because of this apply at
  once: an instance takes a slot from its stop call until it is seen running again. A slot is
  freed only then (or when its stop failed and it still runs), so failures never exceed the
  budget. As soon as one instance runs again, the next one in schedule order is stopped: the
  rounds are the review's picture, not barriers.
* **Calls.** Stops and starts go 100 IDs a call. The stop is hard at once for ``hard``, soft
  otherwise (2.0 ``forceStop=0``, 3.0 ``StopType=SOFT``; the 3.0 client always sends
  ``StoppedMode=KEEP_CHARGING``); for ``soft_first`` an instance not stopped within
  ``stop_timeout`` (3.0: or whose stop operation FAILED) gets one forced stop (2.0
  ``forceStop=1``, 3.0 ``StopType=HARD``). Unbinds as soon as an instance is stopped: 2.0 one
  key a call, one after the other (each keeps the instance busy); 3.0 all its keys in one call,
  instances left with the same keys sharing it. The start follows the last unbind, or an
  unbind that failed for good: a failed unbind never keeps an instance down.
* **Never leave an instance down.** On Ctrl-C (the executor's stop event), when the waves
  failed (``wind_down``), or when a read fails here: no new instance is stopped, stops already
  sent are waited for, unbinds not yet sent are skipped, and every instance this apply stopped
  is started. A start that fails is retried (``START_ATTEMPTS``, backing off), then reported
  as still down, and no further instance is stopped.
* **Re-apply after a kill.** The plan records that every scheduled instance was running. An
  instance found down when this starts was stopped by an earlier apply of this plan: it takes
  a slot, its still-bound planned keys are unbound and it is started before any new stop. One
  found running with none of its planned keys left is done. ``stopped_by_plan`` is what the
  stale check uses so that these effects of the plan itself do not make it stale.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from reconciler.cloud.base import CloudClient
from reconciler.cloud.observe import observe_subset
from reconciler.errors import CloudError
from reconciler.execute.options import ExecOptions
from reconciler.model import (
    MAX_IDS_PER_CALL,
    ApiVersion,
    Binding,
    Instance,
    InstanceState,
    InstanceStopResult,
    Outcome,
    Plan,
    ScheduledStop,
    StopSchedule,
    StopsResult,
    StopType,
)

START_ATTEMPTS = 5  # StartInstances calls per instance before it is reported as still down
READ_FAILURES = 8  # consecutive failed polls before the rolling schedule gives up watching

# (binding, outcome or None for "not attempted", reason, attempts)
Record = Callable[[Binding, Outcome | None, str, int], None]
Emit = Callable[[str], None]


class _Phase(str, Enum):
    WAITING = "waiting"  # not yet stopped
    STOPPING = "stopping"  # stop sent (or found stopping), not yet seen stopped
    UNBINDING = "unbinding"  # stopped: unbinds to send or in flight
    STARTING = "starting"  # start sent, not yet seen running
    DONE = "done"  # running again (or never needed stopping)
    GAVE_UP = "gave-up"  # not stopped (it runs), or down and no longer handled


_DOWN = (_Phase.STOPPING, _Phase.UNBINDING, _Phase.STARTING)


@dataclass
class _Inst:
    stop: ScheduledStop
    phase: _Phase = _Phase.WAITING
    stopped_by_us: bool = False
    since: float = 0.0  # when the current phase began
    hard_sent: bool = False
    stop_request_id: str | None = None
    stop_attempts: int = 0
    start_attempts: int = 0
    next_start: float = 0.0
    keys_left: list[str] = field(default_factory=list)
    unbind_attempts: dict[str, int] = field(default_factory=dict)
    where: str | None = None  # last observed: running/stopping/stopped/starting/busy/other/gone
    final_state: str = ""
    latest: Instance | None = None
    note: str = ""

    @property
    def iid(self) -> str:
        return self.stop.instance_id


def where_of(instance: Instance | None) -> str:
    """Where an instance is on the way stop -> unbind -> start. An operation in progress makes
    3.0 report every instance BUSY; its own word still tells stopping and starting apart."""
    if instance is None:
        return "gone"
    if instance.state is not InstanceState.BUSY:
        return str(instance.state.value)
    word = instance.api_state.upper()
    if word in ("STOPPING", "STARTING"):
        return word.lower()
    return "busy"


def stopped_by_plan(plan: Plan, instance: Instance) -> bool:
    """Whether ``instance`` is in a state this plan's own stops explain, for the stale check
    (``execute.freshness``): a scheduled instance (running when planned) that is stopping,
    stopped, starting or busy was taken down by an earlier, killed apply of this plan, and
    applying the plan again finishes it and starts it. Any other state (or an unscheduled
    instance in one) still makes the plan stale."""
    if plan.stops is None or instance.instance_id not in plan.stops.instance_ids:
        return False
    return where_of(instance) in ("stopping", "stopped", "starting", "busy")


def _chunks(ids: Sequence[str], size: int = MAX_IDS_PER_CALL) -> list[list[str]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


class RollingStops:
    """Runs one plan's stop schedule in a thread. ``begin``, then ``finish`` (always)."""

    def __init__(
        self,
        client: CloudClient,
        plan: Plan,
        *,
        record: Record,
        emit: Emit,
        stop: threading.Event,
        options: ExecOptions,
    ) -> None:
        assert plan.stops is not None
        self.client = client
        self.plan = plan
        self.schedule: StopSchedule = plan.stops
        self.record = record
        self.emit = emit
        self.interrupt = stop
        self.options = options
        self.insts = [_Inst(s) for s in self.schedule.stops]
        self._winding_down = threading.Event()
        self._why_winding = ""
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.max_down = 0

    # ------------------------------------------------------------------ lifecycle

    def begin(self) -> None:
        self._thread = threading.Thread(target=self._main, name="cvmkeys-rolling", daemon=True)
        self._thread.start()

    def wind_down(self, why: str) -> None:
        """Stop no further instance; finish what is under way and start what was stopped."""
        if not self._winding_down.is_set():
            self._why_winding = why
            self._winding_down.set()

    def finish(self, *, failed: bool = False) -> StopsResult:
        """Wait for the schedule (winding it down first when the rest of the apply ``failed``)
        and return what it did. A second Ctrl-C while instances are being started again does
        not abandon them: only SIGKILL ends this wait."""
        if failed:
            self.wind_down("the apply failed")
        thread = self._thread
        while thread is not None and thread.is_alive():
            try:
                thread.join(0.2)
            except KeyboardInterrupt:
                self.wind_down("interrupted")
                down = [i.iid for i in self.insts if i.phase in _DOWN]
                self.emit(
                    "still starting again the instances this apply stopped ("
                    + ", ".join(down)
                    + "); only SIGKILL ends this wait, and leaves them down"
                )
        if self._error is not None and not isinstance(self._error, CloudError):
            raise self._error
        return self._result()

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by finish(); the thread must not die silently
            self._error = error
            for inst in self.insts:
                if inst.phase in _DOWN:
                    inst.note = inst.note or f"left {inst.where or 'down'}: {error}"

    # ------------------------------------------------------------------ the loop

    def _stopping_new(self) -> bool:
        return not (self.interrupt.is_set() or self._winding_down.is_set())

    def _run(self) -> None:
        self._first_look()
        delay = self.options.poll_initial
        failures = 0
        while True:
            acted = self._admit() | self._act()
            if all(i.phase in (_Phase.DONE, _Phase.GAVE_UP) for i in self.insts) or (
                not self._stopping_new() and not any(i.phase in _DOWN for i in self.insts)
            ):
                break
            if acted:
                delay = self.options.poll_initial
            self.options.sleep(delay)
            try:
                self._observe([i for i in self.insts if i.phase in _DOWN])
                failures = 0
            except CloudError as error:
                failures += 1
                self.wind_down(f"could not observe the instances: {error.message}")
                if failures >= READ_FAILURES:
                    for inst in self.insts:
                        if inst.phase in _DOWN:
                            self._abandon(inst, f"state unknown: could not observe it ({error.message})")
                    break
            self._count_down()
            delay = min(delay * 1.5, self.options.poll_max)
        for inst in self.insts:
            if inst.phase is _Phase.WAITING:
                inst.note = f"not stopped: {self._why_winding or 'interrupted'}"
                for key_id in inst.keys_left:
                    self.record((key_id, inst.iid), None, f"not attempted: {inst.note}", 0)

    def _first_look(self) -> None:
        """Where each scheduled instance is and which of its planned keys are still bound; an
        instance already down was stopped by an earlier apply of this plan."""
        keys = {k for i in self.insts for k in i.stop.key_ids}
        ids = [i.iid for i in self.insts]
        for attempt in range(READ_FAILURES):
            try:
                observed = observe_subset(self.client, self.plan.region, keys, ids)
                break
            except CloudError:
                # Without this look a re-apply would not know which instances are down: retry,
                # and only then give up (nothing is stopped without it).
                if attempt == READ_FAILURES - 1:
                    raise
                self.options.sleep(min(self.options.poll_max, self.options.poll_initial * 2**attempt))
        now = self.options.clock()
        for inst in self.insts:
            instance = observed.instances.get(inst.iid)
            inst.latest = instance
            inst.where = where_of(instance)
            inst.final_state = instance.api_state if instance else ""
            bound = []
            for key_id in inst.stop.key_ids:
                pair = observed.keys.get(key_id)
                if pair is not None and inst.iid in pair.bound_instance_ids:
                    bound.append(key_id)
                else:
                    self.record((key_id, inst.iid), Outcome.DONE, "already done before this apply", 0)
            inst.keys_left = bound
            inst.since = now
            if inst.where == "running":
                inst.phase = _Phase.WAITING if bound else _Phase.DONE
            elif inst.where in ("stopped", "busy"):
                inst.phase, inst.stopped_by_us = _Phase.UNBINDING, True
                inst.note = "found stopped: stopped by an earlier apply of this plan"
            elif inst.where == "stopping":
                inst.phase, inst.stopped_by_us = _Phase.STOPPING, True
                inst.note = "found stopping: stopped by an earlier apply of this plan"
            elif inst.where == "starting":
                inst.phase, inst.stopped_by_us = _Phase.STARTING, True
                inst.note = "found starting: stopped by an earlier apply of this plan"
            else:
                inst.phase = _Phase.GAVE_UP
                inst.note = f"not stopped: it is {inst.final_state or 'gone'}, not running"
                for key_id in bound:
                    self.record((key_id, inst.iid), Outcome.FAILED, inst.note, 0)
        self._count_down()

    def _count_down(self) -> None:
        self.max_down = max(self.max_down, sum(1 for i in self.insts if i.phase in _DOWN))

    def _observe(self, insts: Sequence[_Inst]) -> None:
        if not insts:
            return
        found = {i.instance_id: i for i in self.client.describe_instances([i.iid for i in insts])}
        for inst in insts:
            instance = found.get(inst.iid)
            inst.latest = instance
            inst.where = where_of(instance)
            if instance is not None:
                inst.final_state = instance.api_state

    # ------------------------------------------------------------------ stops

    def _admit(self) -> bool:
        """Stop the next waiting instances into the free slots, 100 a call."""
        if not self._stopping_new():
            return False
        down = sum(1 for i in self.insts if i.phase in _DOWN) + sum(
            1 for i in self.insts if i.phase is _Phase.GAVE_UP and i.stopped_by_us
        )
        free = self.schedule.budget - down
        waiting = [i for i in self.insts if i.phase is _Phase.WAITING]
        if free <= 0 or not waiting:
            return False
        chosen = waiting[:free]
        hard = self.schedule.stop_type is StopType.HARD
        for group in _chunks([i.iid for i in chosen]):
            self._send_stop([i for i in chosen if i.iid in group], hard=hard)
        self._count_down()
        return True

    def _send_stop(self, insts: list[_Inst], *, hard: bool) -> None:
        ids = [i.iid for i in insts]
        now = self.options.clock()
        for inst in insts:  # counted down from the call on: it may be carried out unanswered
            inst.phase, inst.since, inst.stopped_by_us, inst.where = _Phase.STOPPING, now, True, None
            inst.stop_attempts += 1
            inst.hard_sent = inst.hard_sent or hard
        try:
            result = self.client.stop_instances(ids, hard=hard)
        except CloudError as error:
            self.emit(f"StopInstances failed ({error.message}); checking what happened")
            self._after_failed_stop(insts, error)
            return
        for inst in insts:
            inst.stop_request_id = result.request_id
        self.emit(f"stopping {', '.join(ids)}{' (forced)' if hard else ''}")

    def _after_failed_stop(self, insts: list[_Inst], error: CloudError) -> None:
        try:
            self._observe(insts)
        except CloudError:
            return  # stays STOPPING (counted down); the loop observes it again
        for inst in insts:
            if inst.where in ("stopping", "stopped", "busy"):
                continue  # carried out after all
            if inst.where == "running" and inst.stop_attempts < self.options.max_attempts:
                inst.phase, inst.stopped_by_us = _Phase.WAITING, False  # the next free slot retries it
                continue
            self._give_up_running(inst, f"could not be stopped: {error.message}")

    def _give_up_running(self, inst: _Inst, why: str) -> None:
        """The instance was not stopped and runs: its unbinds fail, and its slot is free."""
        inst.phase, inst.stopped_by_us, inst.note = _Phase.GAVE_UP, False, f"not stopped: {why}"
        if inst.where not in ("running", None):
            inst.note += f" (now {inst.final_state})"
        for key_id in inst.keys_left:
            self.record((key_id, inst.iid), Outcome.FAILED, inst.note, inst.unbind_attempts.get(key_id, 0))
        inst.keys_left = []

    def _check_stopping(self, inst: _Inst, now: float) -> bool:
        """A stop under way: stopped -> unbind; failed (running again) -> forced or given up."""
        if inst.where in ("stopped",):
            inst.phase, inst.since = _Phase.UNBINDING, now
            return True
        if inst.where == "running":
            latest = inst.latest
            failed = (
                latest is not None
                and inst.stop_request_id is not None
                and latest.latest_operation_request_id == inst.stop_request_id
                and latest.latest_operation_state == "FAILED"
            )
            timed_out = now - inst.since >= self.schedule.stop_timeout
            if not (failed or timed_out):
                return False
            why = f"did not stop within {self.schedule.stop_timeout} s" if timed_out else "the stop FAILED"
            if self.schedule.stop_type is StopType.SOFT_FIRST and not inst.hard_sent and self._stopping_new():
                self.emit(f"{inst.iid}: {why}; forcing the stop")
                self._send_stop([inst], hard=True)
                return True
            self._give_up_running(inst, why)
            return True
        if inst.where == "gone":
            self._gone(inst, "stopping")
            return True
        if now - inst.since > self.schedule.stop_timeout + self.options.wait_timeout:
            waited = self.schedule.stop_timeout + self.options.wait_timeout
            self._abandon(inst, f"still {inst.final_state} after {waited:g} s")
            return True
        return False

    def _abandon(self, inst: _Inst, note: str) -> None:
        """Stop watching an instance this apply took down; stop no further one (if this one
        cannot be brought back, stopping more would only leave more down)."""
        inst.phase, inst.note = _Phase.GAVE_UP, note
        for key_id in inst.keys_left:
            self.record((key_id, inst.iid), Outcome.FAILED, note, inst.unbind_attempts.get(key_id, 0))
        inst.keys_left = []
        self.wind_down(f"{inst.iid}: {note}")

    def _fail_rest(self, inst: _Inst, outcome: Outcome | None, reason: str) -> None:
        """Report the instance's planned keys not yet unbound, and send none of them."""
        for key_id in inst.keys_left:
            self.record((key_id, inst.iid), outcome, reason, inst.unbind_attempts.get(key_id, 0))
        inst.keys_left = []

    def _gone(self, inst: _Inst, doing: str) -> None:
        inst.phase, inst.stopped_by_us, inst.note = _Phase.GAVE_UP, False, f"deleted while {doing}"
        for key_id in inst.keys_left:
            self.record((key_id, inst.iid), Outcome.FAILED, inst.note, inst.unbind_attempts.get(key_id, 0))
        inst.keys_left = []

    # ------------------------------------------------------------------ unbinds and starts

    def _act(self) -> bool:
        now = self.options.clock()
        wait_timeout = self.options.wait_timeout
        acted = False
        for inst in self.insts:
            if inst.phase is _Phase.STOPPING and inst.where is not None:
                acted |= self._check_stopping(inst, now)
            elif inst.phase is _Phase.UNBINDING and inst.where == "running":
                # Someone else started it: its remaining unbinds cannot be made, and it runs.
                inst.phase, inst.note = _Phase.DONE, "started by someone else before its unbinds"
                self._fail_rest(inst, Outcome.FAILED, inst.note)
            elif inst.phase is _Phase.UNBINDING and inst.where == "gone":
                self._gone(inst, "stopped")
        unbind = [
            i for i in self.insts if i.phase is _Phase.UNBINDING and i.where == "stopped" and i.keys_left
        ]
        if unbind and not self._stopping_new():
            why = self._why_winding or "interrupted"
            for inst in unbind:  # wind down: unbinds not yet sent are skipped
                self._fail_rest(inst, None, f"not attempted: {why}; the instance was started again")
            unbind = []
        if unbind:
            self._send_unbinds(unbind)
            acted = True
        to_start = [
            i
            for i in self.insts
            if (i.phase is _Phase.UNBINDING and i.where == "stopped" and not i.keys_left)
            or (i.phase is _Phase.STARTING and i.where == "stopped" and now >= i.next_start)
        ]
        if to_start:
            for group in _chunks([i.iid for i in to_start]):
                self._send_start([i for i in to_start if i.iid in group])
            acted = True
        for inst in self.insts:
            if inst.phase is _Phase.STARTING and inst.where == "running":
                inst.phase = _Phase.DONE
                inst.note = inst.note if inst.note.startswith("found") else ""
                self.emit(f"{inst.iid} is running again")
                acted = True
            elif inst.phase is _Phase.STARTING and inst.where == "gone":
                self._gone(inst, "starting")
            elif (
                inst.phase is _Phase.STARTING
                and inst.where in ("starting", "busy")
                and now - inst.since > wait_timeout
            ):
                self._abandon(inst, f"still {inst.final_state} {wait_timeout:g} s after its start")
        return acted

    def _send_unbinds(self, insts: list[_Inst]) -> None:
        calls: list[tuple[tuple[str, ...], list[_Inst]]] = []
        if self.plan.api is ApiVersion.V2:
            # UnBindInstanceKey takes one key; each call keeps the instance busy, so one key per
            # instance now, and instances losing the same next key share the call.
            by_key: dict[str, list[_Inst]] = {}
            for inst in insts:
                by_key.setdefault(inst.keys_left[0], []).append(inst)
            calls = [((k,), v) for k, v in sorted(by_key.items())]
        else:
            by_keys: dict[tuple[str, ...], list[_Inst]] = {}
            for inst in insts:
                by_keys.setdefault(tuple(sorted(inst.keys_left))[:MAX_IDS_PER_CALL], []).append(inst)
            calls = sorted(by_keys.items(), key=lambda kv: kv[0])
        for key_ids, members in calls:
            for group in _chunks([i.iid for i in members]):
                self._send_unbind(key_ids, [i for i in members if i.iid in group])

    def _send_unbind(self, key_ids: tuple[str, ...], insts: list[_Inst]) -> None:
        ids = [i.iid for i in insts]
        for inst in insts:
            inst.where = None  # busy from now on, until seen otherwise
            for key_id in key_ids:
                inst.unbind_attempts[key_id] = inst.unbind_attempts.get(key_id, 0) + 1
        try:
            self.client.unbind(key_ids, ids)
        except CloudError as error:
            self.emit(f"unbinding {', '.join(key_ids)} failed ({error.message}); checking what happened")
            self._after_failed_unbind(key_ids, insts, error)
            return
        for inst in insts:
            for key_id in key_ids:
                self.record((key_id, inst.iid), Outcome.DONE, "", inst.unbind_attempts[key_id])
            inst.keys_left = [k for k in inst.keys_left if k not in key_ids]
        self.emit(f"unbound {', '.join(key_ids)} from {', '.join(ids)} (stopped)")

    def _after_failed_unbind(self, key_ids: tuple[str, ...], insts: list[_Inst], error: CloudError) -> None:
        try:
            observed = observe_subset(self.client, self.plan.region, key_ids, [i.iid for i in insts])
        except CloudError:
            return  # unknown: retried when the instance is seen idle (a retry never names a gone one)
        for inst in insts:
            instance = observed.instances.get(inst.iid)
            inst.latest, inst.where = instance, where_of(instance)
            for key_id in key_ids:
                pair = observed.keys.get(key_id)
                attempts = inst.unbind_attempts[key_id]
                if pair is None or inst.iid not in pair.bound_instance_ids:
                    self.record((key_id, inst.iid), Outcome.DONE, "", attempts)
                    inst.keys_left.remove(key_id)
                elif attempts >= self.options.max_attempts:
                    reason = f"{error.message} (after {attempts} attempts)"
                    self.record((key_id, inst.iid), Outcome.FAILED, reason, attempts)
                    inst.keys_left.remove(key_id)

    def _send_start(self, insts: list[_Inst]) -> None:
        ids = [i.iid for i in insts]
        now = self.options.clock()
        for inst in insts:
            inst.start_attempts += 1
            inst.phase, inst.since, inst.where = _Phase.STARTING, now, None
        try:
            self.client.start_instances(ids)
        except CloudError as error:
            self.emit(f"StartInstances failed ({error.message}); checking what happened")
            try:
                self._observe(insts)
            except CloudError:
                return
            for inst in insts:
                if inst.where != "stopped":
                    continue  # starting or running after all (or busy: seen again next poll)
                if inst.start_attempts >= START_ATTEMPTS:
                    self._abandon(
                        inst, f"StartInstances failed ({error.message}) after {inst.start_attempts} attempts"
                    )
                else:
                    backoff = min(self.options.poll_max * 2, 2.0**inst.start_attempts)
                    inst.next_start = self.options.clock() + backoff
            return
        for inst in insts:
            # A cloud may report the instance stopped a moment longer: resend only after this.
            inst.next_start = now + 2 * self.options.poll_max
        self.emit(f"starting {', '.join(ids)}")

    # ------------------------------------------------------------------ result

    def _result(self) -> StopsResult:
        results: list[InstanceStopResult] = []
        for inst in self.insts:
            running = inst.where == "running" or inst.phase is _Phase.DONE
            note = inst.note
            if inst.stopped_by_us and not running and not note:
                note = f"left {inst.final_state or 'down'}"
            results.append(
                InstanceStopResult(
                    instance_id=inst.iid,
                    instance_name=inst.stop.instance_name,
                    stopped=inst.stopped_by_us,
                    running_again=running,
                    final_state=inst.final_state,
                    note=note,
                )
            )
        return StopsResult(instances=tuple(results), max_down_at_once=self.max_down)


def still_down_message(result: InstanceStopResult) -> str:
    """The line at the top of a result for an instance this apply stopped and did not start."""
    name = f" ({result.instance_name})" if result.instance_name else ""
    return (
        f"{result.instance_id}{name} is still {result.final_state or 'down'}: {result.note}. "
        "Start it, or apply the plan again."
    )


