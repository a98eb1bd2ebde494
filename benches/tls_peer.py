"""Both ends of the end-to-end benches on TLS 1.3 over TCP: asyncio streams and the ssl module.

The reference point for what a reliable byte stream costs in this process. The server is
``asyncio.start_server`` with a self-signed P-256 certificate; the client is
``asyncio.open_connection`` without verification, both held to TLS 1.3. Each message or
request is framed as a kind byte and a 4-byte length, then the body; the receiver reads with
``readexactly``. The sender writes each frame and awaits ``drain()`` after it, as asyncio's
documentation asks (``drain`` waits only above the transport's high-water mark); a large
message is one ``write`` of the whole body. A request's echo comes back framed the same way on
the same connection.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from _inputs import identity_pem
from _peers import Body, DatagramSize, Impl

from qp2p.tls import self_signed_identity

__all__ = ("TLS", "TlsReceiver", "TlsSender")

Address = tuple[str, int]
HEADER = struct.Struct("!BI")  # kind, body length
MESSAGE, REQUEST = 0, 1


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    certificate, key = identity_pem(self_signed_identity())
    with tempfile.TemporaryDirectory() as scratch:  # the ssl module loads a chain from files only
        cert_file, key_file = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
        cert_file.write_bytes(certificate)
        key_file.write_bytes(key)
        context.load_cert_chain(cert_file, key_file)
    return context


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    return kind, await reader.readexactly(length)


class TlsReceiver:
    """A TLS server that hands every message to ``on_message`` and echoes every request."""

    def __init__(self, datagram_size: DatagramSize) -> None:
        self._server: asyncio.Server | None = None

    async def start(self, on_message: Callable[[Body], None]) -> Address:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    kind, body = await _read_frame(reader)
                    if kind == MESSAGE:
                        on_message(body)
                    else:
                        writer.write(HEADER.pack(REQUEST, len(body)) + body)
                        await writer.drain()
            except asyncio.IncompleteReadError:
                pass  # the sender closed
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=_server_context())
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TlsSender:
    """One TLS connection: frames written with ``drain()``, requests answered in order."""

    def __init__(self, datagram_size: DatagramSize) -> None:
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self, contact: Address) -> None:
        self._streams = await asyncio.open_connection(*contact, ssl=_client_context())

    async def _write(self, kind: int, data: Body) -> asyncio.StreamReader:
        assert self._streams is not None
        reader, writer = self._streams
        writer.write(HEADER.pack(kind, len(data)))
        writer.write(data)
        await writer.drain()
        return reader

    async def send(self, data: Body) -> None:
        await self._write(MESSAGE, data)

    async def request(self, data: Body) -> Body:
        _, reply = await _read_frame(await self._write(REQUEST, data))
        return reply

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            writer.close()
            await writer.wait_closed()


TLS = Impl(TlsReceiver, TlsSender, sized_datagrams=False)
