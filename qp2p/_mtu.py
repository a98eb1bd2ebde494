"""What the kernel knows about datagram sizes: path MTU probes need the don't-fragment bit set on
every datagram (else the kernel fragments a probe and it passes), and the route to a peer bounds
how large a probe is worth trying.

Linux only: elsewhere ``forbid_fragmentation`` returns False and discovery stays off.
"""

from __future__ import annotations

import socket
import sys

__all__ = ("forbid_fragmentation", "route_payload")

# <linux/in.h>, <linux/in6.h>: Python's socket module names only some of these.
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_MTU = getattr(socket, "IP_MTU", 14)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
_PMTUDISC_PROBE = 3  # set DF, never fragment, ignore the kernel's cached path MTU
_IPV4_OVERHEAD = 20 + 8  # IPv4 header without options, UDP header
_IPV6_OVERHEAD = 40 + 8


def forbid_fragmentation(sock: socket.socket) -> bool:
    """Send every datagram of ``sock`` with don't-fragment and no local fragmentation, so that
    a datagram larger than the path is lost instead of cut (IP_PMTUDISC_PROBE); True if set."""
    if not sys.platform.startswith("linux"):
        return False
    options = [(socket.IPPROTO_IP, _IP_MTU_DISCOVER)]
    if sock.family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER))
    done = False
    for level, option in options:
        try:
            sock.setsockopt(level, option, _PMTUDISC_PROBE)
            done = True
        except OSError:
            if sock.family == socket.AF_INET:
                return False
    return done


def route_payload(host: str) -> int | None:
    """The largest UDP payload the local interface toward ``host`` carries (its MTU less the IP
    and UDP headers), or None when the kernel does not say."""
    if not sys.platform.startswith("linux"):
        return None
    ipv6 = ":" in host
    family, level, option, overhead = (
        (socket.AF_INET6, socket.IPPROTO_IPV6, _IPV6_MTU, _IPV6_OVERHEAD)
        if ipv6
        else (socket.AF_INET, socket.IPPROTO_IP, _IP_MTU, _IPV4_OVERHEAD)
    )
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # no datagram is sent: connect only picks the route
            mtu = probe.getsockopt(level, option)
    except OSError:
        return None
    return int(mtu) - overhead
