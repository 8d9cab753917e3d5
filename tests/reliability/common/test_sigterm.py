"""SIGTERM to a consumer process mid-work on the in-memory bus: it exits 0 and no message is lost."""

from __future__ import annotations

from tests.reliability.common.consumer_process import assert_stopped_without_loss, run_and_terminate


async def test_sigterm_mid_work_on_the_memory_bus_loses_nothing() -> None:
    run = await run_and_terminate({"TIBRIDGE_BUS": "memory"}, publish_itself=True)
    assert_stopped_without_loss(run, left=run.reported("left"), dead=run.reported("dead"))
    assert ["exit", "0"] in run.lines
