from typing import Final

from typing_extensions import disjoint_base

__all__ = ("MAC_SIZE", "MAX_CID_LENGTH", "MIN_KEY_SIZE", "TOKEN_FORMAT", "RetryTokens", "key_id")

TOKEN_FORMAT: Final[int]
MAC_SIZE: Final[int]
MAX_CID_LENGTH: Final[int]
MIN_KEY_SIZE: Final[int]

def key_id(key: bytes) -> int: ...

@disjoint_base
class RetryTokens:
    def __init__(self, key: bytes, previous_key: bytes | None = None, lifetime: float = 10.0) -> None: ...
    @property
    def lifetime(self) -> float: ...
    def rotate(self, key: bytes) -> None: ...
    def mint(
        self, addr: tuple[str, int], original_dcid: bytes, now: float, retry_scid: bytes = b""
    ) -> bytes: ...
    def validate(self, token: bytes, addr: tuple[str, int], now: float, retry_scid: bytes = b"") -> bytes: ...
