"""The stop schedule and what apply did with it, as text and Markdown (docs/disruption.md).
Pure: returns strings and lines.

Called by ``render.text`` and ``render.markdown`` (one call each for the plan and for the
result); JSON carries the schedule as the plan document has it (``core.document``). Every
cloud-supplied string (instance names, notes with API messages) goes through the renderers'
``clean`` / ``escape``.
"""

from __future__ import annotations

from reconciler.common import plural
from reconciler.model import ApplyResult, Plan, StopSchedule, StopType
from reconciler.render._sanitize import clean

MARKDOWN_LISTED = 50  # scheduled instances listed in a PR comment before "and N more"

_STOP_WORD = {
    StopType.SOFT: "soft stop",
    StopType.SOFT_FIRST: "soft stop, forced after the timeout",
    StopType.HARD: "forced stop",
}


def duration(seconds: float) -> str:
    """``45 s``, ``6 min``, ``2 h 5 min``: the precision an estimate deserves."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def stops_sentence(schedule: StopSchedule) -> str:
    """``5 instances go down, at most 2 at once (max_stopped 2), 3 rounds, about 6 min (at most
    17 min); 12 instance-minutes of downtime; durations assumed: stop 60 s, unbind 15 s, start
    60 s.``"""
    d = schedule.durations
    stop_time = d.stop(schedule.stop_type or StopType.SOFT_FIRST)
    downtime = schedule.total_downtime / 60
    return (
        f"{plural(schedule.stop_count, 'instance')} {'goes' if schedule.stop_count == 1 else 'go'} down, "
        f"at most {schedule.budget} at once "
        f"({schedule.budget_reason}), {plural(len(schedule.rounds), 'round')}, "
        f"about {duration(schedule.rolling_estimate)} (at most {duration(schedule.worst_wall_time)}); "
        f"{downtime:.0f} instance-minutes of downtime; durations assumed: stop {stop_time:g} s, "
        f"unbind {d.unbind:g} s, start {d.start:g} s."
    )


def _how(schedule: StopSchedule) -> str:
    word = _STOP_WORD.get(schedule.stop_type or StopType.SOFT_FIRST, "stop")
    return f"{word}; waits {schedule.stop_timeout} s for a stop; StoppedMode KEEP_CHARGING"


def plan_stops_lines(plan: Plan) -> list[str]:
    """The plan's "Stops" section for a terminal; empty without a schedule. With a
    ``disruption`` block that schedules nothing, one line says so."""
    schedule = plan.stops
    if schedule is None:
        return []
    if not schedule.stops:
        return ["", "Stops: none (disruption allows them; no running instance needs one)."]
    lines = ["", f"Stops (stop -> unbind -> start; {_how(schedule)}):", "  " + stops_sentence(schedule)]
    for round_ in schedule.rounds:
        count = plural(len(round_.instance_ids), "instance")
        lines.append(f"  round {round_.index + 1}: {count}, about {duration(round_.duration)}")
    id_width = max(len(clean(s.instance_id)) for s in schedule.stops)
    for stop in schedule.stops:
        keys = ", ".join(clean(k) for k in stop.key_ids)
        name = clean(stop.instance_name, 32)
        line = (
            f"    {clean(stop.instance_id).ljust(id_width)}  {name}  round {stop.round + 1}: "
            f"stop -> unbind {keys} -> start; down about {duration(stop.downtime)} "
            f"(at most {duration(stop.worst_downtime)})"
        )
        if stop.removes_last_key:
            line += "; removes its last key"
        lines.append(line)
    if schedule.max_stops is not None:
        lines.append(f"  max_stops {schedule.max_stops}")
    return lines


def plan_stops_markdown(plan: Plan) -> str:
    """The plan's stops for a PR comment (``""`` without a schedule): the sentence, then the
    instances in a collapsed list, at most ``MARKDOWN_LISTED`` of them."""
    schedule = plan.stops
    if schedule is None:
        return ""
    if not schedule.stops:
        return "**Stops:** none (the disruption block allows them; no running instance needs one).\n\n"
    text = f"#### Stops ({schedule.stop_count:,})\n\n" + _md(stops_sentence(schedule)) + "\n"
    text += f"Each: stop -> unbind -> start ({_md(_how(schedule))}).\n\n"
    text += "<details><summary>Instances that go down</summary>\n\n"
    text += "| Round | Instance | Name | Keys unbound | Downtime |\n|---|---|---|---|---|\n"
    for stop in schedule.stops[:MARKDOWN_LISTED]:
        keys = ", ".join(f"`{_md(k)}`" for k in stop.key_ids)
        last = " (last key)" if stop.removes_last_key else ""
        text += (
            f"| {stop.round + 1} | `{_md(stop.instance_id)}` | {_md(clean(stop.instance_name, 32))} | "
            f"{keys}{last} | {duration(stop.downtime)} |\n"
        )
    if schedule.stop_count > MARKDOWN_LISTED:
        text += f"\n... and {schedule.stop_count - MARKDOWN_LISTED:,} more (see the plan file).\n"
    return text + "\n</details>\n\n"


def _md(text: str) -> str:
    """Table-safe Markdown: no pipes, backticks, angle brackets or newlines from the cloud."""
    out = clean(text)
    for ch, rep in (("|", "\\|"), ("`", "'"), ("<", "&lt;"), (">", "&gt;"), ("\n", " ")):
        out = out.replace(ch, rep)
    return out


def still_down_lines(result: ApplyResult) -> list[str]:
    """The first lines of a result when an instance this apply stopped is not running again."""
    if result.stops is None or not result.stops.still_down:
        return []
    count = plural(len(result.stops.still_down), "instance")
    lines = [f"STILL DOWN: {count} cvmkeys stopped did not run again:"]
    for item in result.stops.still_down:
        name = f" ({clean(item.instance_name, 32)})" if item.instance_name else ""
        lines.append(
            f"  {clean(item.instance_id)}{name} is still {clean(item.final_state) or 'down'}: "
            f"{clean(item.note)}. Start it, or apply the plan again."
        )
    return lines


def result_stops_lines(result: ApplyResult) -> list[str]:
    """What apply did to the scheduled instances, after the bindings."""
    stops = result.stops
    if stops is None or not stops.instances:
        return []
    stopped = [i for i in stops.instances if i.stopped]
    again = [i for i in stopped if i.running_again]
    lines = [
        "",
        f"Stops: {plural(len(stopped), 'instance')} stopped, {len(again)} running again; "
        f"at most {stops.max_down_at_once} down at once.",
    ]
    for item in stops.instances:
        if item.note:
            lines.append(f"  {clean(item.instance_id)}: {clean(item.note)}")
    return lines


def result_stops_markdown(result: ApplyResult) -> str:
    """For the top of a result comment: a warning block for each instance left down, then one
    line on the stops ("" without a schedule)."""
    stops = result.stops
    if stops is None or not stops.instances:
        return ""
    text = ""
    lines = still_down_lines(result)
    if lines:
        text += "> [!CAUTION]\n" + "".join(f"> {_md(line.strip())}\n" for line in lines) + "\n"
    stopped = [i for i in stops.instances if i.stopped]
    again = sum(1 for i in stopped if i.running_again)
    text += (
        f"**Stops:** {plural(len(stopped), 'instance')} stopped, {again} running again; "
        f"at most {stops.max_down_at_once} down at once.\n\n"
    )
    return text
