"""A userspace delay line: every packet of one NFQUEUE queue is held for a fixed time, then accepted.

Linux without the netem qdisc has no built-in way to add latency, so a router namespace sends its
traffic to a netfilter queue (``iptables -t raw -A PREROUTING -i IF -j NFQUEUE --queue-num N
--queue-bypass``) and this process, run in that namespace (``ip netns exec NS python delay_line.py
--queue N --delay-ms D``), gives each packet its verdict ``D`` ms after it was queued. It speaks
nfnetlink_queue over a raw netlink socket, with no library.

* Order is kept: the delay is the same for every packet, and verdicts are given first in, first out.
* Memory is bounded: the kernel holds at most ``--cap`` packets for the queue and, because the
  queue is configured to fail open, accepts anything beyond that at once instead of dropping it.
  Only packet ids (metadata, not payloads) are copied to this process.
* SIGTERM or SIGINT: every packet still held is accepted, the queue is unbound, and the process
  exits with status 0 after printing a one-line JSON summary.

It prints ``ready`` once the queue is bound, so a caller knows when delays start to apply.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270  # not exported by the socket module
NETLINK_NO_ENOBUFS = 5
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8 | 0
NFQNL_MSG_CONFIG = NFNL_SUBSYS_QUEUE << 8 | 2
NFQNL_MSG_VERDICT_BATCH = NFNL_SUBSYS_QUEUE << 8 | 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1
NF_ACCEPT = 1
NLA_TYPE_MASK = 0x3FFF
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NLA_HEADER = struct.Struct("=HH")  # length, type
NFGEN_HEADER = struct.Struct("!BBH")  # family, version, resource id (the queue number)
READS_PER_WAKE = 512  # messages read before due packets get their verdicts again
IDLE_WAIT = 1.0  # seconds; the longest wait for a packet or a signal while nothing is held


def _attribute(kind: int, payload: bytes) -> bytes:
    header = NLA_HEADER.pack(NLA_HEADER.size + len(payload), kind)
    return header + payload + bytes(-len(payload) % 4)


def _queue_command(command: int) -> bytes:
    """The NFQA_CFG_CMD attribute of a configuration message (the family field is unused)."""
    return _attribute(NFQA_CFG_CMD, struct.pack("!BxH", command, 0))


class DelayLine:
    """One bound NFQUEUE queue whose packets are accepted ``delay`` seconds after they arrive."""

    def __init__(self, queue: int, delay: float, cap: int) -> None:
        self.queue = queue
        self.delay = delay
        self.held: collections.deque[tuple[float, int]] = collections.deque()  # (due, packet id)
        self.packets = 0
        self.peak = 0
        self._sequence = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self.sock.bind((0, 0))
            self._configure(_queue_command(NFQNL_CFG_CMD_BIND))
            self._configure(
                _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                + _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", cap))
                + _attribute(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
                + _attribute(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
            )
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._sequence += 1
        payload = NFGEN_HEADER.pack(socket.AF_UNSPEC, 0, self.queue) + body
        size = NLMSG_HEADER.size + len(payload)
        self.sock.send(NLMSG_HEADER.pack(size, kind, NLM_F_REQUEST | flags, self._sequence, 0) + payload)
        return self._sequence

    def _configure(self, body: bytes) -> None:
        """Sends one configuration message and waits (blocking, at most 5 s) for the kernel's answer."""
        sequence = self._send(NFQNL_MSG_CONFIG, NLM_F_ACK, body)
        self.sock.settimeout(5.0)
        for _ in range(64):  # packets cannot arrive before the queue is bound; this is generous
            data = self.sock.recv(65536)
            for kind, seq, payload in _messages(data):
                if kind == NLMSG_ERROR and seq == sequence:
                    (error,) = struct.unpack_from("=i", payload)
                    if error:
                        reason = os.strerror(-error)
                        raise OSError(-error, f"nfnetlink_queue refused queue {self.queue}: {reason}")
                    return
        raise TimeoutError("no answer from nfnetlink_queue")

    def _accept_through(self, packet_id: int) -> None:
        """One batch verdict: every held packet with an id up to ``packet_id`` is accepted."""
        verdict = _attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
        self._send(NFQNL_MSG_VERDICT_BATCH, 0, verdict)

    def read(self) -> None:
        """Takes in the packets the kernel has queued (at most ``READS_PER_WAKE`` messages)."""
        for _ in range(READS_PER_WAKE):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            due = time.monotonic() + self.delay
            for kind, _seq, payload in _messages(data):
                if kind == NFQNL_MSG_PACKET:
                    self.held.append((due, _packet_id(payload[NFGEN_HEADER.size :])))
                    self.packets += 1
            self.peak = max(self.peak, len(self.held))

    def release(self) -> float:
        """Accepts every packet that is due; returns the seconds until the next one is."""
        now = time.monotonic()
        last = None
        while self.held and self.held[0][0] <= now:
            last = self.held.popleft()[1]
        if last is not None:
            self._accept_through(last)
        return self.held[0][0] - now if self.held else IDLE_WAIT

    def close(self) -> None:
        """Accepts whatever is still held, unbinds the queue and closes the socket."""
        self.read()
        if self.held:
            self._accept_through(self.held[-1][1])
            self.held.clear()
        self._send(NFQNL_MSG_CONFIG, 0, _queue_command(NFQNL_CFG_CMD_UNBIND))
        self.sock.close()


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """Splits one netlink read into (type, sequence, payload) triples."""
    found = []
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, sequence, _port = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            break
        found.append((kind, sequence, data[offset + NLMSG_HEADER.size : offset + length]))
        offset += (length + 3) & ~3
    return found


def _packet_id(attributes: bytes) -> int:
    """The packet id carried in a queued packet's NFQA_PACKET_HDR attribute."""
    offset = 0
    while offset + NLA_HEADER.size <= len(attributes):
        length, kind = NLA_HEADER.unpack_from(attributes, offset)
        if length < NLA_HEADER.size:
            break
        if kind & NLA_TYPE_MASK == NFQA_PACKET_HDR:
            (packet_id,) = struct.unpack_from("!I", attributes, offset + NLA_HEADER.size)
            return int(packet_id)
        offset += (length + 3) & ~3
    raise ValueError("a queued packet without NFQA_PACKET_HDR")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number (default 0)")
    parser.add_argument("--delay-ms", type=float, required=True, help="delay added to every packet")
    parser.add_argument("--cap", type=int, default=4096, help="most packets held; more pass at once")
    args = parser.parse_args(argv)
    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno())
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: stop.append(number))
    line = DelayLine(args.queue, args.delay_ms / 1000, args.cap)
    print("ready", flush=True)
    try:
        while not stop:  # runs until SIGTERM or SIGINT; each wait is at most IDLE_WAIT
            readable, _, _ = select.select([line.sock, wake_read], [], [], line.release())
            if line.sock in readable:
                line.read()
    finally:
        line.close()
        wake_read.close()
        wake_write.close()
    summary = {"queue": args.queue, "packets": line.packets, "peak_held": line.peak}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
