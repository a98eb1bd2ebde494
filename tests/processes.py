"""Programs run as real processes by the tests: every wait on their output has a deadline."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import qp2p

__all__ = ("ENV", "Running", "env_without")

# For children: the package directory's parent first on their path, so they import this very qp2p.
_ROOT = str(Path(qp2p.__file__).resolve().parent.parent)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}


def env_without(module: str, folder: Path) -> dict[str, str]:
    """``ENV``, but a child's ``import module`` raises ImportError: a stand-in that does, in
    ``folder``, comes first on its path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(f"raise ImportError('{module} is hidden by the test')\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(folder), ENV["PYTHONPATH"]])}


class Running:
    """A process with pipes; threads read its stdout line by line and keep its stderr, so that
    no read ever blocks a test past its deadline."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.name = " ".join(self.argv)[-80:]  # the end names the program and its arguments
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()  # None: stdout ended
        self._stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self._ended = False

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.append(line.rstrip("\n"))

    def next(self, timeout: float = 30.0) -> str:
        """The next line of stdout; AssertionError if none comes in time or stdout ended."""
        if self._ended:
            raise AssertionError(f"{self.name!r} ended its stdout already{self._last_words()}")
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no line from {self.name!r} within {timeout} s{self._last_words()}"
            ) from None
        if line is None:
            self._ended = True
            raise AssertionError(f"{self.name!r} ended its stdout{self._last_words()}")
        return line

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """Lines of stdout are taken until one starts with ``prefix``, which is returned."""
        deadline = time.monotonic() + timeout
        skipped: list[str] = []
        while True:
            try:
                line = self.next(max(0.0, deadline - time.monotonic()))
            except AssertionError as exc:
                raise AssertionError(f"no line starting {prefix!r} after {skipped}: {exc}") from None
            if line.startswith(prefix):
                return line
            skipped.append(line)

    def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status, once the process exited and its output was read to the end."""
        status = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
            assert not reader.is_alive(), f"{self.name!r}: output still open {timeout} s after exit"
        return status

    def rest(self) -> Iterator[str]:
        """The stdout lines not taken yet, once the process ended (after ``wait``)."""
        while not self._ended and (line := self._lines.get_nowait()) is not None:
            yield line
        self._ended = True

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr)

    def _last_words(self) -> str:
        status = self.process.poll()
        return ("" if status is None else f"; exited with {status}") + f"; stderr: {self.stderr[-2000:]!r}"

    def stop(self) -> None:
        """Kill it if it still runs, and close its pipes (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for reader in self._readers:
            reader.join(30)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
