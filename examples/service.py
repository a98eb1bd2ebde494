"""A request/response service: one server answers, many clients ask at once.

    python examples/service.py serve 127.0.0.1:4000        # until Ctrl-C
    python examples/service.py ask 127.0.0.1:4000 --count 50

A request is JSON, {"op": "add", "args": [numbers]} or {"op": "upper", "args": "text"}; its reply
is {"result": ...}, or {"error": "..."} for a request the server cannot answer. The server
answers each request in a task of its own, so that no request waits behind another; a client
sends all its requests at once and checks every reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from typing import Any

import qp2p

OPERATIONS: dict[str, Any] = {"add": sum, "upper": str.upper}
ANSWERING = 100  # requests answered at once; the next waits for a place


async def answer(request: qp2p.Message, places: asyncio.Semaphore) -> None:
    try:
        asked = json.loads(request.data)
        reply = {"result": OPERATIONS[asked["op"]](asked["args"])}
    except (ValueError, KeyError, TypeError) as exc:  # not JSON, no such operation, bad args
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        await request.reply(json.dumps(reply).encode())
    except qp2p.Error as exc:  # the client left before its reply: the others go on
        print(f"cannot reply: {exc}", file=sys.stderr)
    finally:
        places.release()


async def serve(host: str, port: int) -> None:
    served, clients, places = 0, set[str](), asyncio.Semaphore(ANSWERING)
    async with qp2p.Endpoint(qp2p.Config(local_ip=host, local_port=port)) as endpoint:
        print("serving on {}:{}".format(*endpoint.local_addr), flush=True)
        try:
            async with asyncio.TaskGroup() as answering:
                async for message in endpoint.incoming_messages():
                    if message.is_request:
                        await places.acquire()
                        answering.create_task(answer(message, places))
                        served += 1
                        clients.add(message.peer_id)
        finally:
            print(f"served {served} requests from {len(clients)} clients", flush=True)


async def ask(host: str, port: int, count: int) -> int:
    """Send ``count`` sums, ``count`` words and one unknown operation; 0 if every reply is right."""
    sums = [[random.randint(-99, 99) for _ in range(i % 5)] for i in range(count)]
    words = [f"word {i}" for i in range(count)]
    questions = [{"op": "add", "args": s} for s in sums] + [{"op": "upper", "args": w} for w in words]
    expected = [{"result": sum(s)} for s in sums] + [{"result": w.upper()} for w in words]
    questions.append({"op": "divide", "args": [1, 0]})
    expected.append({"error": "KeyError: 'divide'"})
    async with qp2p.Endpoint(qp2p.Config(local_ip="0.0.0.0")) as endpoint:
        connection = await endpoint.connect_to((host, port))
        replies = await asyncio.gather(
            *(connection.request(json.dumps(question).encode(), timeout=30) for question in questions)
        )
    right = sum(json.loads(reply) == want for reply, want in zip(replies, expected, strict=True))
    print(f"{right} of {len(questions)} replies right", flush=True)
    return 0 if right == len(questions) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="A qp2p request/response service and its client.")
    parser.add_argument("command", choices=["serve", "ask"])
    parser.add_argument("addr", help="HOST:PORT to serve on, or of the server")
    parser.add_argument("--count", type=int, default=50, help="requests of each kind a client sends")
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    if args.command == "ask":
        return asyncio.run(ask(host, int(port), args.count))
    try:
        asyncio.run(serve(host, int(port)))
    except KeyboardInterrupt:  # Ctrl-C: the way a server stops
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
