"""What an endpoint tells its operator, over real sockets on 127.0.0.1: qlog traces, the
counters and gauges of ``Endpoint.stats()``, and log records that name their peer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

import qp2p

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]


async def received(endpoint: qp2p.Endpoint, count: int) -> list[qp2p.Message]:
    """The next ``count`` messages ``endpoint`` receives."""
    messages = []
    async with asyncio.timeout(10):
        async for message in endpoint.incoming_messages():
            messages.append(message)
            if len(messages) == count:
                return messages
    raise AssertionError("the endpoint closed")


# ---- qlog ----------------------------------------------------------------------------------


def traces(folder: Path) -> dict[str, dict[str, Any]]:
    """The qlog traces in ``folder``, by file name."""
    found = {}
    for path in folder.iterdir():
        document = json.loads(path.read_text())
        (trace,) = document["traces"]
        found[path.name] = trace
    return found


async def test_qlog_writes_one_trace_per_connection(make_endpoint: MakeEndpoint, tmp_path: Path) -> None:
    a = await make_endpoint(qlog_dir=str(tmp_path / "a"))
    b = await make_endpoint(qlog_dir=tmp_path / "b")  # a Path will do
    connection = await a.connect_to(b.local_addr)
    link = connection.current_link
    assert link is not None
    odcid = link.session.quic.original_destination_connection_id.hex()
    await connection.send(b"traced")
    await received(b, 1)
    await connection.close()
    # Our side wrote its trace as it dropped the link; the peer's ends after its draining period.
    await wait_until(lambda: any((tmp_path / "b").iterdir()), timeout=10)

    for side, vantage in (("a", "client"), ("b", "server")):
        (name, trace) = traces(tmp_path / side).popitem()
        assert name == f"{odcid}.qlog"
        assert trace["common_fields"]["ODCID"] == odcid
        assert trace["vantage_point"]["type"] == vantage
        names = {event["name"] for event in trace["events"]}
        assert {"transport:packet_sent", "transport:packet_received"} <= names


async def test_qlog_traces_of_links_the_endpoint_drops_are_written(
    make_endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    a = await make_endpoint(qlog_dir=str(tmp_path / "a"))
    b = await make_endpoint()
    for _ in range(2):
        connection = await a.connect_to(b.local_addr)
        await connection.close()
    await a.close()  # every link dropped at once: none waits for its closing period
    assert len(traces(tmp_path / "a")) == 2


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "empty"])
def test_qlog_dir_must_be_a_folder_we_can_write(tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    folder = {"a-file": str(a_file), "under-a-file": str(a_file / "qlog"), "empty": ""}[where]
    with pytest.raises(qp2p.ConfigError, match="qlog_dir"):
        qp2p.Config(qlog_dir=folder)


def test_qlog_dir_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "qlog"
    config = qp2p.Config.from_env({"QP2P_QLOG_DIR": str(folder)})
    assert config.qlog_dir == str(folder)
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
