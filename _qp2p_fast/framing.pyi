from typing import Final, final

from typing_extensions import Buffer, disjoint_base

__all__ = (
    "FLAG_CONTROL",
    "FLAG_REQUEST",
    "FLAG_RESPONSE",
    "FLAG_USER",
    "HEADER_SIZE",
    "MAX_DATA_LEN",
    "TAKE_BROKEN",
    "TAKE_DONE",
    "TAKE_ODD",
    "TAKE_OVER_BUDGET",
    "VERSION",
    "FrameDecoder",
    "FrameReceived",
    "append_frame",
    "decode_header",
    "encode_frame",
    "encode_header",
)

VERSION: Final[int]
HEADER_SIZE: Final[int]
MAX_DATA_LEN: Final[int]
FLAG_USER: Final[int]
FLAG_CONTROL: Final[int]
FLAG_REQUEST: Final[int]
FLAG_RESPONSE: Final[int]
TAKE_BROKEN: Final[int]
TAKE_DONE: Final[int]
TAKE_ODD: Final[int]
TAKE_OVER_BUDGET: Final[int]

def encode_header(flag: int, data_len: int) -> bytes: ...
def encode_frame(flag: int, body: Buffer) -> bytes: ...
def decode_header(data: Buffer, max_size: int) -> tuple[int, int]: ...
def append_frame(out: bytearray, flag: int, body: bytes) -> None: ...

@final
class FrameReceived:
    flag: int
    request_id: int
    data: bytes | bytearray
    lane: int
    cost: int
    large: bool
    held: int
    def __init__(
        self,
        flag: int,
        request_id: int,
        data: bytes | bytearray,
        lane: int,
        cost: int,
        large: bool,
        held: int = 0,
    ) -> None: ...

@disjoint_base
class FrameDecoder:
    def __init__(self, max_size: int) -> None: ...
    @property
    def max_size(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    def feed(self, data: Buffer) -> None: ...
    def next_frame(self) -> tuple[int, bytes] | None: ...
    def take(
        self, data: Buffer, lane: int, budget: int, frame_cost: int
    ) -> tuple[list[FrameReceived], int, int, tuple[int, bytes] | None]: ...
    def __iter__(self) -> FrameDecoder: ...
    def __next__(self) -> tuple[int, bytes]: ...
    def finish(self) -> None: ...
