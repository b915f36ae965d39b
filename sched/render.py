"""Rich rendering for the CLI; data comes from report.py and api.py."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from simpletvm.stages import StageKind

# C0 and C1 controls (escape sequences), zero-width and bidirectional-override characters
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def printable(value: Any, *, keep: str = "") -> str:
    """``str(value)`` with control characters shown escaped (``\\x1b``), so text from a
    user (a job name, a path) cannot drive the terminal; ``keep``: characters left as
    they are (newlines of a log)."""
    return _UNSAFE.sub(
        lambda m: m[0] if m[0] in keep else m[0].encode("unicode_escape").decode("ascii"),
        str(value),
    )


def plain(value: Any) -> str:
    """Text for a Rich cell or line: control characters and Rich markup shown escaped."""
    return escape(printable(value))


def _progress(job: dict[str, Any]) -> str:
    if job.get("trials_total"):
        return f"{job['trials_done'] or 0}/{job['trials_total']}"
    return "-"


def _latency(value: float | None) -> str:
    return f"{value:.3f} ms" if value is not None else "-"


def ms(value: float | None) -> str:
    """Milliseconds to 4 significant digits (0.001234, 0.1235, 12.35, 1235)."""
    return "-" if value is None else f"{value:.4g}"


def model_ms_text(job: dict[str, Any]) -> str:
    """The jobs table's ``model ms`` cell: measured, evaluated, or an estimate (``~``)."""
    value, what = job.get("model_ms"), job.get("model_ms_is")
    if value is None:
        return "-"
    return f"~{ms(value)} (est.)" if what == "estimate" else ms(value)


def sla_text(sla: dict[str, Any] | None) -> str:
    """``target 1.000 ms, best 0.800 ms (met), trend 1.2 > 0.9 > 0.8``."""
    if not sla:
        return "-"
    text = f"target {_latency(sla['sla_ms'])}, best {_latency(sla['best_ms'])}"
    if sla["met"] is not None:
        text += " (met)" if sla["met"] else " (not met)"
    if sla["trend"]:
        text += ", trend " + " > ".join(f"{v:.3g}" for v in sla["trend"])
    if sla.get("stop_reason"):
        text += f", stopped: {sla['stop_reason']}"
    return text


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title="jobs", title_justify="left")
    with_sla = any(job.get("sla") for job in jobs)
    with_host = any(job.get("host") for job in jobs)
    columns = ["id", "name", "state", "stage", "reason", "progress", "model ms", "retries"]
    for column in columns + (["sla"] if with_sla else []) + (["host"] if with_host else []):
        table.add_column(column, overflow="fold")
    for job in jobs:
        reason = job.get("wait_reason") or job.get("error") or ""
        row = [
            str(job["id"]),
            str(job["name"]),
            str(job["state"]),
            job.get("stage") or "-",
            reason,
            _progress(job),
            model_ms_text(job),
            str(job["retries"]),
        ]
        row += [sla_text(job.get("sla"))] if with_sla else []
        row += [job.get("host") or "(daemon)"] if with_host else []
        table.add_row(*map(plain, row))
    return table


def rpc_address(rpc: dict[str, Any]) -> str:
    if "server" in rpc:
        return f"server {rpc['server']}"
    return f"tracker {rpc['tracker']}, key {rpc['key']}"


def devices_table(devices: list[dict[str, Any]]) -> Table | str:
    if not devices:
        return "no remote devices (add one with: sched device add NAME --server HOST:PORT)"
    table = Table(title="remote devices", title_justify="left")
    for column in ("name", "kind", "address", "state", "held by"):
        table.add_column(column, overflow="fold")
    for device in devices:
        if device["up"]:
            state = "up"
        else:
            since = dt.datetime.fromtimestamp(device["down_since"]).strftime("%H:%M:%S")
            state = f"down since {since}: {device['down_reason']}"
        held = device.get("held_by")
        cells = (device["name"], device["kind"], rpc_address(device["rpc"]), state,
                 f"job {held}" if held else "-")  # fmt: skip
        table.add_row(*map(plain, cells))
    return table


def status_view(report: dict[str, Any]) -> Group:
    daemon = report["daemon"]
    if daemon["running"]:
        where = " (on another host)" if daemon.get("elsewhere") else ""
        head = (f"daemon pid {daemon['pid']}{where}, strategy {daemon['strategy']}, "
                f"db {report['db']}")  # fmt: skip
    else:
        head = f"no daemon runs for {report['db']} (start one with: sched start)"
    head = plain(head)
    resources = Table(title="resources", title_justify="left")
    for column in ("name", "kind", "capacity", "held by", "busy"):
        resources.add_column(column)
    for res in report["resources"]:
        held = ", ".join(
            f"job {h['job_id']} {h['stage']}"
            + ("" if h["running"] else " (granted)")
            + (f" x{h['amount']}" if h["amount"] != 1 else "")
            for h in res["holders"]
        )
        if res.get("down"):
            held = f"DOWN: {res['down']}" + (f"; {held}" if held else "")
        kind = f"remote:{res['device_kind']}" if res.get("device_kind") else res["kind"]
        cells = (res["name"], kind, res["capacity"], held or "idle", f"{res['busy']:.0%}")
        resources.add_row(*map(plain, cells))
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    parts: list[Any] = [head, resources]
    if report.get("hosts"):
        hosts = Table(title="agents' hosts", title_justify="left")
        for column in ("name", "state", "pid", "last heartbeat"):
            hosts.add_column(column)
        for host in report["hosts"]:
            state = host["state"] + (f": {host['reason']}" if host.get("reason") else "")
            beat = f"{host['heartbeat_age_s']:.1f} s ago"
            hosts.add_row(*map(plain, (host["name"], state, str(host["pid"]), beat)))
        parts.append(hosts)
    return Group(*parts, jobs_table(report["jobs"]), counts or "no jobs")


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(title="events", title_justify="left")
    for column in ("time", "event", "stage", "epoch", "resources", "detail"):
        table.add_column(column, overflow="fold")
    for event in events:
        when = dt.datetime.fromtimestamp(event["ts"]).strftime("%H:%M:%S.%f")[:-3]
        resources = ",".join(f"{k}:{v}" for k, v in (event["resources"] or {}).items())
        detail = "" if event["detail"] is None else str(event["detail"])
        cells = (when, event["kind"], event["stage"] or "", event["epoch"] or "", resources, detail)
        table.add_row(*map(plain, cells))
    return table


def timeline_table(rows: list[dict[str, Any]]) -> Table:
    origin = min((r["start"] for r in rows), default=0.0)
    table = Table(title="timeline (seconds since the first stage)", title_justify="left")
    for column in ("resource", "job", "stage", "start", "end"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: (r["start"], r["resource"])):
        cells = (row["resource"], row["job_id"], row["stage"], f"{row['start'] - origin:.3f}",
                 f"{row['end'] - origin:.3f}")  # fmt: skip
        table.add_row(*map(plain, cells))
    return table


def result_table(job: dict[str, Any]) -> Group:
    """A finished job's result: the latencies (ms, 4 significant digits), what was
    exported and checked, the budget, the seconds per stage on one row, then the
    convergence one round per row. ``sched result N --json`` keeps full precision."""
    result = job.get("result") or {}
    table = Table(title=f"job {job['id']} result", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for name, value in _result_rows(result):
        table.add_row(name, plain(value))
    if job.get("host"):  # its artifact is in the job's folder on that host
        table.add_row("host", plain(f"{job['host']} (an agent's host)"))
    parts: list[Any] = [table]
    convergence = result.get("convergence") or []
    if convergence:
        parts.append(_convergence_table(convergence))
    parts.append("full precision and every field: sched result --json")
    return Group(*parts)


def _result_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    tuned, untuned, ort = (result.get(k) for k in ("tuned_ms", "untuned_ms", "onnxruntime_ms"))
    spread = (result.get("tuned") or {}).get("std_ms")
    rows = [
        ("model", str(result.get("model") or "-")),
        ("target", str(result.get("target") or "-")),
        ("tuned ms", ms(tuned) + (f" ± {ms(spread)}" if spread is not None else "")),
        ("untuned ms", ms(untuned)),
        ("onnxruntime ms", ms(ort)),
        ("speed-up over untuned", f"{untuned / tuned:.2f}x" if tuned and untuned else "-"),
        ("tuned / onnxruntime", f"{tuned / ort:.2f}x" if tuned and ort else "-"),
        ("exported build", str(result.get("exported") or "-")),
        ("artifact", str(result.get("artifact") or "-")),
        ("output check", _check_text(result.get("output_check"))),
        ("trials", str(result.get("trials", "-"))),
        ("tasks", str(result.get("tasks", "-"))),
        ("served from the database", _served_text(result.get("served_from_db"))),
        ("tuning s", _seconds(result.get("tuning_seconds"))),
        ("stage s", _stages_text(result.get("stage_seconds") or {})),
    ]
    if result.get("sla_ms") is not None:
        met = "met" if result.get("sla_met") else "not met"
        rows.append(("sla", f"target {ms(result['sla_ms'])} ms, best "
                            f"{ms(result.get('best_ms'))} ms ({met})"))  # fmt: skip
    if result.get("stop_reason"):
        rows.append(("stopped", str(result["stop_reason"])))
    return [(name, value) for name, value in rows if value not in ("-", "- ms")]


def _check_text(check: dict[str, Any] | None) -> str:
    if not check:
        return "-"
    return f"{'ok' if check.get('ok') else 'FAILED'} (max error {check['max_abs_err']:.1e})"


def _served_text(served: dict[str, Any] | None) -> str:
    if not served or not served.get("records"):
        return "-"
    return f"{served['records']} records for {served.get('tasks', '?')} tasks"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _stages_text(stage_seconds: dict[str, float]) -> str:
    """``prepare 7.2, search 11.9, ...`` in the order stages run."""
    order = [k.value for k in StageKind]
    named = sorted(stage_seconds, key=lambda k: order.index(k) if k in order else len(order))
    return ", ".join(f"{k} {stage_seconds[k]:.1f}" for k in named) or "-"


def _convergence_table(points: list[dict[str, Any]]) -> Table:
    table = Table(title="convergence by round", title_justify="left")
    for column in ("round", "trials", "seconds", "model ms (est.)"):
        table.add_column(column, justify="right")
    for number, point in enumerate(points, 1):
        table.add_row(str(number), str(point.get("trials", "-")),
                      _seconds(point.get("seconds")), ms(point.get("best_ms")))  # fmt: skip
    return table
