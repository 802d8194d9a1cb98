"""Moving h11 events over asyncio streams: the API gateway's read loop and write step."""

from __future__ import annotations

import asyncio
from typing import Any

import h11

from claude_bottle.bundle.proxy import READ_SIZE


async def next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> Any:
    """The next h11 event, reading as needed; each read must arrive within `timeout`."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(timeout):  # a timer, not a task per read as wait_for costs
            data = await reader.read(READ_SIZE)
        conn.receive_data(data)


def idle_and_open(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """A client connection between exchanges, not closed by either side as far as we know:
    one a next request may go out on."""
    return (
        conn.our_state is h11.IDLE
        and conn.their_state is h11.IDLE
        and not writer.is_closing()
        and not reader.at_eof()
    )


async def send_event(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()
