"""The benchmark's CI version: counts and sizes, never times (`support-worker bench --quick`)."""

from __future__ import annotations

from support_worker.ops import bench


async def test_the_quick_benchmark_meets_the_count_and_size_goals(server_url: str) -> None:
    results = await bench.run_bench(quick=True, server_url=server_url)
    kinds = results["kinds"]
    # Issue 19's engine calls: the agent runs in one step, a reviewer's decision resumes it; the
    # third call of a plain email (and sixth of a refund) is 003 D3's save-draft-reply (issue 20).
    assert kinds["plain"][0] == 3 and kinds["approved"][0] == 6 and results["decision_calls"] == 2
    assert kinds["rejected"][0] == 6 and kinds["expired"][0] == 6
    growth = results["growth"]
    assert {turns: g["calls"] for turns, g in growth.items()} == {1: 3, 3: 3, 6: 3, 10: 3}
    assert all(largest < 8 * 1024 for calls, size, largest in (kinds[k] for k in ("plain", "approved")))
    assert results["largest_output"] <= 8 * 1024  # every step output of every email measured
    fan = results["fan_out"]
    assert fan["scheduled"] >= 10_000  # every bench customer (and the paying sample ones)
    assert fan["calls"] <= 15 and fan["largest"] <= 64 * 1024
    # Mail through the webhook: the 100 KB body arrives once and is stored; the event and every
    # call to the host carry a reference (the inline case resends the body with every call).
    hook = results["webhook"]
    assert hook["webhook_bytes"] > 100_000
    assert hook["event_bytes"] < 4 * 1024
    assert hook["calls"] <= 4 and hook["largest"] < 8 * 1024
    assert kinds["big"][2] > 100_000  # the inline case, for contrast
    for burst in (results["burst_small"], results["burst"]):
        assert burst["errors"] == 0 and burst["duplicates"] == 0
        assert burst["pg_high"] <= 5
    assert (results["burst_small"]["emails"], results["burst"]["emails"]) == (10, 50)
    printed = bench.table(results)
    assert "| ratio host/bare (p50)" in printed and "| email 100 KB body, through the webhook" in printed
    assert "| cost per email, 50 against 10 (CPU)" in printed
    assert "| host CPU, 10 turns / 1 turn" in printed and "| executions per 1,000,000 emails, plain" in printed
