"""Moving h11 events over asyncio streams: the one read loop and write step every layer uses."""

from __future__ import annotations

import asyncio
from typing import Any

import h11

READ_SIZE = 256 * 1024


async def next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> Any:
    """The next h11 event, reading as needed; each read must arrive within `timeout`."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(timeout):  # a timer, not a task per read as wait_for costs
            data = await reader.read(READ_SIZE)
        conn.receive_data(data)


async def send_event(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()
