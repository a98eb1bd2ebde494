"""Files between ``qp2p send --file`` and ``qp2p listen``: the convention of docs/files.md.

A file travels on one connection, in order, as a ``BEGIN`` request (its name and size), then
``PIECE`` messages pinned to lane 0 (so they stay in order with the requests around them),
then an ``END`` request whose reply is the SHA-256 of what the receiver took: the sender
compares it with its own. Any reply but the expected one is ``refused: <reason>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qp2p.connection import Connection, Message
from qp2p.errors import Error, SendError

__all__ = ("BEGIN", "END", "MAX_TRANSFERS", "PIECE", "PIECE_SIZE", "Receiver", "send_file")

BEGIN = b"\0qp2p-file begin\n"  # then JSON: {"name": "report.pdf", "size": 1234}
PIECE = b"\0qp2p-file piece\n"  # then the offset (8 bytes, big-endian) and the bytes
END = b"\0qp2p-file end\n"
OK, DIGEST, REFUSED = b"ok", b"sha256:", b"refused: "
# Bytes a piece carries: with its prefix it stays below the default lane threshold (64 KiB),
# so it travels on lane 0 and keeps its place between the two requests.
PIECE_SIZE = 64_000
OFFSET_SIZE = 8
# Files a listener takes at once (each holds a file open); more are refused until one ends.
MAX_TRANSFERS = 8
# The longest name taken, in UTF-8: its partial file's name (a dot, 18 more bytes and ".part")
# must stay within the 255 bytes most file systems allow.
MAX_NAME_BYTES = 200


async def send_file(
    connection: Connection,
    path: Path,
    timeout: float,
    progress: Callable[[int], AbstractContextManager[Callable[[int], object]]],
) -> tuple[int, str]:
    """Send the file at ``path``: once the receiver accepted it, ``progress(size)`` is entered
    and told of each piece's bytes. (size, SHA-256 hex) once the receiver replied with the same
    digest; ``SendError`` if it refused the file or differs."""
    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        header = json.dumps({"name": path.name, "size": size}).encode()
        _check(await connection.request(BEGIN + header, timeout=timeout), OK)
        hasher, offset = hashlib.sha256(), 0
        with progress(size) as advance:
            while piece := source.read(PIECE_SIZE):
                await connection.send(PIECE + offset.to_bytes(OFFSET_SIZE, "big") + piece, lane=0)
                hasher.update(piece)
                offset += len(piece)
                advance(len(piece))
    if offset != size:
        raise SendError(f"{path} changed while it was sent: {offset} bytes, not {size}")
    digest = hasher.hexdigest()
    _check(await connection.request(END, timeout=timeout), DIGEST + digest.encode())
    return size, digest


def _check(reply: bytes | bytearray, expected: bytes) -> None:
    if reply == expected:
        return
    if reply.startswith(REFUSED):
        raise SendError(f"the receiver refused the file: {_printable(reply[len(REFUSED) :])}")
    if reply.startswith(DIGEST):
        raise SendError(f"the receiver's SHA-256 differs: {_printable(reply[len(DIGEST) :])}")
    raise SendError(f"the receiver does not take files (it answered {bytes(reply[:40])!r})")


def _printable(data: bytes | bytearray) -> str:
    """A peer's text with anything that could drive a terminal escaped."""
    text = bytes(data).decode("utf-8", "replace")
    return text if text.isprintable() else repr(text)


class Refused(Exception):
    """Why a file is refused: the text of the ``refused:`` reply."""


@dataclass
class _Transfer:
    name: str
    size: int
    part: Path | None  # where the bytes go, when saving
    out: IO[bytes] | None
    hasher: Any = field(default_factory=hashlib.sha256)
    received: int = 0
    failure: str | None = None  # set once a piece was wrong: the rest are dropped


class Receiver:
    """Files peers send by this convention: checked, and saved into ``folder`` if one is given,
    never over an existing file; ``say(message, text)`` reports each step."""

    def __init__(self, folder: Path | None, say: Callable[[Message, str], None]) -> None:
        self._folder = folder
        self._say = say
        self._transfers: dict[Connection, _Transfer] = {}

    async def others(self, messages: AsyncIterator[Message]) -> AsyncIterator[Message]:
        """``messages`` but those of files, which this takes; once it ends (or is closed), files
        still under way are dropped, partial files removed."""
        try:
            async for message in messages:
                if not await self.take(message):
                    yield message
        finally:
            for connection in list(self._transfers):
                self._drop(connection)

    async def take(self, message: Message) -> bool:
        """Handle ``message`` if it belongs to a file; False for any other message."""
        data = message.data
        if data.startswith(PIECE) and not message.is_request:
            self._piece(message.connection, memoryview(data)[len(PIECE) :])
        elif data.startswith(BEGIN) and message.is_request:
            await self._reply(message, self._begin(message, bytes(data[len(BEGIN) :])))
        elif data == END and message.is_request:
            await self._reply(message, self._end(message))
        else:
            return False
        return True

    async def _reply(self, message: Message, reply: bytes) -> None:
        try:
            await message.reply(reply)
        except Error as exc:  # the sender went away: the others go on
            self._say(message, f"cannot reply: {exc}")

    def _begin(self, message: Message, header: bytes) -> bytes:
        for connection in [c for c in self._transfers if c.is_closed]:  # senders that went away
            self._drop(connection)
        try:
            name, size = _parse(header)
            if message.connection in self._transfers:
                raise Refused("a file from this connection is under way")
            if len(self._transfers) >= MAX_TRANSFERS:
                raise Refused(f"{MAX_TRANSFERS} files are under way, try later")
            part = out = None
            if self._folder is not None:
                if os.path.lexists(self._folder / name):
                    raise Refused(f"{name!r} exists")
                part = self._folder / f".{name}.{secrets.token_hex(8)}.part"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                try:
                    out = os.fdopen(os.open(part, flags, 0o600), "wb")
                except OSError as exc:
                    raise Refused(f"cannot write {name!r}: {exc.strerror}") from None
        except Refused as exc:
            self._say(message, f"file refused: {exc}")
            return REFUSED + str(exc).encode()
        self._transfers[message.connection] = _Transfer(name, size, part, out)
        self._say(message, f"file {name!r} {size} bytes: receiving")
        return OK

    def _piece(self, connection: Connection, data: memoryview) -> None:
        transfer = self._transfers.get(connection)
        if transfer is None or transfer.failure is not None:
            return  # no file under way, or one already failed: dropped
        offset, piece = int.from_bytes(data[:OFFSET_SIZE], "big"), data[OFFSET_SIZE:]
        if len(data) < OFFSET_SIZE or offset != transfer.received:
            transfer.failure = f"a piece at {offset} came after {transfer.received} bytes"
        elif transfer.received + len(piece) > transfer.size:
            transfer.failure = f"more than the {transfer.size} bytes announced"
        else:
            transfer.hasher.update(piece)
            transfer.received += len(piece)
            if transfer.out is not None:
                transfer.out.write(piece)

    def _end(self, message: Message) -> bytes:
        transfer = self._transfers.pop(message.connection, None)
        if transfer is None:
            return REFUSED + b"no file under way"
        failure, where = transfer.failure, None
        try:
            if failure is None and transfer.received != transfer.size:
                failure = f"{transfer.received} of the {transfer.size} bytes announced came"
            if failure is None:
                where = self._keep(transfer)
        except Refused as exc:
            failure = str(exc)
        finally:
            _close(transfer)
        if failure is not None:
            self._say(message, f"file {transfer.name!r} refused: {failure}")
            return REFUSED + failure.encode()
        digest: str = transfer.hasher.hexdigest()
        shown = f"saved as {where}" if where is not None else "not saved (listen has no --save-dir)"
        self._say(message, f"file {transfer.name!r} {transfer.size} bytes sha256 {digest}: {shown}")
        return DIGEST + digest.encode()

    def _keep(self, transfer: _Transfer) -> Path | None:
        """Give the partial file its name, unless that name was taken meanwhile; where it is now."""
        if transfer.out is None or transfer.part is None or self._folder is None:
            return None
        transfer.out.close()
        final = self._folder / transfer.name
        try:
            os.link(transfer.part, final)  # unlike a rename, never replaces a file
        except FileExistsError:
            raise Refused(f"{transfer.name!r} exists") from None
        except OSError as exc:
            raise Refused(f"cannot write {transfer.name!r}: {exc.strerror}") from None
        return final

    def _drop(self, connection: Connection) -> None:
        _close(self._transfers.pop(connection))


def _close(transfer: _Transfer) -> None:
    """Close the transfer's file and remove its partial name (a file kept has its own name too)."""
    if transfer.out is not None:
        transfer.out.close()
    if transfer.part is not None:
        transfer.part.unlink(missing_ok=True)


def _parse(header: bytes) -> tuple[str, int]:
    """The name and size a ``BEGIN`` announces; ``Refused`` unless the name is a plain file name."""
    try:
        announced = json.loads(header)
        name, size = announced["name"], announced["size"]
    except (ValueError, KeyError, TypeError):
        raise Refused("not a file header") from None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 63:
        raise Refused("a size must be a whole number of bytes")
    if (
        not isinstance(name, str)
        or not name.isprintable()
        or name.startswith(".")
        or any(c in name for c in "/\\:")
        or not 0 < len(name.encode("utf-8", "replace")) <= MAX_NAME_BYTES
    ):
        raise Refused(f"not a plain file name: {name!r}"[:200])
    return name, size
