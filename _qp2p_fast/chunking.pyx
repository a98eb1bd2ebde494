# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``qp2p._pure.chunking``; see there for the documentation."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from libc.string cimport memcpy

from _qp2p_fast.framing import HEADER_SIZE, MAX_DATA_LEN, decode_header, encode_header
from qp2p.errors import MalformedMessage, TruncatedFrame

__all__ = ("Chunker", "Reassembler")

cdef enum:
    C_HEADER_SIZE = 9


cdef memoryview _byte_view(object data):
    cdef memoryview view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


cdef class Chunker:
    cdef memoryview _view
    cdef object _head
    cdef Py_ssize_t _head_size
    cdef Py_ssize_t _chunk_size
    cdef Py_ssize_t _offset
    cdef Py_ssize_t _size

    def __init__(self, flag, payload, chunk_size, prefix=b""):
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._view = _byte_view(payload)
        self._size = self._view.nbytes
        self._head = encode_header(flag, len(prefix) + self._size) + prefix
        self._head_size = len(self._head)
        self._chunk_size = chunk_size
        self._offset = 0

    @property
    def total(self):
        return self._head_size + self._size

    @property
    def remaining(self):
        return (self._head_size if self._head is not None else 0) + self._size - self._offset

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t offset = self._offset
        cdef Py_ssize_t stop
        head = self._head
        if head is not None:
            self._head = None
            return head
        if offset >= self._size:
            raise StopIteration
        stop = min(offset + self._chunk_size, self._size)
        self._offset = stop
        return self._view[offset:stop]


cdef class Reassembler:
    cdef Py_ssize_t _max_size
    cdef bytearray _header
    cdef int _flag
    cdef bytearray _body
    cdef Py_ssize_t _filled
    cdef object _error

    def __init__(self, max_size):
        if max_size < 0 or max_size > MAX_DATA_LEN:
            raise ValueError(f"max_size must be between 0 and {MAX_DATA_LEN}, got {max_size}")
        self._max_size = max_size
        self._header = bytearray()
        self._flag = -1
        self._body = None
        self._filled = 0
        self._error = None

    @property
    def expected(self):
        return -1 if self._body is None else len(self._body)

    @property
    def received(self):
        return self._filled

    @property
    def done(self):
        return self._body is not None and self._filled == len(self._body)

    cdef inline int _raise_if_failed(self) except -1:
        if self._error is not None:
            raise self._error.with_traceback(None)
        return 0

    def feed(self, data):
        self._raise_if_failed()
        cdef Py_buffer view
        cdef const char* src
        cdef Py_ssize_t size, missing, room
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            src = <const char*>view.buf
            size = view.len
            if self._body is None:
                missing = min(C_HEADER_SIZE - len(self._header), size)
                self._header += (<const char*>src)[:missing]
                src += missing
                size -= missing
                if len(self._header) < C_HEADER_SIZE:
                    return False
                try:
                    flag, data_len = decode_header(self._header, self._max_size)
                except Exception as exc:
                    self._error = exc
                    raise
                self._flag = flag
                # Uninitialised: every byte is written before finish() hands the buffer out.
                self._body = PyByteArray_FromStringAndSize(NULL, data_len)
            room = len(self._body) - self._filled
            if size > room:
                self._error = MalformedMessage(f"{size - room} bytes after the end of the message")
                raise self._error
            memcpy(PyByteArray_AS_STRING(self._body) + self._filled, src, size)
            self._filled += size
            return self._filled == len(self._body)
        finally:
            PyBuffer_Release(&view)

    def finish(self):
        self._raise_if_failed()
        if self._body is None:
            self._error = TruncatedFrame(
                f"stream ended inside a frame header, after {len(self._header)} bytes"
            )
            raise self._error
        if self._filled != len(self._body):
            self._error = TruncatedFrame(
                f"stream ended after {self._filled} of {len(self._body)} message bytes"
            )
            raise self._error
        return self._flag, self._body
