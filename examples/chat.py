"""Chat between two peers: each line typed is sent to the other side, each line received is printed.

One side listens, the other connects to the address the first one printed:

    python examples/chat.py --listen 127.0.0.1:4000
    python examples/chat.py --connect 127.0.0.1:4000

End input (Ctrl-D) to leave; the other side then sees ``* peer left`` and exits too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

import qp2p


def address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as the tuple qp2p takes."""
    host, _, port = text.rpartition(":")
    return host, int(port)


def read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """In a thread, so that a blocking read never holds the event loop: each line, then None at the end."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
    loop.call_soon_threadsafe(lines.put_nowait, None)


async def type_lines(connection: qp2p.Connection) -> None:
    """Send each line typed, until the end of input or until the peer leaves."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=read_stdin, args=(asyncio.get_running_loop(), lines), daemon=True).start()
    while (line := await lines.get()) is not None:
        if line:  # a message is never empty
            try:
                # Order is kept within a lane: pin every line to one, so they arrive in order.
                await connection.send(line.encode(), lane=1)
            except qp2p.ConnectionError:  # the peer left: print_lines' side says so
                return


async def print_lines(endpoint: qp2p.Endpoint) -> None:
    """Print each line the peer sends; a line that could drive the terminal is shown escaped."""
    async for message in endpoint.incoming_messages():
        text = bytes(message.data).decode(errors="replace")
        print(f"< {text if text.isprintable() else repr(text)}", flush=True)


async def chat(args: argparse.Namespace) -> None:
    host, port = args.listen or ("0.0.0.0", 0)  # a connecting side binds every interface, any port
    async with qp2p.Endpoint(qp2p.Config(local_ip=host, local_port=port)) as endpoint:
        if args.connect:
            connection = await endpoint.connect_to(args.connect)
        else:
            print("* listening on {}:{}".format(*endpoint.local_addr), flush=True)
            connection = await anext(endpoint.incoming_connections())
        print("* connected to {}:{}".format(*connection.remote_addr), flush=True)
        printing = asyncio.create_task(print_lines(endpoint))
        typing = asyncio.create_task(type_lines(connection))
        closed = asyncio.create_task(connection.wait_closed())
        await asyncio.wait([typing, closed], return_when=asyncio.FIRST_COMPLETED)
        peer_left = connection.is_closed
        typing.cancel()
        closed.cancel()
        await asyncio.gather(typing, closed, return_exceptions=True)
        if not typing.cancelled():
            typing.result()  # an unexpected error while typing is raised, not swallowed
        # Closing delivers the lines we sent first; then print_lines shows what came and ends.
        await endpoint.close()
        await printing
        if peer_left:
            print("* peer left", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Chat with one peer over qp2p.")
    side = parser.add_mutually_exclusive_group(required=True)
    side.add_argument("--listen", type=address, metavar="HOST:PORT", help="wait for the peer here")
    side.add_argument("--connect", type=address, metavar="HOST:PORT", help="the listening peer")
    asyncio.run(chat(parser.parse_args()))


if __name__ == "__main__":
    main()
