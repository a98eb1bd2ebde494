"""The bootstrap cache: the nodes seen reachable most recently, kept across restarts.

``BootstrapCache`` holds the decisions and no I/O: which peers stay (the most recently
reachable, a few per network prefix), and in which order to try them (a quality score with
a little exploration). ``CacheFile`` keeps it on disk: atomic writes under a file lock,
merged with what other processes wrote, and a damaged file set aside instead of trusted.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import importlib
import ipaddress
import json
import logging
import math
import os
import random
import re
import reprlib
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from qp2p.errors import Error

__all__ = (
    "FORMAT_VERSION",
    "LOCKING",
    "MAX_CLOCK_SKEW",
    "MAX_COUNT",
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "MAX_HOST_CHARS",
    "MAX_RTT",
    "BootstrapCache",
    "CacheEntry",
    "CacheFile",
    "CacheFileError",
    "CacheFormatError",
    "prefix_of",
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
FORMAT_VERSION = 1
FILE_NAME = "bootstrap_cache.json"
# A peer's score halves for every this many seconds since it was last reachable ...
HALF_LIFE = 6 * 3600.0
# ... and for every failure since its last success.
FAILURE_PENALTY = 0.5
# The chance that a start tries one peer from outside the best few among the first ones.
EXPLORATION = 0.2
# The bounds of a file: a larger one is set aside unread, the entries after the first
# MAX_ENTRIES are dropped. The largest entry takes some 310 bytes, so a full cache fits.
MAX_ENTRIES = 10_000
MAX_FILE_BYTES = 4 * 1024 * 1024
# The bounds of an entry; one outside them is refused, in a file as from ``reachable``.
MAX_COUNT = 1_000_000  # successes and failures stop counting here
MAX_RTT = 600.0  # seconds; a slower connection counts as this slow
MAX_CLOCK_SKEW = 300.0  # how far a file's last_seen may lie ahead of our clock
MAX_HOST_CHARS = 64  # the longest IPv6 address with a scope, and then some
_FINGERPRINT = re.compile("[0-9a-f]{64}")


class CacheFormatError(Error):
    """A cache file that cannot be trusted: unreadable, truncated, or of another format."""


class CacheFileError(Error, OSError):
    """The cache's folder or files cannot be used: not ours, a symlink, or an I/O failure."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A node seen reachable: when, how often it answered or did not, and how fast.

    Every field is checked on creation (``ValueError``): the order, the wire encoding of
    fingerprints and eviction by age all rely on these bounds."""

    addr: Address
    fingerprint: str | None
    last_seen: float
    successes: int = 1
    failures: int = 0  # since its last success
    rtt: float | None = None

    def __post_init__(self) -> None:
        _check_address(self.addr)
        _check(_is_fingerprint(self.fingerprint), "fingerprint", self.fingerprint, "64 lowercase hex digits")
        _check(_is_number(self.last_seen, 0, math.inf), "last_seen", self.last_seen, "a time")
        _check(_is_int(self.successes, 0, MAX_COUNT), "successes", self.successes, f"0 to {MAX_COUNT}")
        _check(_is_int(self.failures, 0, MAX_COUNT), "failures", self.failures, f"0 to {MAX_COUNT}")
        _check(self.rtt is None or _is_number(self.rtt, 0, MAX_RTT), "rtt", self.rtt, f"0 to {MAX_RTT:g} s")

    def score(self, now: float) -> float:
        """Higher is better: recent, answering, and quick."""
        age = max(0.0, now - self.last_seen)
        recency = 0.5 ** (age / HALF_LIFE)
        reliability = FAILURE_PENALTY**self.failures * (1.0 - 1.0 / (self.successes + 2))
        speed = 1.0 / (1.0 + 10.0 * (self.rtt or 0.1))
        return float(recency * reliability * speed)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["addr"] = [self.addr[0], self.addr[1]]
        return data

    @classmethod
    def from_json(cls, data: Any, now: float | None = None) -> CacheEntry:
        """An entry of a cache file; ``CacheFormatError`` for one no node could have written,
        including one seen more than ``MAX_CLOCK_SKEW`` after ``now`` (default: the clock)."""
        try:
            _check(isinstance(data, dict), "entry", data, "an object")
            addr = data["addr"]
            _check(isinstance(addr, list) and len(addr) == 2, "addr", addr, "[host, port]")
            entry = cls(
                addr=(addr[0], addr[1]),
                fingerprint=data["fingerprint"],
                last_seen=data["last_seen"],
                successes=data["successes"],
                failures=data["failures"],
                rtt=data["rtt"],
            )
            limit = (time.time() if now is None else now) + MAX_CLOCK_SKEW
            _check(entry.last_seen <= limit, "last_seen", entry.last_seen, "in the past")
        except (KeyError, ValueError) as exc:
            raise CacheFormatError(f"bad cache entry {reprlib.repr(data)}: {exc}") from exc
        return entry


def _check(ok: bool, name: str, value: object, rule: str) -> None:
    """``ValueError`` unless ``ok``, naming the field, its value (shortened) and the rule."""
    if not ok:
        raise ValueError(f"{name} {reprlib.repr(value)} is not {rule}")


def _is_number(value: object, low: float, high: float) -> bool:
    """A finite int or float from ``low`` to ``high``; not a bool, which passes for an int."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _is_int(value: object, low: int, high: int) -> bool:
    """An int from ``low`` to ``high``; not a bool, nor a float that happens to be whole."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_fingerprint(value: object) -> bool:
    """None, or a SHA-256 digest as the wire and ``tls.fingerprint`` spell it."""
    return value is None or (isinstance(value, str) and _FINGERPRINT.fullmatch(value) is not None)


def _is_ip(value: object) -> bool:
    """An IPv4 or IPv6 address (a scope allowed), of a sane length."""
    if not isinstance(value, str) or len(value) > MAX_HOST_CHARS:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_address(addr: Address) -> None:
    """An IP address and a port 1 to 65535, as a node listens on."""
    _check(isinstance(addr, tuple) and len(addr) == 2, "address", addr, "(host, port)")
    host, port = addr
    _check(_is_ip(host), "host", host, "an IP address")
    _check(_is_int(port, 1, 0xFFFF), "port", port, "1 to 65535")


def prefix_of(host: str) -> str | None:
    """The network an operator is likely to hold whole: IPv4 /24 or IPv6 /48. None for
    loopback, private and link-local addresses, which a LAN or a test network shares."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if ip.is_loopback or ip.is_private or ip.is_link_local:
        return None
    length = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{length}", strict=False))


# Every trim asks for the prefix of every entry: remember those of a full cache and a file more.
_prefix = functools.lru_cache(maxsize=2 * MAX_ENTRIES)(prefix_of)


def _oldest(entries: Iterable[CacheEntry], count: int) -> list[CacheEntry]:
    """The ``count`` least recently reachable of ``entries``, in the order they came on a tie."""
    return heapq.nsmallest(count, entries, key=lambda e: e.last_seen)


class BootstrapCache:
    """Up to ``capacity`` nodes (at most ``MAX_ENTRIES``); at most ``per_prefix`` from one
    public /24 or /48."""

    def __init__(self, capacity: int = 200, per_prefix: int = 4) -> None:
        if not 1 <= capacity <= MAX_ENTRIES or per_prefix < 1:
            raise ValueError(f"capacity must be 1 to {MAX_ENTRIES} and per_prefix positive")
        self.capacity = capacity
        self.per_prefix = per_prefix
        self._entries: dict[Address, CacheEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, addr: object) -> bool:
        return addr in self._entries

    def get(self, addr: Address) -> CacheEntry | None:
        return self._entries.get(addr)

    def entries(self) -> list[CacheEntry]:
        """Every entry, most recently reachable first."""
        return sorted(self._entries.values(), key=lambda e: e.last_seen, reverse=True)

    def reachable(
        self, addr: Address, now: float, fingerprint: str | None = None, rtt: float | None = None
    ) -> None:
        """``addr`` was verified reachable as a node just now. ``ValueError`` for what no
        connection can report (the cache is unchanged); a connection time above ``MAX_RTT``
        counts as ``MAX_RTT``."""
        _check(_is_number(now, 0, math.inf), "now", now, "a time")
        _check(rtt is None or _is_number(rtt, 0, math.inf), "rtt", rtt, "a number of seconds")
        rtt = None if rtt is None else min(rtt, MAX_RTT)
        old = self._entries.get(addr)
        if old is None:
            entry = CacheEntry(addr, fingerprint, now, rtt=rtt)
        else:
            smoothed = rtt if old.rtt is None or rtt is None else 0.75 * old.rtt + 0.25 * rtt
            entry = replace(
                old,
                fingerprint=fingerprint or old.fingerprint,
                last_seen=max(now, old.last_seen),
                successes=min(old.successes + 1, MAX_COUNT),
                failures=0,
                rtt=smoothed if smoothed is not None else old.rtt,
            )
        self._put(entry)

    def unreachable(self, addr: Address) -> None:
        """An attempt to reach ``addr`` failed: it sinks in the order; it is not dropped, since
        being unreachable for a moment is common and eviction is by age."""
        old = self._entries.get(addr)
        if old is not None:
            self._entries[addr] = replace(old, failures=min(old.failures + 1, MAX_COUNT))

    def remove(self, addr: Address) -> None:
        self._entries.pop(addr, None)

    def _put(self, entry: CacheEntry) -> None:
        self._entries[entry.addr] = entry
        self._trim()

    def _trim(self) -> None:
        """Keep the ``per_prefix`` most recent of each public prefix, then the ``capacity`` most
        recent of all: one pass over the cache, however many entries came in."""
        groups: dict[str, list[CacheEntry]] = {}
        for entry in self._entries.values():
            prefix = _prefix(entry.addr[0])
            if prefix is not None:
                groups.setdefault(prefix, []).append(entry)
        for same in groups.values():
            for extra in _oldest(same, len(same) - self.per_prefix):
                del self._entries[extra.addr]
        for old in _oldest(self._entries.values(), len(self._entries) - self.capacity):
            del self._entries[old.addr]

    def order(self, now: float, rng: random.Random, first: int = 4) -> list[CacheEntry]:
        """The order to try peers in: best score first. With a small chance one peer from
        outside the best ``first`` takes the last of those places, so a cache that only ever
        tries its favourites still learns about the others."""
        ranked = sorted(self._entries.values(), key=lambda e: e.score(now), reverse=True)
        if len(ranked) > first and rng.random() < EXPLORATION:
            pick = rng.randrange(first, len(ranked))
            ranked.insert(first - 1, ranked.pop(pick))
        return ranked

    def merge(self, others: list[CacheEntry]) -> None:
        """Take in entries another process wrote; for a peer both know, the newer one wins."""
        for entry in others:
            mine = self._entries.get(entry.addr)
            if mine is None or entry.last_seen > mine.last_seen:
                self._entries[entry.addr] = entry
        self._trim()

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "peers": [e.to_json() for e in self.entries()]}

    @staticmethod
    def parse(text: str, now: float | None = None) -> list[CacheEntry]:
        """The sound entries of a cache file, each bad one and any after the first
        ``MAX_ENTRIES`` dropped (a warning names them); ``CacheFormatError`` for anything but a
        version-1 cache."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise CacheFormatError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("peers"), list):
            raise CacheFormatError("not a bootstrap cache")
        if data.get("version") != FORMAT_VERSION:
            raise CacheFormatError(f"cache format {data.get('version')!r}, this qp2p reads {FORMAT_VERSION}")
        peers = data["peers"]
        if len(peers) > MAX_ENTRIES:
            log.warning(
                "bootstrap cache: %d entries, dropped all after the first %d", len(peers), MAX_ENTRIES
            )
        now = time.time() if now is None else now
        entries, problems = [], []
        for item in peers[:MAX_ENTRIES]:
            try:
                entries.append(CacheEntry.from_json(item, now))
            except CacheFormatError as exc:
                problems.append(str(exc))
        if problems:
            log.warning("bootstrap cache: dropped %d bad entries: %s", len(problems), "; ".join(problems[:3]))
        return entries


class CacheFile:
    """The cache's file in ``directory``, shared safely by any number of endpoints and processes.

    Every access holds an exclusive lock on a separate lock file. ``save`` reads what is on
    disk, merges it with the cache, and replaces the file atomically (temporary file, fsync,
    rename, fsync of the folder), so a reader sees the old file or the new one, never a mix,
    and no process loses another's entries. A file that does not parse is renamed aside
    (``*.damaged-<time>``) with a warning, and the cache starts empty.

    The folder is created private (0o700) and used only if it is a real folder of ours; no
    file in it is opened through a symlink. A folder or file that cannot be used is logged
    as a ``CacheFileError`` and skipped: the cache only speeds up the next start.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME

    def load(self, cache: BootstrapCache) -> None:
        """Merge what the file holds into ``cache``."""
        with self._guarded("loaded"), self._locked():
            cache.merge(self._read())

    def save(self, cache: BootstrapCache) -> None:
        """Merge the file into ``cache``, then write ``cache`` over the file, atomically."""
        with self._guarded("saved"), self._locked():
            cache.merge(self._read())
            self._write(cache)

    @contextlib.contextmanager
    def _guarded(self, done: str) -> Iterator[None]:
        """Log an ``OSError`` as a ``CacheFileError`` instead of raising it out of the endpoint."""
        try:
            yield
        except OSError as exc:
            error = exc if isinstance(exc, CacheFileError) else CacheFileError(f"{self.directory}: {exc}")
            log.warning("bootstrap cache not %s: %r", done, error)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._make_folder()
        lock = _open(self.directory / (FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT)
        try:
            _LOCK.acquire(lock)
            try:
                yield
            finally:
                _LOCK.release(lock)
        finally:
            os.close(lock)

    def _make_folder(self) -> None:
        """Create the folder private to us; refuse a symlink or someone else's folder, where
        another user could plant the files we open."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(self.directory)
        if stat.S_ISLNK(info.st_mode):
            raise CacheFileError(f"{self.directory} is a symlink")
        if not stat.S_ISDIR(info.st_mode):
            raise CacheFileError(f"{self.directory} is not a folder")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise CacheFileError(f"{self.directory} belongs to user {info.st_uid}, not to us")

    def _read(self) -> list[CacheEntry]:
        try:
            raw = _read_regular(self.path, MAX_FILE_BYTES + 1)  # a larger file is never read whole
        except FileNotFoundError:
            return []
        except OSError as exc:
            return self._set_aside(CacheFormatError(f"unreadable: {exc}"))
        if len(raw) > MAX_FILE_BYTES:
            return self._set_aside(CacheFormatError(f"larger than {MAX_FILE_BYTES} bytes"))
        try:
            return BootstrapCache.parse(raw.decode())
        except UnicodeDecodeError as exc:
            return self._set_aside(CacheFormatError(f"not UTF-8: {exc}"))
        except CacheFormatError as exc:
            return self._set_aside(exc)

    def _set_aside(self, error: CacheFormatError) -> list[CacheEntry]:
        aside = self.path.with_name(f"{FILE_NAME}.damaged-{time.time():.0f}")
        with contextlib.suppress(OSError):
            os.replace(self.path, aside)  # a symlink is moved, not what it points to
        log.warning(
            "bootstrap cache %s is damaged (%s); moved it to %s and started empty", self.path, error, aside
        )
        return []

    def _write(self, cache: BootstrapCache) -> None:
        """Write a new temporary file of an unguessable name (never through a planted
        symlink), fsync it, rename it over the file, and fsync the folder."""
        temporary = self.path.with_name(f"{FILE_NAME}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        out = _open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(out, "wb") as file:
                file.write(json.dumps(cache.to_json(), indent=1).encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_folder(self.directory)


@dataclass(frozen=True, slots=True)
class _Locking:
    """An exclusive lock on an open file that waits for its holder, as this platform has it."""

    name: str
    acquire: Callable[[int], None]
    release: Callable[[int], None]


def _posix_locking() -> _Locking | None:
    """``fcntl.flock`` on the whole file: Linux, macOS and the BSDs."""
    try:
        fcntl = importlib.import_module("fcntl")
    except ImportError:
        return None
    return _Locking(
        "fcntl", lambda fd: fcntl.flock(fd, fcntl.LOCK_EX), lambda fd: fcntl.flock(fd, fcntl.LOCK_UN)
    )


def _windows_locking() -> _Locking | None:
    """``msvcrt.locking`` on the file's first byte: Windows."""
    try:
        msvcrt = importlib.import_module("msvcrt")
    except ImportError:
        return None

    def acquire(fd: int) -> None:
        while True:  # LK_LOCK gives up after ten tries a second apart: wait on
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError as exc:
                if exc.errno != errno.EDEADLK:
                    raise

    def release(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    return _Locking("msvcrt", acquire, release)


@functools.cache
def _warn_unlocked() -> None:
    """Once per process: where nothing locks, processes sharing a folder may lose each
    other's new entries (never tear the file, which is replaced whole)."""
    log.warning("no file locking on this platform: the bootstrap cache is saved without a lock")


_LOCK = (
    _posix_locking() or _windows_locking() or _Locking("none", lambda fd: _warn_unlocked(), lambda fd: None)
)
LOCKING = _LOCK.name  # how the cache's lock file is locked here: "fcntl", "msvcrt" or "none"

# Flags absent on some platforms: Windows has no O_NOFOLLOW (a symlink there takes a
# privilege to create) nor O_NONBLOCK, and needs O_BINARY for bytes to stay bytes.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def _open(path: Path, flags: int) -> int:
    """``os.open``, failing on a symlink at ``path``; a new file is ours alone (0o600)."""
    return os.open(path, flags | _NOFOLLOW | _BINARY, 0o600)


def _read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path``; ``OSError`` for anything else,
    a FIFO included (opened without blocking, then refused)."""
    with os.fdopen(_open(path, os.O_RDONLY | _NONBLOCK), "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return file.read(limit)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable. Windows cannot open a folder to fsync it."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
