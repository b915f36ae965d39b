"""Rich rendering for the CLI; data comes from report.py and api.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group
from rich.table import Table


def _progress(job: dict[str, Any]) -> str:
    if job.get("trials_total"):
        return f"{job['trials_done'] or 0}/{job['trials_total']}"
    return "-"


def _latency(value: float | None) -> str:
    return f"{value:.3f} ms" if value is not None else "-"


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
    columns = ["id", "name", "state", "stage", "reason", "progress", "best", "retries"]
    for column in columns + (["sla"] if with_sla else []):
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
            _latency(job.get("best_latency_ms")),
            str(job["retries"]),
        ]
        table.add_row(*row, *([sla_text(job.get("sla"))] if with_sla else []))
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
        table.add_row(
            device["name"],
            device["kind"],
            rpc_address(device["rpc"]),
            state,
            f"job {held}" if held else "-",
        )
    return table


def status_view(report: dict[str, Any]) -> Group:
    daemon = report["daemon"]
    if daemon["running"]:
        head = f"daemon pid {daemon['pid']}, strategy {daemon['strategy']}, db {report['db']}"
    else:
        head = f"no daemon runs for {report['db']} (start one with: sched start)"
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
        resources.add_row(
            res["name"], kind, str(res["capacity"]), held or "idle", f"{res['busy']:.0%}"
        )
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    return Group(head, resources, jobs_table(report["jobs"]), counts or "no jobs")


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(title="events", title_justify="left")
    for column in ("time", "event", "stage", "epoch", "resources", "detail"):
        table.add_column(column, overflow="fold")
    for event in events:
        when = dt.datetime.fromtimestamp(event["ts"]).strftime("%H:%M:%S.%f")[:-3]
        resources = ",".join(f"{k}:{v}" for k, v in (event["resources"] or {}).items())
        detail = "" if event["detail"] is None else str(event["detail"])
        table.add_row(
            when, event["kind"], event["stage"] or "", str(event["epoch"] or ""), resources, detail
        )
    return table


def timeline_table(rows: list[dict[str, Any]]) -> Table:
    origin = min((r["start"] for r in rows), default=0.0)
    table = Table(title="timeline (seconds since the first stage)", title_justify="left")
    for column in ("resource", "job", "stage", "start", "end"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: (r["start"], r["resource"])):
        table.add_row(
            row["resource"],
            str(row["job_id"]),
            row["stage"],
            f"{row['start'] - origin:.3f}",
            f"{row['end'] - origin:.3f}",
        )
    return table


def result_table(job: dict[str, Any]) -> Table:
    table = Table(title=f"job {job['id']} result", title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in (job.get("result") or {}).items():
        if key.endswith("_ms") and isinstance(value, int | float):
            value = _latency(value)
        table.add_row(key, str(value))
    return table
