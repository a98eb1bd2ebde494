from typing import Final

from typing_extensions import Buffer, disjoint_base

__all__ = (
    "HANDSHAKE",
    "INITIAL",
    "MAX_CID_LENGTH",
    "ONE_RTT",
    "QUIC_V1",
    "QUIC_V2",
    "RETRY",
    "VERSION_NEGOTIATION",
    "ZERO_RTT",
    "PacketHeader",
    "peek",
)

INITIAL: Final[int]
ZERO_RTT: Final[int]
HANDSHAKE: Final[int]
RETRY: Final[int]
VERSION_NEGOTIATION: Final[int]
ONE_RTT: Final[int]
QUIC_V1: Final[int]
QUIC_V2: Final[int]
MAX_CID_LENGTH: Final[int]

@disjoint_base
class PacketHeader:
    @property
    def is_long_header(self) -> bool: ...
    @property
    def version(self) -> int | None: ...
    @property
    def packet_type(self) -> int | None: ...
    @property
    def destination_cid(self) -> bytes: ...
    @property
    def source_cid(self) -> bytes: ...
    @property
    def token(self) -> bytes: ...
    def __init__(
        self,
        is_long_header: bool,
        version: int | None,
        packet_type: int | None,
        destination_cid: bytes,
        source_cid: bytes,
        token: bytes,
    ) -> None: ...

def peek(datagram: Buffer, cid_length: int) -> PacketHeader: ...
