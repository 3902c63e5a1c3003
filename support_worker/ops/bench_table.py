"""The benchmark's table (`support-worker bench`): each goal (issues 12 and 19) beside what
`bench.run_bench` measured, with "met" or "NOT met"."""

from __future__ import annotations

from typing import Any

# "Flat" cost per email from 50 to 500 in flight: within 20%, our reading of issue 12's goal.
GOALS = {
    "flat": 1.2,
    # Issue 19's goals plus one call each for the course's `save-draft-reply` step (issue 20).
    "plain": 3,
    "approved": 6,
    "decision": 2,
    "ten_turns": 3,
    "cpu_growth": 12.0,  # host CPU, 10-turn email / 1-turn email: linear
    "inline_1": 2.0,  # durable host CPU / in-process at 1 turn
    "inline_10": 1.5,  # ... and at 10 turns
    "output_bytes": 8 * 1024,
    "fanout_bytes": 64 * 1024,
    "fanout_calls": 15,
    "rss_mb": 200,
}
EMAILS_A_DAY = 1_000_000


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _email_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for kind, (calls, size, largest) in r["kinds"].items():
        goal = {
            "plain": f"<= {GOALS['plain']} calls: {_verdict(calls <= GOALS['plain'])}",
            "approved": f"<= {GOALS['approved']} calls: {_verdict(calls <= GOALS['approved'])}",
        }
        label = "100 KB body, inline in the event" if kind == "big" else kind
        rows.append(
            (
                f"email {label}",
                f"{calls} calls, {size / 1024:.1f} KB, largest {largest / 1024:.1f} KB",
                goal.get(kind, ""),
            )
        )
    hook = r["webhook"]
    rows.append(
        (
            "email 100 KB body, through the webhook",
            f"webhook {hook['webhook_bytes'] / 1024:.1f} KB in, event {hook['event_bytes'] / 1024:.1f} KB; "
            f"{hook['calls']} calls, {hook['bytes'] / 1024:.1f} KB, largest {hook['largest'] / 1024:.1f} KB",
            "",
        )
    )
    return rows


def _burst_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    small, burst = r["burst_small"], r["burst"]
    growth = burst["cpu_ms_per_email"] / small["cpu_ms_per_email"]
    ok = all(b["errors"] == 0 and b["duplicates"] == 0 for b in (small, burst))
    return [
        (f"burst {burst['emails']} emails at the engine's limits, pool 5", f"{burst['per_second']:.1f} emails/s", ""),
        *(
            (
                f"cost per email, burst of {b['emails']}" + (f" (median of {b['runs']})" if "runs" in b else ""),
                f"{b['cpu_ms_per_email']:.1f} ms CPU (host and driver), {b['wall_ms_per_email']:.1f} ms wall",
                "",
            )
            for b in (small, burst)
        ),
        (
            f"cost per email, {burst['emails']} against {small['emails']} (CPU)",
            f"{growth:.2f}x",
            f"flat (<= {GOALS['flat']}x): {_verdict(growth <= GOALS['flat'])}",
        ),
        (
            "burst errors / duplicates (both bursts)",
            f"{small['errors'] + burst['errors']} / {small['duplicates'] + burst['duplicates']}",
            f"0 / 0: {_verdict(ok)}",
        ),
        (
            "burst RSS peak (bench process)",
            f"{burst['rss_mb']:.0f} MB",
            f"<= 200 MB: {_verdict(burst['rss_mb'] <= 200)}",
        ),
        ("burst Postgres connections high-water", f"{burst['pg_high']}", f"<= 5: {_verdict(burst['pg_high'] <= 5)}"),
    ]


def growth_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The growth table (1, 3, 6, 10 turns), the ratios the goals name, executions per day."""
    growth = r["growth"]
    rows = [
        (
            f"email of {turns} turn(s): calls, host CPU, bytes",
            f"{g['calls']} calls, {g['cpu_ms']:.1f} ms CPU, {g['bytes'] / 1024:.1f} KB;"
            f" in-process {g['inline_cpu_ms']:.1f} ms CPU",
            f"<= {GOALS['ten_turns']} calls: {_verdict(g['calls'] <= GOALS['ten_turns'])}" if turns == 10 else "",
        )
        for turns, g in sorted(growth.items())
    ]
    one, ten = growth[1], growth[10]
    cpu_growth = ten["cpu_ms"] / one["cpu_ms"]
    inline_1, inline_10 = one["cpu_ms"] / one["inline_cpu_ms"], ten["cpu_ms"] / ten["inline_cpu_ms"]
    decision, largest = r["decision_calls"], r["largest_output"]
    rows += [
        (
            "host CPU, 10 turns / 1 turn",
            f"{cpu_growth:.2f}x (bytes {ten['bytes'] / one['bytes']:.2f}x)",
            f"<= {GOALS['cpu_growth']:g}x: {_verdict(cpu_growth <= GOALS['cpu_growth'])}",
        ),
        (
            "durable / in-process host CPU, 1 turn",
            f"{inline_1:.2f}x",
            f"<= {GOALS['inline_1']:g}x: {_verdict(inline_1 <= GOALS['inline_1'])}",
        ),
        (
            "durable / in-process host CPU, 10 turns",
            f"{inline_10:.2f}x",
            f"<= {GOALS['inline_10']:g}x: {_verdict(inline_10 <= GOALS['inline_10'])}",
        ),
        (
            "largest step output (any email above)",
            f"{largest / 1024:.1f} KB",
            f"<= 8 KB: {_verdict(largest <= GOALS['output_bytes'])}",
        ),
        ("decision's own run", f"{decision} calls", f"<= 2 calls: {_verdict(decision <= GOALS['decision'])}"),
    ]
    plain, refund = r["kinds"]["plain"][0], r["kinds"]["approved"][0]
    per_day = [("plain", plain), ("approved refund (with its decision)", refund + decision), ("10-turn", ten["calls"])]
    rows += [
        (f"executions per {EMAILS_A_DAY:,} emails, {label}", f"{calls * EMAILS_A_DAY:,}", "")
        for label, calls in per_day
    ]
    return rows


def table(r: dict[str, Any]) -> str:
    """One table, each goal beside what was measured."""
    pc, fan = r["per_call"], r["fan_out"]
    ratio = pc["host_p50"] / pc["bare_p50"]
    rows = [
        ("per-call host p50 / p95", f"{pc['host_p50'] * 1000:.2f} / {pc['host_p95'] * 1000:.2f} ms", ""),
        ("per-call bare p50 / p95", f"{pc['bare_p50'] * 1000:.2f} / {pc['bare_p95'] * 1000:.2f} ms", ""),
        ("ratio host/bare (p50)", f"{ratio:.2f}x", "(goal retired: issue 19)"),
        *_email_rows(r),
        *growth_rows(r),
        *_burst_rows(r),
        (
            f"fan-out {fan['customers']} customers",
            f"{fan['calls']} calls, largest request {fan['largest'] / 1024:.1f} KB",
            f"<= 15 calls, <= 64 KB: {_verdict(fan['calls'] <= 15 and fan['largest'] <= GOALS['fanout_bytes'])}",
        ),
    ]
    if "import_s" in r:
        rows += [
            ("import inngest_app (fresh interpreter)", f"{r['import_s']:.2f} s", ""),
            ("launch to /readyz (uvicorn subprocess)", f"{r['launch_s']:.2f} s", ""),
        ]
    width = max(len(a) for a, _, _ in rows)
    mwidth = max(len(b) for _, b, _ in rows)
    lines = [
        f"| {'measure'.ljust(width)} | {'measured'.ljust(mwidth)} | goal |",
        f"| {'-' * width} | {'-' * mwidth} | --- |",
    ]
    lines += [f"| {a.ljust(width)} | {b.ljust(mwidth)} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
