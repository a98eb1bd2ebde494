# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``qp2p._pure.packet``; see there for the documentation."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from qp2p.errors import MalformedPacket

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

INITIAL = 0
ZERO_RTT = 1
HANDSHAKE = 2
RETRY = 3
VERSION_NEGOTIATION = 4
ONE_RTT = 5

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
MAX_CID_LENGTH = 20

cdef enum:
    C_INITIAL = 0
    C_ZERO_RTT = 1
    C_HANDSHAKE = 2
    C_RETRY = 3
    C_VERSION_NEGOTIATION = 4
    C_ONE_RTT = 5
    C_MAX_CID = 20
    C_RETRY_TAG_SIZE = 16

cdef uint32_t C_QUIC_V1 = 0x00000001
cdef uint32_t C_QUIC_V2 = 0x6B3343CF
cdef int[4] V1_TYPES = [C_INITIAL, C_ZERO_RTT, C_HANDSHAKE, C_RETRY]
cdef int[4] V2_TYPES = [C_RETRY, C_INITIAL, C_ZERO_RTT, C_HANDSHAKE]
cdef bytes EMPTY = b""
# Small ints are cached by CPython; keep ours as objects to avoid re-boxing them per packet.
cdef tuple TYPE_OBJECTS = (INITIAL, ZERO_RTT, HANDSHAKE, RETRY, VERSION_NEGOTIATION, ONE_RTT)


cdef class PacketHeader:
    cdef readonly bint is_long_header
    cdef readonly object version
    cdef readonly object packet_type
    cdef readonly bytes destination_cid
    cdef readonly bytes source_cid
    cdef readonly bytes token

    def __init__(self, is_long_header, version, packet_type, destination_cid, source_cid, token):
        self.is_long_header = is_long_header
        self.version = version
        self.packet_type = packet_type
        self.destination_cid = destination_cid
        self.source_cid = source_cid
        self.token = token

    cdef tuple _fields(self):
        return (self.is_long_header, self.version, self.packet_type,
                self.destination_cid, self.source_cid, self.token)

    def __eq__(self, other):
        if type(other) is not PacketHeader:
            return NotImplemented
        return self._fields() == (<PacketHeader>other)._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return (f"PacketHeader(is_long_header={self.is_long_header!r}, version={self.version!r}, "
                f"packet_type={self.packet_type!r}, destination_cid={self.destination_cid!r}, "
                f"source_cid={self.source_cid!r}, token={self.token!r})")


cdef inline PacketHeader _header(bint is_long, object version, object packet_type,
                                 bytes dcid, bytes scid, bytes token):
    cdef PacketHeader h = PacketHeader.__new__(PacketHeader)
    h.is_long_header = is_long
    h.version = version
    h.packet_type = packet_type
    h.destination_cid = dcid
    h.source_cid = scid
    h.token = token
    return h


cdef uint64_t _varint(const uint8_t* data, Py_ssize_t* pos, Py_ssize_t end) except? 0xFFFFFFFFFFFFFFFF:
    cdef Py_ssize_t at = pos[0]
    cdef Py_ssize_t size, i
    cdef uint64_t value
    if at >= end:
        raise MalformedPacket("packet truncated inside a length field")
    size = 1 << (data[at] >> 6)
    if at + size > end:
        raise MalformedPacket("packet truncated inside a length field")
    value = data[at] & 0x3F
    for i in range(at + 1, at + size):
        value = (value << 8) | data[i]
    pos[0] = at + size
    return value


cdef bytes _cid(const uint8_t* data, Py_ssize_t* pos, Py_ssize_t end, str what):
    cdef Py_ssize_t at = pos[0]
    cdef Py_ssize_t length
    if at >= end:
        raise MalformedPacket(f"long header truncated before the {what} connection id")
    length = data[at]
    if length > C_MAX_CID:
        raise MalformedPacket(f"{what} connection id of {length} bytes exceeds {MAX_CID_LENGTH}")
    at += 1
    if at + length > end:
        raise MalformedPacket(f"long header truncated inside the {what} connection id")
    pos[0] = at + length
    return PyBytes_FromStringAndSize(<const char*>data + at, length)


cdef PacketHeader _peek(const uint8_t* data, Py_ssize_t end, Py_ssize_t cid_length):
    cdef uint8_t first
    cdef uint32_t version
    cdef Py_ssize_t pos
    cdef uint64_t token_len, length
    cdef int packet_type
    cdef bytes dcid, scid, token
    if end == 0:
        raise MalformedPacket("empty datagram")
    first = data[0]
    if not first & 0x80:
        if not first & 0x40:
            raise MalformedPacket("fixed bit is zero")
        if end < 1 + cid_length:
            raise MalformedPacket("short header shorter than its connection id")
        return _header(False, None, TYPE_OBJECTS[C_ONE_RTT],
                       PyBytes_FromStringAndSize(<const char*>data + 1, cid_length), EMPTY, EMPTY)
    if end < 5:
        raise MalformedPacket("long header truncated before its version")
    version = ((<uint32_t>data[1] << 24) | (<uint32_t>data[2] << 16)
               | (<uint32_t>data[3] << 8) | <uint32_t>data[4])
    pos = 5
    dcid = _cid(data, &pos, end, "destination")
    scid = _cid(data, &pos, end, "source")
    if version == 0:
        return _header(True, 0, TYPE_OBJECTS[C_VERSION_NEGOTIATION], dcid, scid, EMPTY)
    if version != C_QUIC_V1 and version != C_QUIC_V2:
        return _header(True, version, None, dcid, scid, EMPTY)
    if not first & 0x40:
        raise MalformedPacket("fixed bit is zero")
    if version == C_QUIC_V1:
        packet_type = V1_TYPES[(first >> 4) & 3]
    else:
        packet_type = V2_TYPES[(first >> 4) & 3]
    token = EMPTY
    if packet_type == C_RETRY:
        if end - pos < C_RETRY_TAG_SIZE:
            raise MalformedPacket("retry packet shorter than its integrity tag")
        token = PyBytes_FromStringAndSize(<const char*>data + pos, end - C_RETRY_TAG_SIZE - pos)
    else:
        if packet_type == C_INITIAL:
            token_len = _varint(data, &pos, end)
            if token_len > <uint64_t>(end - pos):
                raise MalformedPacket("initial packet truncated inside its token")
            token = PyBytes_FromStringAndSize(<const char*>data + pos, <Py_ssize_t>token_len)
            pos += <Py_ssize_t>token_len
        length = _varint(data, &pos, end)
        if length > <uint64_t>(end - pos):
            raise MalformedPacket("packet length exceeds the datagram")
    return _header(True, version, TYPE_OBJECTS[packet_type], dcid, scid, token)


def peek(datagram, Py_ssize_t cid_length):
    if cid_length < 0 or cid_length > C_MAX_CID:
        raise ValueError(f"cid_length must be between 0 and {MAX_CID_LENGTH}, got {cid_length}")
    cdef Py_buffer view
    if type(datagram) is bytes:
        return _peek(<const uint8_t*><const char*>datagram, len(<bytes>datagram), cid_length)
    PyObject_GetBuffer(datagram, &view, PyBUF_SIMPLE)
    try:
        return _peek(<const uint8_t*>view.buf, view.len, cid_length)
    finally:
        PyBuffer_Release(&view)
