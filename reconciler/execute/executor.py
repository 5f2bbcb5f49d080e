"""Carrying out a plan's batches against the cloud, wave by wave, and verifying every binding.

Called by ``operations.apply`` (a saved plan is checked first: ``Executor.check_fresh``, which
``execute.freshness`` implements: what is already done is not sent again). The rules:

* only ``ready`` changes are attempted; blocked and protected ones are reported as such;
* the plan is the contract: the first attempt of every wave sends the saved plan's batches as
  saved, one unbind call each (``CloudClient.unbind``); only retries regroup, and only what is
  left. Batches of one wave run in parallel (``parallelism``) under the client's rate limit;
* a call makes its instances busy (``InstanceState.BUSY``: 2.0 status 20, 3.0 an operation
  ``OPERATING``) until the operation finishes, and the next wave may touch an instance only once
  it is idle again. On 3.0 the call's own operation is waited for: the instance's
  ``LatestOperationRequestId`` must be the call's RequestId and no longer ``OPERATING``
  (``operation_wait.decide``, which allows for the state lagging the call); an operation that
  ends ``FAILED``, or that cannot be found after the lag allowance, sends its bindings to be
  observed again like a failed call, with ``LatestOperationErrorMsg`` in the reason. So a wave
  sends first the calls whose instances come back in the next wave; after the wave those
  instances (and those of failed calls) are polled (DescribeInstances, 100 a call, timeout)
  until none is busy; by
  then they have usually long finished, and the next wave starts at once. Every other
  instance is polled once, before the verification (an instance in status 20 still reports
  its old keys): those with the oldest calls fill the free places of the polls between waves,
  the rest are polled at the end. Each instance is thus polled once after each of its calls,
  in as few calls as there can be. The polls are timed by what earlier polls taught about how
  long an operation takes (``_OpTimer``); until that is known the first poll is immediate and
  the next ones back off;
* after any failed or ambiguous call the truth is observed again: a binding that is gone is
  done, one whose instance can no longer be unbound is failed, the rest are retried within
  ``max_attempts``; a retry never names a binding that is already gone. What the error means is
  its ``ApiError.kind``, never one API's code: BUSY waits and retries; BLOCKED fails the
  instance it names (a refused call of several instances is retried one instance a call, since
  the whole call fails when one instance is refused); AUTH fails at once; NOT_FOUND, AMBIGUOUS
  and the rest are observed again;
* a final observation verifies every attempted binding;
* a stop request (Ctrl-C) starts no new call, lets calls in flight finish, and reports the rest
  as not attempted.
"""

from __future__ import annotations

import dataclasses
import heapq
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum

from reconciler.cloud.base import CallResult, CloudClient
from reconciler.cloud.observe import observe_subset
from reconciler.common import plural, short_repr
from reconciler.core.diff import blocked_reason
from reconciler.errors import ApiError, ApiErrorKind, CloudError, PlanIntegrityError
from reconciler.execute.freshness import Freshness, check_fresh, regroup, remaining_batches
from reconciler.execute.operation_wait import Verdict, decide
from reconciler.execute.options import ExecOptions as ExecOptions  # its home before; callers import it here
from reconciler.execute.rolling import RollingStops
from reconciler.ids import is_instance_id, is_key_id
from reconciler.model import (
    MAX_IDS_PER_CALL,
    ApiVersion,
    ApplyResult,
    Batch,
    Binding,
    BindingResult,
    ChangeStatus,
    Instance,
    InstanceState,
    Outcome,
    Plan,
)

# What "busy" is called in each API, for messages.
_BUSY_WORDS = {ApiVersion.V2: "status 20, key issuing", ApiVersion.V3: "an operation OPERATING"}


class EventKind(str, Enum):
    """What an ``ExecEvent`` reports."""

    WAVE_START = "wave-start"
    CALL_DONE = "call-done"
    CALL_FAILED = "call-failed"
    WAITING = "waiting"
    RETRY = "retry"
    VERIFY = "verify"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """Progress, for the view to show."""

    kind: EventKind
    wave: int
    message: str
    bindings_done: int = 0
    calls: int = 0


class _OpTimer:
    """What the polls have taught about how long an operation keeps an instance in status 20,
    counted from the moment its call was answered (the operation starts before that).

    An instance seen busy ``a`` seconds after its call was answered proves the operation takes
    longer than ``a`` (``low``); one seen done proves it takes at most ``a`` (``high``, measured
    to the poll's answer). With operations of equal length, a poll at answer + ``high`` finds
    the instance done; one immediate poll after a long wave sees instances of every age and
    sets both bounds. ``high`` is used (``wait``) only when the two bounds are close: instances
    found done long after their call say little. Operations of unequal length can contradict
    ``high``: it is then dropped until a later poll sets it again.
    """

    def __init__(self) -> None:
        self.low = 0.0
        self.high: float | None = None

    def learn(self, busy: bool, after_send: float, after_answer: float) -> None:
        if busy:
            self.low = max(self.low, after_send)
        else:
            self.high = after_answer if self.high is None else min(self.high, after_answer)
        if self.high is not None and self.high <= self.low:
            self.high = None

    @property
    def wait(self) -> float | None:
        """How long after a call's answer to poll its instances, or None when not known."""
        if self.high is None or self.low <= 0 or self.high > max(2 * self.low, self.low + 1.0):
            return None
        return self.high


@dataclass
class _Track:
    attempts: int = 0
    outcome: Outcome | None = None
    reason: str = ""
    code: int | str | None = None


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a binding's call may not have done its work: the message, the API's code (2.0 ints
    only are reported), the error's kind, and how many instances the call named."""

    message: str
    code: int | str | None = None
    kind: ApiErrorKind | None = None
    instances: int = 1

    @classmethod
    def of(cls, error: CloudError, instances: int) -> _Failure:
        if isinstance(error, ApiError):
            return cls(error.message, error.code, error.kind, instances)
        return cls(error.message, None, ApiErrorKind.AMBIGUOUS, instances)


@dataclass
class _State:
    tracks: dict[Binding, _Track] = field(default_factory=dict)
    calls: int = 0
    interrupted: bool = False
    aborted: str | None = None  # why the apply stopped early, when a read failed for good
    lock: threading.Lock = field(default_factory=threading.Lock)

    done: int = 0  # bindings whose outcome is DONE (kept by ``Executor._set_outcome``)


def check_sendable(plan: Plan) -> None:
    """Refuse (PlanIntegrityError), before any request, a plan that names an ID the client
    cannot send.

    The plan schema takes IDs of any length (a plan stays readable if the cloud lengthens
    them); the client sends only ``skey-``/``ins-`` and 8 characters and raises ``ValueError``
    for anything else. A resealed plan with one such ID in a later batch would otherwise be
    carried out up to that batch and then stop with an internal error.
    """
    fp = plan.fingerprint
    keys = [k for b in plan.batches for k in b.key_ids] + [c.key_id for c in plan.ready_changes]
    keys += list(fp.key_ids)
    instances = [iid for b in plan.batches for iid in b.instance_ids]
    instances += [c.instance_id for c in plan.ready_changes] + list(fp.instance_ids)
    bad = [k for k in keys if not is_key_id(k)] + [i for i in instances if not is_instance_id(i)]
    if bad:
        shown = ", ".join(short_repr(value) for value in dict.fromkeys(bad))
        raise PlanIntegrityError(
            f"the plan names IDs the CVM API does not take: {shown}; nothing was sent",
            hint="run `cvmkeys plan --out FILE` again and review the new plan",
        )


class Executor:
    """Runs one plan. Not reusable: make a new one per apply."""

    def __init__(
        self,
        client: CloudClient,
        plan: Plan,
        *,
        options: ExecOptions | None = None,
        on_event: Callable[[ExecEvent], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.plan = plan
        self.options = options or ExecOptions()
        self.on_event = on_event or (lambda event: None)
        self.stop = stop or threading.Event()
        self._state = _State({(c.key_id, c.instance_id): _Track() for c in plan.ready_changes})
        self._answered: dict[str, float] = {}  # instance -> when its latest call was answered
        # instance -> the RequestId of its latest accepted call whose operation has not been
        # seen to end (3.0; None on 2.0, which has no request IDs to match)
        self._operations: dict[str, str | None] = {}
        # instance -> why its latest operation did not end well (FAILED / not found), until a
        # settle or the verification reports it
        self._op_problems: dict[str, str] = {}
        self._alone: set[str] = set()  # instances to retry one a call (a BLOCKED refusal)
        self._unconfirmed: set[str] = set()  # instances not yet seen idle after their latest call
        self._op_timer = _OpTimer()
        self._sendable = False
        self._done: frozenset[Binding] = frozenset()  # gone before this apply (``check_fresh``)

    # ------------------------------------------------------------------ public

    def check_fresh(self) -> Freshness:
        """Refuse (StalePlanError) when what the plan's remaining work depends on changed since
        it was made (and, first, a plan naming IDs the client cannot send: ``check_sendable``);
        what is already done is not sent again by ``run``. For a saved plan, before ``run``."""
        self._check_sendable()
        fresh = check_fresh(
            self.client,
            self.plan,
            wait_timeout=min(self.options.wait_timeout, 60.0),
            clock=self.options.clock,
            sleep=self.options.sleep,
        )
        self._done = fresh.done
        for binding in fresh.done:
            track = self._track(binding)
            self._set_outcome(track, Outcome.DONE)
            track.reason = "already done before this apply"
        return fresh

    def _check_sendable(self) -> None:
        # Once per apply, whichever of check_fresh and run comes first.
        if not self._sendable:
            check_sendable(self.plan)
            self._sendable = True

    def run(self) -> ApplyResult:
        """Execute every wave, verify, and return what happened to each binding.

        A read that fails for good (the status polls, the re-observation, the verification)
        stops the apply: no further wave is started, and every binding is reported as what is
        known of it, never as a guess.
        """
        self._check_sendable()
        # The hook for the stop schedule (docs/disruption.md): it runs beside the waves, and is
        # always finished (every instance it stopped started again) before verify and report.
        rolling = self._rolling()
        failed = True
        batches = remaining_batches(self.plan, self._done)
        waves = sorted({b.wave for b in batches})
        by_wave: dict[int, list[Batch]] = {wave: [] for wave in waves}
        for batch in batches:
            by_wave[batch.wave].append(batch)
        try:
            for n, wave in enumerate(waves):
                if self.stop.is_set():
                    break
                following = (
                    {iid for b in by_wave[waves[n + 1]] for iid in b.instance_ids}
                    if n + 1 < len(waves)
                    else set()
                )
                self._run_wave(wave, by_wave[wave], following)
            if not self.stop.is_set():
                self._wait_idle(-1, sorted(self._unconfirmed))
            failed = False
        except CloudError as error:
            self._abort(error, "apply stopped")
        finally:
            stops = rolling.finish(failed=failed) if rolling is not None else None
        if self.stop.is_set():
            self._state.interrupted = True
            self._mark_unverified("interrupted")
            self._emit(EventKind.STOPPED, -1, "stopped: no new calls started; calls in flight finished")
        elif self._state.aborted is None:
            try:
                self._verify()
            except CloudError as error:
                self._state.aborted = error.message
                self._mark_unverified(error.message)
        return dataclasses.replace(self._result(), stops=stops)

    def _rolling(self) -> RollingStops | None:
        """Start the plan's stop schedule (``execute.rolling``), or None without one."""
        if self.plan.stops is None or not self.plan.stops.stops:
            return None

        def record(binding: Binding, outcome: Outcome | None, reason: str, attempts: int) -> None:
            track = self._track(binding)
            track.attempts, track.reason = attempts, reason
            if outcome is not None:
                self._set_outcome(track, outcome)

        rolling = RollingStops(
            self.client,
            self.plan,
            record=record,
            emit=lambda message: self._emit(EventKind.CALL_DONE, -1, message),
            stop=self.stop,
            options=self.options,
        )
        rolling.begin()
        return rolling

    def result_after(self, error: Exception) -> ApplyResult:
        """The result after ``run`` raised ``error`` (a bug): what was done, failed, of unknown
        outcome and not attempted, as far as this executor knows; the apply is reported as
        stopped by an internal error."""
        why = f"internal error ({type(error).__name__}): this is a bug in cvmkeys, please report it"
        self._abort(CloudError(why, action="apply", retryable=False), "apply stopped")
        return self._result()

    def _mark_unverified(self, why: str) -> None:
        """Say of every binding the API accepted that no observation has confirmed it."""
        for track in self._state.tracks.values():
            if track.outcome is Outcome.DONE:
                track.reason = f"accepted by the API; not verified ({why})"

    def _abort(self, error: CloudError, what: str) -> None:
        self._state.aborted = error.message
        self._emit(EventKind.STOPPED, -1, f"{what}: {error.message}")
        self._mark_unverified(error.message)
        for track in self._state.tracks.values():
            if track.outcome is None and track.attempts > 0:
                self._set_outcome(track, Outcome.FAILED)
                track.reason = f"outcome unknown: could not observe it after the call ({error.message})"
            elif track.outcome is None:
                track.reason = f"not attempted: {what} ({error.message})"

    # ------------------------------------------------------------------ waves

    def _run_wave(self, wave: int, batches: list[Batch], following: set[str]) -> None:
        """Send the wave's batches as saved (calls touching ``following``, the next wave's
        instances, first); then wait until the next wave's instances with an unconfirmed call
        (of this wave or an earlier one) and the failed calls' are idle;
        settle, and retry what is left, regrouped."""
        pending = [binding for batch in batches for binding in batch.bindings]
        calls: list[Batch] = list(batches)
        retrying = False
        self._emit(EventKind.WAVE_START, wave, f"wave {wave + 1}: {plural(len(pending), 'unbind')}")
        while pending and not self.stop.is_set():
            pending = [b for b in pending if self._track(b).outcome is None]
            if not pending:
                break
            if retrying:  # someone else (another apply, the console) may have made them busy
                self._wait_idle(wave, sorted({iid for _, iid in pending}))
                calls = regroup(self.plan.api, wave, pending, alone=self._alone)
            retrying = True
            for binding in pending:
                self._track(binding).attempts += 1
            calls.sort(key=lambda call: not following.intersection(call.instance_ids))  # stable: chains first
            uncertain = self._send(wave, calls)
            touched = {iid for _, iid in pending}
            self._unconfirmed |= touched
            # Every next-wave instance with a call not yet seen finished, not only this wave's:
            # coloured waves let an instance lose keys in waves 1 and 3 but not 2, and wave 1's
            # operation may still run when wave 3 starts.
            needed = (self._unconfirmed & following) | {iid for (_, iid), _ in uncertain}
            self._wait_idle(wave, sorted(needed), self._fillers(needed, following))
            uncertain += self._operation_problems(pending)
            pending = self._settle(wave, uncertain) if uncertain else []

    def _fillers(self, needed: set[str], following: set[str]) -> list[str]:
        """Instances to confirm in the free places of the polls for ``needed``: those with the
        oldest calls whose instance no later wave touches. Each must be seen idle once anyway;
        seen now, in a call that is made anyway, it need not be polled at the end."""
        free = -len(needed) % MAX_IDS_PER_CALL
        if not needed or not free:
            return []
        candidates = self._unconfirmed - needed - following
        return heapq.nsmallest(free, candidates, key=lambda iid: (self._answered.get(iid, 0.0), iid))

    def _operation_problems(self, pending: Sequence[Binding]) -> list[tuple[Binding, _Failure]]:
        """The bindings of ``pending`` whose call was accepted but whose operation failed or
        could not be found (3.0): observed again, like a failed call."""
        found: list[tuple[Binding, _Failure]] = []
        for binding in pending:
            problem = self._op_problems.get(binding[1])
            track = self._track(binding)
            if problem is not None and track.outcome is Outcome.DONE:
                self._set_outcome(track, None)
                found.append((binding, _Failure(problem)))
        for _, iid in pending:
            self._op_problems.pop(iid, None)
        return found

    def _send(self, wave: int, calls: list[Batch]) -> list[tuple[Binding, _Failure]]:
        """Send the calls in parallel; return the bindings whose call failed, with the error."""
        uncertain: list[tuple[Binding, _Failure]] = []
        queue = list(calls)
        with ThreadPoolExecutor(max_workers=max(1, self.options.parallelism)) as pool:
            running: dict[Future[CallResult], Batch] = {}
            while queue or running:
                while queue and len(running) < self.options.parallelism and not self.stop.is_set():
                    call = queue.pop(0)
                    running[pool.submit(self.client.unbind, call.key_ids, call.instance_ids)] = call
                if not running:
                    break  # stopped with calls still queued: they stay unattempted
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    call = running.pop(future)
                    answered = self.options.clock()
                    for iid in call.instance_ids:
                        self._answered[iid] = answered
                    with self._state.lock:
                        self._state.calls += 1
                    error = future.exception()
                    if error is None:
                        request_id = future.result().request_id
                        for iid in call.instance_ids:
                            self._operations[iid] = request_id
                            self._op_problems.pop(iid, None)
                        for binding in call.bindings:
                            self._set_outcome(self._track(binding), Outcome.DONE)
                        keys = ", ".join(call.key_ids)
                        instances = plural(len(call.instance_ids), "instance")
                        self._emit(EventKind.CALL_DONE, wave, f"unbound {keys} from {instances}")
                    elif isinstance(error, CloudError):
                        failure = _Failure.of(error, len(call.instance_ids))
                        uncertain.extend((binding, failure) for binding in call.bindings)
                        # A throttled call was refused unprocessed: nothing to fear, only to redo.
                        then = "checking what happened"
                        if error.throttled:
                            then = "not carried out; retried while attempts remain"
                        self._emit(EventKind.CALL_FAILED, wave, f"{error.message}; {then}")
                    else:
                        raise error
        for call in queue:  # never sent (stopped): not an attempt
            for binding in call.bindings:
                self._track(binding).attempts -= 1
        return uncertain

    def _wait_idle(self, wave: int, instance_ids: Sequence[str], fillers: Sequence[str] = ()) -> None:
        """Poll until none of these instances is in status 20 (or the timeout passes).

        A poll is timed for the newest call among the instances still waiting: at its answer
        plus what ``_OpTimer`` knows the operation takes; while nothing is known, the first poll
        is immediate and the next ones back off from ``poll_initial`` to ``poll_max``. Instances
        found idle are confirmed (``_unconfirmed``). ``fillers`` ride along in the first poll
        only: confirmed if idle, not waited for if busy.
        """
        options, timer = self.options, self._op_timer
        waiting = list(instance_ids)
        delay = options.poll_initial
        deadline = options.clock() + options.wait_timeout
        first = True
        while waiting and not self.stop.is_set():
            now = options.clock()
            known = timer.wait
            if known is not None:
                due = max((self._answered.get(iid, now) for iid in waiting), default=now) + known
            elif first:
                due = now
            else:
                due = now + delay
                delay = min(delay * 1.5, options.poll_max)
            if due > deadline:
                self._time_out(waiting)
                return
            if due > now:
                self._emit(
                    EventKind.WAITING,
                    wave,
                    f"waiting for {plural(len(waiting), 'instance')} to finish their operation",
                )
                options.sleep(due - now)
            first = False
            polled = [*waiting, *fillers]
            fillers = ()
            sent = options.clock()
            found = self.client.describe_instances(polled)
            answered = options.clock()
            busy = self._still_busy(found, polled, answered)
            for iid in polled:
                if iid in self._answered:
                    timer.learn(iid in busy, sent - self._answered[iid], answered - self._answered[iid])
            self._unconfirmed.difference_update(iid for iid in polled if iid not in busy)
            waiting = sorted(busy.intersection(waiting))

    def _still_busy(self, found: Sequence[Instance], polled: Sequence[str], now: float) -> set[str]:
        """The polled instances still to wait for. One whose latest call's operation is not
        known to have ended is judged by ``operation_wait.decide`` (3.0: that call's RequestId;
        2.0: status 20); FAILED and not-found operations are noted for a settle; any other
        instance is busy while an operation (anyone's) runs on it."""
        by_id = {i.instance_id: i for i in found}
        busy: set[str] = set()
        for iid in polled:
            instance = by_id.get(iid)
            if iid not in self._operations:
                if instance is not None and instance.state is InstanceState.BUSY:
                    busy.add(iid)
                continue
            decision = decide(
                self.plan.api,
                self._operations[iid],
                self._answered.get(iid, now),
                instance,
                now=now,
                lag_allowance=self.options.lag_allowance,
            )
            if decision.verdict is Verdict.WAIT:
                busy.add(iid)
                continue
            del self._operations[iid]
            if decision.verdict is Verdict.FAILED or (
                decision.verdict is Verdict.UNKNOWN and instance is not None
            ):
                self._op_problems[iid] = decision.reason
            if decision.instance_busy:
                busy.add(iid)  # someone else's operation: idle only when it ends
        return busy

    def _time_out(self, busy: Sequence[str]) -> None:
        still = set(busy)
        for binding, track in self._state.tracks.items():
            if binding[1] in still and track.outcome is None:
                self._set_outcome(track, Outcome.FAILED)
                track.reason = (
                    f"instance stayed busy ({_BUSY_WORDS[self.plan.api]}) "
                    f"for over {self.options.wait_timeout:g}s"
                )

    def _settle(self, wave: int, uncertain: list[tuple[Binding, _Failure]]) -> list[Binding]:
        """Observe the truth for failed calls; return the bindings to retry."""
        keys = {b[0] for b, _ in uncertain}
        instances = {b[1] for b, _ in uncertain}
        observed = observe_subset(self.client, self.plan.region, keys, instances)
        retry: list[Binding] = []
        for binding, error in uncertain:
            track = self._track(binding)
            pair = observed.keys.get(binding[0])
            if pair is None or binding[1] not in pair.bound_instance_ids:
                self._set_outcome(track, Outcome.DONE)
                continue
            track.code = error.code if isinstance(error.code, int) else None
            instance = observed.instances.get(binding[1])
            # Busy (status 20) passes: the instance still reports its old keys until the other
            # operation ends, and may be idle again by the retry; only the attempt budget ends it.
            busy = instance is not None and instance.state is InstanceState.BUSY
            reason = None if busy else blocked_reason(instance, self.plan.region)
            if reason is not None:
                self._set_outcome(track, Outcome.FAILED)
                track.reason = f"{reason} ({error.message})"
            elif error.kind is ApiErrorKind.AUTH or (
                error.kind is ApiErrorKind.BLOCKED and error.instances == 1 and not busy
            ):
                # A refusal of this instance alone (or of the identity): not attempted again.
                self._set_outcome(track, Outcome.FAILED)
                track.reason = error.message
            elif track.attempts >= self.options.max_attempts:
                self._set_outcome(track, Outcome.FAILED)
                # The attempts are in the record (and the renderers say "after N attempts").
                track.reason = error.message
            else:
                if error.kind is ApiErrorKind.BLOCKED:
                    # The whole call fails when one of its instances is refused: find out which.
                    self._alone.add(binding[1])
                retry.append(binding)
        if retry:
            self._emit(EventKind.RETRY, wave, f"retrying {plural(len(retry), 'unbind')} still bound")
        return retry

    def _verify(self) -> None:
        attempted = [b for b, t in self._state.tracks.items() if t.outcome is Outcome.DONE]
        if not attempted:
            return
        self._emit(EventKind.VERIFY, -1, f"verifying {plural(len(attempted), 'unbind')}")
        observed = observe_subset(self.client, self.plan.region, {k for k, _ in attempted}, ())
        for key_id, iid in attempted:
            pair = observed.keys.get(key_id)
            if pair is not None and iid in pair.bound_instance_ids:
                track = self._track((key_id, iid))
                self._set_outcome(track, Outcome.FAILED)
                track.reason = "the API accepted the unbind but the binding is still there"
                if iid in self._op_problems:
                    track.reason += f" ({self._op_problems[iid]})"

    # ------------------------------------------------------------------ helpers

    def _track(self, binding: Binding) -> _Track:
        return self._state.tracks[binding]

    def _set_outcome(self, track: _Track, outcome: Outcome | None) -> None:
        # Counted here: every event reports how many are done, and counting them anew each
        # time was quadratic (8 million steps for an apply of 7,000 bindings).
        with self._state.lock:
            self._state.done += (outcome is Outcome.DONE) - (track.outcome is Outcome.DONE)
            track.outcome = outcome

    def _emit(self, kind: EventKind, wave: int, message: str) -> None:
        self.on_event(ExecEvent(kind, wave, message, bindings_done=self._state.done, calls=self._state.calls))

    def _result(self) -> ApplyResult:
        results: list[BindingResult] = []
        for change in self.plan.changes:
            binding = (change.key_id, change.instance_id)
            if change.status is ChangeStatus.BLOCKED:
                results.append(BindingResult(*binding, Outcome.BLOCKED, change.reason))
            elif change.status is ChangeStatus.PROTECTED:
                results.append(BindingResult(*binding, Outcome.PROTECTED, change.reason))
            elif change.status is ChangeStatus.UNCHANGEABLE:
                results.append(BindingResult(*binding, Outcome.UNCHANGEABLE, change.reason))
            else:
                track = self._track(binding)
                if track.outcome is None:
                    results.append(
                        BindingResult(
                            *binding,
                            Outcome.NOT_ATTEMPTED,
                            track.reason or "not attempted",
                            None,
                            track.attempts,
                        )
                    )
                else:
                    results.append(
                        BindingResult(*binding, track.outcome, track.reason, track.code, track.attempts)
                    )
        return ApplyResult(
            region=self.plan.region,
            results=tuple(results),
            calls=dict(self.client.calls),
            interrupted=self._state.interrupted,
            stopped_reason=self._state.aborted or "",
        )
