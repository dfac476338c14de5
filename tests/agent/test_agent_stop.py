"""Agent.stop() under cancellation, against a real control plane: the `closed` report is shielded
from a cancelled caller, and the caller still ends when cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.agent.agent import Agent
from relay.control.app import ControlPlane
from tests.control.helpers import make_config, oplog, wait_for
from tests.control.test_agent import FakeRelay, agent_config, make_room


async def registered_agent(cp: ControlPlane, room: str) -> Agent:
    agent = Agent(FakeRelay(), agent_config(cp, "st", room, await make_room(cp, "st", room)))
    await agent.start()
    await asyncio.wait_for(agent.registered.wait(), 5)
    return agent


async def stop_reporting(agent: Agent) -> asyncio.Task[None]:
    """stop() as a task, once it waits for its `closed` report (the report is then in flight: an
    HTTP round trip to the control plane takes many more turns of the loop than this)."""
    stopping = asyncio.create_task(agent.stop())
    await wait_for(lambda: agent.closed_reason is not None, timeout=5, interval=0)
    return stopping


async def test_a_cancelled_stop_ends_cancelled_while_its_closed_report_goes_on(tmp_path: Path) -> None:
    """Found in review: stop() swallowed its own cancellation while it waited for the report and
    went on (closing the client under the report in flight): a cancelled task that does not end
    hangs whoever waits for it (a shutdown, a TaskGroup)."""
    async with ControlPlane(make_config(tmp_path, provisioner="none")) as cp:
        agent = await registered_agent(cp, "r")
        stopping = await stop_reporting(agent)
        stopping.cancel()
        await asyncio.wait({stopping}, timeout=5)
        assert stopping.cancelled()
        # The report was not cancelled with it: the control plane hears it and closes the room.
        closed = await wait_for(lambda: [e for e in oplog(cp) if e["event"] == "room.closed"], timeout=5)
        assert [(e["roomName"], e["reason"]) for e in closed] == [("r", "shutdown")]
        assert await cp.store.get_room("st", "r") is None
        await asyncio.wait_for(agent.stop(), 5)  # a later stop finds the report done and ends


async def test_stop_goes_on_when_its_closed_report_is_cancelled(tmp_path: Path) -> None:
    """The report cancelled by someone else (a loop shutting down cancels every task) is not the
    caller's cancellation: stop() still closes the client and returns."""
    async with ControlPlane(make_config(tmp_path, provisioner="none")) as cp:
        agent = await registered_agent(cp, "r")
        stopping = await stop_reporting(agent)
        report = agent._closed_report
        assert report is not None and not report.done()
        report.cancel()
        await asyncio.wait_for(stopping, 5)  # returns: not cancelled, no error
        assert report.cancelled()
