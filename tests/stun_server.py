"""A small STUN server (RFC 5389 Binding, with RFC 5780's CHANGE-REQUEST) for test networks.

It listens on two addresses x two ports and answers a Binding request from the socket the request
asks for: CHANGE-REQUEST's "change IP" flag answers from the other address, "change port" from the
other port. miniupnpd needs exactly this: it refuses port forwarding on a WAN address in a reserved
range such as 198.18.0.0/15 unless a STUN check shows it is not behind a filtering NAT, and that
check sends four requests (no change, change port, change IP, change both) and wants all four
answers. The answers carry XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS,
so a host can also use the server to see its own mapping.

``python stun_server.py --address 198.18.0.1 --address 198.18.0.2 --port 3478 --port 3479``
prints ``ready`` once every socket is bound and runs until it is killed (SIGTERM).
"""

from __future__ import annotations

import argparse
import ipaddress
import select
import socket
import struct

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
XOR_MAPPED_ADDRESS = 0x0020
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C
CHANGE_IP = 0x04
CHANGE_PORT = 0x02
HEADER = struct.Struct("!HHI12s")  # type, length, magic cookie, transaction id
ATTRIBUTE = struct.Struct("!HH")  # type, length
IDLE_WAIT = 1.0  # seconds; the longest single wait for a request

Address = tuple[str, int]


def _address_value(address: Address, xor_with: bytes | None = None) -> bytes:
    """The value of an IPv4 (XOR-)MAPPED-ADDRESS-style attribute."""
    packed = struct.pack("!xBH4s", 1, address[1], ipaddress.IPv4Address(address[0]).packed)
    if xor_with is None:
        return packed
    return packed[:2] + bytes(a ^ b for a, b in zip(packed[2:], xor_with, strict=True))


def _attribute(kind: int, value: bytes) -> bytes:
    return ATTRIBUTE.pack(kind, len(value)) + value + bytes(-len(value) % 4)


def parse_request(data: bytes) -> tuple[bytes, int] | None:
    """(transaction id, CHANGE-REQUEST flags) of a Binding request; None for anything else."""
    if len(data) < HEADER.size:
        return None
    kind, length, cookie, transaction = HEADER.unpack_from(data)
    if kind != BINDING_REQUEST or cookie != MAGIC_COOKIE or HEADER.size + length > len(data):
        return None
    flags = 0
    offset = HEADER.size
    end = HEADER.size + length
    while offset + ATTRIBUTE.size <= end:
        attribute, size = ATTRIBUTE.unpack_from(data, offset)
        if attribute == CHANGE_REQUEST and size == 4:
            (flags,) = struct.unpack_from("!I", data, offset + ATTRIBUTE.size)
        offset += ATTRIBUTE.size + size + (-size % 4)
    return transaction, flags


def binding_response(transaction: bytes, client: Address, origin: Address, other: Address) -> bytes:
    """A Binding success response telling ``client`` its address, sent from ``origin``."""
    xor_key = struct.pack("!HI", MAGIC_COOKIE >> 16, MAGIC_COOKIE)
    body = (
        _attribute(XOR_MAPPED_ADDRESS, _address_value(client, xor_key))
        + _attribute(MAPPED_ADDRESS, _address_value(client))
        + _attribute(RESPONSE_ORIGIN, _address_value(origin))
        + _attribute(OTHER_ADDRESS, _address_value(other))
    )
    return HEADER.pack(BINDING_SUCCESS, len(body), MAGIC_COOKIE, transaction) + body


class StunServer:
    """Sockets on two addresses x two ports; ``serve_once`` answers what has arrived."""

    def __init__(self, addresses: tuple[str, str], ports: tuple[int, int]) -> None:
        self.addresses = addresses
        self.ports = ports
        self.sockets: dict[tuple[int, int], socket.socket] = {}  # (address index, port index) -> socket
        try:
            for a, address in enumerate(addresses):
                for p, port in enumerate(ports):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    self.sockets[a, p] = sock
                    sock.bind((address, port))
        except BaseException:
            self.close()
            raise

    def serve_once(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds, then answers one request on each readable socket."""
        by_fd = {sock.fileno(): key for key, sock in self.sockets.items()}
        readable, _, _ = select.select(list(self.sockets.values()), [], [], timeout)
        for sock in readable:
            a, p = by_fd[sock.fileno()]
            data, client = sock.recvfrom(2048)
            request = parse_request(data)
            if request is None:
                continue
            transaction, flags = request
            a_out = 1 - a if flags & CHANGE_IP else a
            p_out = 1 - p if flags & CHANGE_PORT else p
            origin = (self.addresses[a_out], self.ports[p_out])
            other = (self.addresses[1 - a_out], self.ports[1 - p_out])
            self.sockets[a_out, p_out].sendto(binding_response(transaction, client, origin, other), client)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", action="append", required=True, help="give exactly two")
    parser.add_argument("--port", action="append", type=int, help="two ports (default 3478 and 3479)")
    args = parser.parse_args(argv)
    ports = args.port or [3478, 3479]
    if len(args.address) != 2 or len(ports) != 2:
        parser.error("two --address and two --port values are needed")
    server = StunServer((args.address[0], args.address[1]), (ports[0], ports[1]))
    print("ready", flush=True)
    try:
        while True:  # a server: it runs until SIGTERM ends the process (it holds no state to save)
            server.serve_once(IDLE_WAIT)
    finally:
        server.close()


if __name__ == "__main__":
    main()
