# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``qp2p._pure.framing``; see there for the documentation."""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

from qp2p.errors import (
    EmptyMessage,
    FrameTooLarge,
    MessageTooLarge,
    SendError,
    TruncatedFrame,
    UnknownFlag,
    UnsupportedVersion,
)

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

VERSION = 1
HEADER_SIZE = 9
MAX_DATA_LEN = 0xFFFFFFFF
FLAG_USER = 0
FLAG_CONTROL = 1
FLAG_REQUEST = 2
FLAG_RESPONSE = 3

TAKE_DONE = 0
TAKE_ODD = 1
TAKE_OVER_BUDGET = 2
TAKE_BROKEN = 3

cdef enum:
    C_FLAG_CONTROL = 1
    C_VERSION = 1
    C_HEADER_SIZE = 9
    C_FLAG_USER = 0
    C_FLAG_RESPONSE = 3
    C_COMPACT_AT = 1 << 16
    C_KEEP_CAPACITY = 1 << 18

# A take's budget, held to what a long long carries with room for one frame's cost added.
cdef long long C_BUDGET_MAX = 1LL << 62
cdef long long C_BUDGET_MIN = -(1LL << 62)


cdef inline void _write_header(uint8_t* p, uint32_t data_len, uint8_t flag) noexcept:
    p[0] = 0
    p[1] = C_VERSION
    p[2] = (data_len >> 24) & 0xFF
    p[3] = (data_len >> 16) & 0xFF
    p[4] = (data_len >> 8) & 0xFF
    p[5] = data_len & 0xFF
    p[6] = flag
    p[7] = 0
    p[8] = 0


cdef int _check_encode(object flag, object data_len) except -1:
    if flag < FLAG_USER or flag > FLAG_RESPONSE:
        raise SendError(f"unknown frame flag {flag}")
    if data_len < 0:
        raise SendError(f"negative frame length {data_len}")
    if data_len > MAX_DATA_LEN:
        raise MessageTooLarge(MAX_DATA_LEN, data_len)
    if data_len == 0 and flag == FLAG_USER:
        raise SendError("a user message cannot be empty")
    return 0


def encode_header(flag, data_len):
    _check_encode(flag, data_len)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, C_HEADER_SIZE)
    _write_header(<uint8_t*>PyBytes_AS_STRING(out), <uint32_t>data_len, <uint8_t>flag)
    return out


def encode_frame(flag, body):
    cdef Py_buffer view
    cdef bytes out
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        _check_encode(flag, view.len)
        out = PyBytes_FromStringAndSize(NULL, C_HEADER_SIZE + view.len)
        _write_header(<uint8_t*>PyBytes_AS_STRING(out), <uint32_t>view.len, <uint8_t>flag)
        memcpy(PyBytes_AS_STRING(out) + C_HEADER_SIZE, view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


def append_frame(bytearray out, flag, bytes body):
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    _check_encode(flag, size)
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, at + C_HEADER_SIZE + size)
    cdef uint8_t* p = <uint8_t*>PyByteArray_AS_STRING(out) + at
    _write_header(p, <uint32_t>size, <uint8_t>flag)
    memcpy(p + C_HEADER_SIZE, PyBytes_AS_STRING(body), size)


@cython.freelist(256)
@cython.final
cdef class FrameReceived:
    cdef public object flag
    cdef public object request_id
    cdef public object data
    cdef public object lane
    cdef public object cost
    cdef public object large
    cdef public object held

    def __init__(self, flag, request_id, data, lane, cost, large, held=0):
        self._set(flag, request_id, data, lane, cost, large, held)

    cdef inline void _set(self, flag, request_id, data, lane, cost, large, held):
        self.flag = flag
        self.request_id = request_id
        self.data = data
        self.lane = lane
        self.cost = cost
        self.large = large
        self.held = held

    def __repr__(self):
        return (
            f"FrameReceived(flag={self.flag}, request_id={self.request_id}, {len(self.data)} bytes, "
            f"lane={self.lane}, cost={self.cost}, large={self.large}, held={self.held})"
        )


cdef FrameReceived _frame(object flag, object request_id, object data, object lane, object cost):
    """A lane's message, built without the argument parsing of a Python-level call."""
    cdef FrameReceived frame = FrameReceived.__new__(FrameReceived)
    frame._set(flag, request_id, data, lane, cost, False, 0)
    return frame


cdef inline uint64_t _data_len(const uint8_t* p) noexcept:
    return ((<uint64_t>p[2] << 24) | (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | <uint64_t>p[5])


cdef int _check_header(const uint8_t* p, uint64_t max_size) except -1:
    cdef unsigned int version = (p[0] << 8) | p[1]
    cdef uint64_t data_len = _data_len(p)
    cdef unsigned int flag = p[6]
    if version != C_VERSION:
        raise UnsupportedVersion(f"frame version {version}, expected {VERSION}")
    if flag > C_FLAG_RESPONSE:
        raise UnknownFlag(f"unknown frame flag {flag}")
    if data_len > max_size:
        raise FrameTooLarge(max_size, data_len)
    if data_len == 0 and flag == C_FLAG_USER:
        raise EmptyMessage("empty user message")
    return 0


cdef uint64_t _check_max_size(object max_size) except? 0xFFFFFFFFFFFFFFFF:
    if max_size < 0 or max_size > MAX_DATA_LEN:
        raise ValueError(f"max_size must be between 0 and {MAX_DATA_LEN}, got {max_size}")
    return max_size


def decode_header(data, max_size):
    cdef uint64_t limit = _check_max_size(max_size)
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len < C_HEADER_SIZE:
            raise TruncatedFrame(f"frame header needs {HEADER_SIZE} bytes, got {view.len}")
        _check_header(<const uint8_t*>view.buf, limit)
        return (<const uint8_t*>view.buf)[6], _data_len(<const uint8_t*>view.buf)
    finally:
        PyBuffer_Release(&view)


cdef class FrameDecoder:
    cdef uint8_t* _buf
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef uint64_t _max_size
    cdef object _error

    # C fields start zeroed (Cython allocates them so), object fields as None.
    def __init__(self, max_size):
        self._max_size = _check_max_size(max_size)

    def __dealloc__(self):
        free(self._buf)

    @property
    def max_size(self):
        return self._max_size

    @property
    def buffered(self):
        return self._end - self._start

    @property
    def capacity(self):
        return self._cap

    cdef inline int _raise_if_failed(self) except -1:
        if self._error is not None:
            raise self._error.with_traceback(None)
        return 0

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t needed, cap
        cdef uint8_t* grown
        if self._start == self._end:
            self._start = self._end = 0
            if self._cap > C_KEEP_CAPACITY and extra <= C_KEEP_CAPACITY:
                # A burst is over: give its memory back instead of keeping it for the stream's life.
                free(self._buf)
                self._buf = NULL
                self._cap = 0
        elif self._start >= C_COMPACT_AT:
            memmove(self._buf, self._buf + self._start, self._end - self._start)
            self._end -= self._start
            self._start = 0
        needed = self._end + extra
        if needed <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 4096
        while cap < needed:
            cap *= 2
        grown = <uint8_t*>realloc(self._buf, cap)
        if grown == NULL:
            raise MemoryError()
        self._buf = grown
        self._cap = cap
        return 0

    def feed(self, data):
        self._raise_if_failed()
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._reserve(view.len)
            memcpy(self._buf + self._end, view.buf, view.len)
            self._end += view.len
        finally:
            PyBuffer_Release(&view)

    cdef object _next(self):
        cdef Py_ssize_t avail = self._end - self._start
        cdef const uint8_t* p
        cdef uint64_t data_len
        if avail < C_HEADER_SIZE:
            return None
        p = self._buf + self._start
        try:
            _check_header(p, self._max_size)
        except Exception as exc:
            self._error = exc
            raise exc.with_traceback(None) from None
        data_len = _data_len(p)
        if <uint64_t>(avail - C_HEADER_SIZE) < data_len:
            return None
        payload = PyBytes_FromStringAndSize(<const char*>p + C_HEADER_SIZE, <Py_ssize_t>data_len)
        self._start += C_HEADER_SIZE + <Py_ssize_t>data_len
        return (p[6], payload)

    def next_frame(self):
        self._raise_if_failed()
        return self._next()

    def take(self, data, lane, budget, long long frame_cost):
        self._raise_if_failed()
        # Any int: beyond the C range, no frame fits below it, or every one fits under it.
        cdef long long limit = max(C_BUDGET_MIN, min(budget, C_BUDGET_MAX))
        cdef Py_buffer view
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t left
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self._start == self._end and view.len:
                # Straight from the caller's bytes: each body is copied once; only a tail is kept.
                try:
                    return self._take_from(<const uint8_t*>view.buf, &pos, view.len, lane, limit, frame_cost)
                finally:
                    left = view.len - pos
                    if left:
                        self._reserve(left)
                        memcpy(self._buf + self._end, <const uint8_t*>view.buf + pos, left)
                        self._end += left
            if view.len:
                self._reserve(view.len)
                memcpy(self._buf + self._end, view.buf, view.len)
                self._end += view.len
            pos = self._start
            try:
                return self._take_from(self._buf, &pos, self._end, lane, limit, frame_cost)
            finally:
                self._start = pos
                self._let_go()
        finally:
            PyBuffer_Release(&view)

    cdef int _let_go(self) except -1:
        # What a burst grew the buffer to goes back once the tail needs under a quarter of it:
        # the decoder keeps at most C_KEEP_CAPACITY or four times its tail, never a burst's size
        # behind a small tail (which is all the session counts against the peer's credit).
        cdef Py_ssize_t left = self._end - self._start
        cdef Py_ssize_t cap = 4096
        cdef uint8_t* smaller
        if self._cap <= C_KEEP_CAPACITY or left * 4 > self._cap:
            return 0
        if left == 0:
            free(self._buf)
            self._buf = NULL
            self._cap = self._start = self._end = 0
            return 0
        while cap < left:
            cap *= 2
        smaller = <uint8_t*>malloc(cap)
        if smaller == NULL:
            raise MemoryError()
        memcpy(smaller, self._buf + self._start, left)
        free(self._buf)
        self._buf = smaller
        self._cap = cap
        self._start = 0
        self._end = left
        return 0

    cdef tuple _take_from(
        self, const uint8_t* base, Py_ssize_t* at, Py_ssize_t end, object lane, long long budget, long long frame_cost
    ):
        cdef list frames = []
        cdef long long spent = 0
        cdef long long cost
        cdef Py_ssize_t avail
        cdef const uint8_t* p
        cdef const uint8_t* body
        cdef uint64_t data_len
        cdef unsigned int flag
        cdef uint32_t request_id
        while True:
            avail = end - at[0]
            if avail < C_HEADER_SIZE:
                return frames, spent, TAKE_DONE, None
            p = base + at[0]
            try:
                _check_header(p, self._max_size)
            except Exception as exc:
                self._error = exc
                if frames:
                    return frames, spent, TAKE_BROKEN, None
                raise exc.with_traceback(None) from None
            data_len = _data_len(p)
            if <uint64_t>(avail - C_HEADER_SIZE) < data_len:
                return frames, spent, TAKE_DONE, None
            flag = p[6]
            body = p + C_HEADER_SIZE
            if flag == C_FLAG_CONTROL or (flag != C_FLAG_USER and data_len < 4):
                at[0] += C_HEADER_SIZE + <Py_ssize_t>data_len
                return frames, spent, TAKE_ODD, (flag, PyBytes_FromStringAndSize(<const char*>body, <Py_ssize_t>data_len))
            cost = <long long>data_len + frame_cost
            if spent + cost > budget:
                return frames, spent, TAKE_OVER_BUDGET, None
            if flag == C_FLAG_USER:
                payload = PyBytes_FromStringAndSize(<const char*>body, <Py_ssize_t>data_len)
                frames.append(_frame(flag, 0, payload, lane, cost))
            else:
                request_id = (<uint32_t>body[0] << 24) | (<uint32_t>body[1] << 16) | (<uint32_t>body[2] << 8) | body[3]
                payload = PyBytes_FromStringAndSize(<const char*>body + 4, <Py_ssize_t>data_len - 4)
                frames.append(_frame(flag, request_id, payload, lane, cost))
            at[0] += C_HEADER_SIZE + <Py_ssize_t>data_len
            spent += cost

    def __iter__(self):
        return self

    def __next__(self):
        self._raise_if_failed()
        frame = self._next()
        if frame is None:
            raise StopIteration
        return frame

    def finish(self):
        self._raise_if_failed()
        cdef Py_ssize_t left = self._end - self._start
        if left:
            self._error = TruncatedFrame(f"stream ended inside a frame, {left} bytes unused")
            raise self._error
