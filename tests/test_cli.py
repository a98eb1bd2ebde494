"""The ``qp2p`` command line, run as real processes: ``listen``, ``send``, ``ca`` and ``cert``."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from processes import ENV, Running, env_without

import qp2p
from qp2p import _files, tls

pytestmark = pytest.mark.timeout(180)


def qp2p_command(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "qp2p", *args]  # -P: never the source tree in the current folder


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(qp2p_command(*args), env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def listeners() -> Iterator[Callable[..., Running]]:
    """Starts ``qp2p listen`` on a free port, with more arguments; whatever still runs at the
    end is killed."""
    started: list[Running] = []

    def start(*args: str) -> Running:
        started.append(Running(qp2p_command("listen", "--port", "0", *args), env=ENV))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def listener(listeners: Callable[..., Running]) -> Running:
    return listeners()


def test_listen_send_and_request(listener: Running) -> None:
    first = listener.next()
    assert first.startswith("listening on 127.0.0.1:"), first
    addr = first.split()[-1]

    sent = run("send", addr, "hello there", timeout=30)
    assert sent.returncode == 0, sent.stderr
    assert "sent 11 bytes" in sent.stdout
    line = listener.next()
    assert " message 11 bytes " in line and "b'hello there'" in line

    answered = run("send", addr, "ping \u00e9", "--request", "--timeout", "10", timeout=30)
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == "ping \u00e9\n"
    line = listener.next()
    assert " request 7 bytes " in line and "b'ping \\xc3\\xa9'" in line

    listener.process.send_signal(signal.SIGINT)
    assert listener.wait(timeout=10) == 0
    assert listener.stderr == ""


@pytest.mark.parametrize("kind", [[], ["--request"]], ids=["message", "request"])
def test_send_to_nobody_fails_fast(kind: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once the socket is closed: nothing listens there
    began = time.monotonic()
    result = run("send", f"127.0.0.1:{port}", "anyone?", *kind, "--timeout", "2", timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - began < 15
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr


def test_send_refuses_a_bad_address() -> None:
    result = run("send", "::1:4000", "hi", timeout=30)
    assert result.returncode == 2
    assert "[::1]:4000" in result.stderr


@pytest.mark.parametrize(
    "reply, shown",
    [
        ("\x1b]0;owned\x07\x1b[2J", "b'\\x1b]0;owned\\x07\\x1b[2J'"),  # retitles and clears a terminal
        ("two\nlines", "b'two\\nlines'"),
        ("\u202egnp.exe", "b'\\xe2\\x80\\xaegnp.exe'"),  # right-to-left override
        ("\udcff", "b'\\xff'"),  # an argument that is not UTF-8 is sent as its bytes
    ],
    ids=["escape-sequences", "newline", "bidi-control", "not-utf8"],
)
def test_send_request_shows_a_peer_reply_safely(listener: Running, reply: str, shown: str) -> None:
    addr = listener.next().split()[-1]
    answered = run("send", addr, reply, "--request", timeout=30)  # the listener echoes the request
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == shown + "\n"


# ---- files: qp2p send --file, received by qp2p listen ------------------------------------------

TQDM = pytest.mark.skipif(importlib.util.find_spec("tqdm") is None, reason="tqdm is not installed")


@pytest.mark.parametrize("bar", [pytest.param("tqdm", marks=TQDM), "plain"])
def test_send_file_is_saved_checked_and_timed(
    listeners: Callable[..., Running], tmp_path: Path, bar: str
) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    listener = listeners("--save-dir", str(saved))
    addr = listener.next().split()[-1]
    data = os.urandom(3 << 20)
    (tmp_path / "data.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    env = env_without("tqdm", tmp_path / "hidden") if bar == "plain" else ENV
    sent = subprocess.run(
        qp2p_command("send", addr, "--file", str(tmp_path / "data.bin")),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    timed, checked = sent.stdout.splitlines()
    assert re.fullmatch(rf"sent data.bin: 3145728 bytes in \d+\.\d\d s, \d+\.\d MB/s, to {addr}", timed), (
        timed
    )
    assert checked == f"sha256 {digest}: the receiver has the same"
    progress = sent.stderr.splitlines()[-1]
    if bar == "tqdm":
        assert "100%|" in progress and "3.00M/3.00M" in progress, sent.stderr
    else:
        assert progress == "sent 100% of 3145728 bytes", sent.stderr
    assert listener.next().endswith(" file 'data.bin' 3145728 bytes: receiving")
    assert listener.next().endswith(
        f" file 'data.bin' 3145728 bytes sha256 {digest}: saved as {saved / 'data.bin'}"
    )
    assert [path.name for path in saved.iterdir()] == ["data.bin"]  # no partial file left
    assert (saved / "data.bin").read_bytes() == data

    again = run("send", addr, "--file", str(tmp_path / "data.bin"), timeout=60)
    assert one_line_error(again) == "error: the receiver refused the file: 'data.bin' exists"
    assert (saved / "data.bin").read_bytes() == data


def test_listen_without_save_dir_checks_a_file_and_saves_nothing(listener: Running, tmp_path: Path) -> None:
    addr = listener.next().split()[-1]
    (tmp_path / "empty").write_bytes(b"")
    sent = run("send", addr, "--file", str(tmp_path / "empty"), timeout=60)
    assert sent.returncode == 0, sent.stderr
    empty = hashlib.sha256(b"").hexdigest()
    assert sent.stdout.splitlines()[1] == f"sha256 {empty}: the receiver has the same"
    listener.expect("127.0.0.1:")  # receiving
    assert listener.next().endswith(f"sha256 {empty}: not saved (listen has no --save-dir)")


async def test_send_file_fails_when_the_receiver_has_another_checksum(
    make_endpoint: Callable[..., Awaitable[qp2p.Endpoint]], tmp_path: Path
) -> None:
    receiver = await make_endpoint()

    async def answer() -> None:  # takes every piece, then claims the file was something else
        async for message in receiver.incoming_messages():
            if message.data.startswith(_files.BEGIN):
                await message.reply(b"ok")
            elif message.data == _files.END:
                await message.reply(b"sha256:" + b"0" * 64)

    (tmp_path / "data.bin").write_bytes(os.urandom(200_000))
    host, port = receiver.local_addr
    answering = asyncio.create_task(answer())
    try:
        sent = await asyncio.to_thread(
            run, "send", f"{host}:{port}", "--file", str(tmp_path / "data.bin"), timeout=60
        )
    finally:
        answering.cancel()
    assert sent.returncode == 1, sent.stdout + sent.stderr
    # The progress bar went first, on stderr too; then the one line of the error.
    assert sent.stderr.splitlines()[-1] == f"error: the receiver's SHA-256 differs: {'0' * 64}"
    assert "the receiver has the same" not in sent.stdout


@pytest.mark.parametrize(
    "header, reason",
    [
        ({"name": "../escape", "size": 1}, "not a plain file name: '../escape'"),
        ({"name": ".hidden", "size": 1}, "not a plain file name: '.hidden'"),
        ({"name": "a\x1b[2J", "size": 1}, "not a plain file name: 'a\\x1b[2J'"),
        ({"name": "x", "size": -1}, "a size must be a whole number of bytes"),
        ({"name": "x"}, "not a file header"),
    ],
    ids=["parent-folder", "hidden", "escape-sequence", "negative-size", "no-size"],
)
async def test_listen_refuses_a_file_it_must_not_write(
    listeners: Callable[..., Running],
    make_endpoint: Callable[..., Awaitable[qp2p.Endpoint]],
    tmp_path: Path,
    header: dict[str, object],
    reason: str,
) -> None:
    listener = listeners("--save-dir", str(tmp_path))
    host, _, port = listener.next().split()[-1].rpartition(":")
    connection = await (await make_endpoint()).connect_to((host, int(port)))
    reply = await connection.request(_files.BEGIN + json.dumps(header).encode(), timeout=10)
    assert reply == f"refused: {reason}".encode()
    assert list(tmp_path.iterdir()) == []


async def test_listen_refuses_a_file_whose_pieces_came_out_of_order(
    listeners: Callable[..., Running], make_endpoint: Callable[..., Awaitable[qp2p.Endpoint]], tmp_path: Path
) -> None:
    listener = listeners("--save-dir", str(tmp_path))
    host, _, port = listener.next().split()[-1].rpartition(":")
    connection = await (await make_endpoint()).connect_to((host, int(port)))
    assert await connection.request(_files.BEGIN + b'{"name": "x", "size": 4}', timeout=10) == b"ok"
    await connection.send(_files.PIECE + (2).to_bytes(8, "big") + b"yz", lane=0)
    await connection.send(_files.PIECE + (0).to_bytes(8, "big") + b"wx", lane=0)
    reply = await connection.request(_files.END, timeout=10)
    assert reply == b"refused: a piece at 2 came after 0 bytes"
    assert list(tmp_path.iterdir()) == []  # the partial file went too


async def test_a_file_under_way_when_listen_stops_leaves_nothing_behind(
    listeners: Callable[..., Running], make_endpoint: Callable[..., Awaitable[qp2p.Endpoint]], tmp_path: Path
) -> None:
    listener = listeners("--save-dir", str(tmp_path))
    host, _, port = listener.next().split()[-1].rpartition(":")
    connection = await (await make_endpoint()).connect_to((host, int(port)))
    assert await connection.request(_files.BEGIN + b'{"name": "x", "size": 4}', timeout=10) == b"ok"
    await connection.send(_files.PIECE + (0).to_bytes(8, "big") + b"wx", lane=0)
    assert listener.next().endswith(" file 'x' 4 bytes: receiving")
    assert [path.name for path in tmp_path.iterdir()][0].startswith(".x.")  # the partial file
    listener.process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(listener.wait) == 0, listener.stderr
    assert list(tmp_path.iterdir()) == []


# ---- certificates: never through a symlink, never half a pair, never past the CA ------------


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed on stderr (exit status 1, no traceback)."""
    assert result.returncode == 1, result.stdout + result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    return errors[0]


def new_ca(folder: Path, days: int = 3650) -> tls.Identity:
    """A CA valid for ``days``, laid out in ``folder`` as ``qp2p ca init`` does it, without a run."""
    folder.mkdir(exist_ok=True)
    ca = tls.new_ca(days=days)
    tls.write_identity(ca, folder / "ca.pem", folder / "ca.key")
    return ca


# Each command that writes a pair: the pair's name, and its arguments before the folder.
COMMANDS = {
    "cert": ("me", ["cert", "me", "--dir"]),
    "ca-init": ("ca", ["ca", "init"]),
    "ca-issue": ("node", ["ca", "issue", "node", "--dir"]),
}


@pytest.mark.parametrize("suffix", [".pem", ".key"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_dangling_symlink_is_neither_followed_nor_half_paired(
    tmp_path: Path, command: str, suffix: str
) -> None:
    folder = tmp_path / "net"
    folder.mkdir()
    if command == "ca-issue":
        new_ca(folder)
    name, args = COMMANDS[command]
    target, link = tmp_path / "elsewhere", folder / f"{name}{suffix}"
    link.symlink_to(target)
    error = one_line_error(run(*args, str(folder), timeout=60))
    assert str(link) in error and "exists" in error
    assert not target.exists() and link.is_symlink()
    partner = folder / f"{name}{'.key' if suffix == '.pem' else '.pem'}"
    assert not partner.exists()  # no orphaned key (or certificate) left behind


def test_files_made_before_a_failure_are_removed(tmp_path: Path) -> None:
    # The race the checks above cannot see: the second file appears after them.
    first, second = tmp_path / "node.key", tmp_path / "node.pem"
    second.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        tls._create_files([(first, b"key"), (second, b"certificate")])
    assert not first.exists() and second.read_bytes() == b"someone else's"


def test_ca_issue_clamps_validity_to_the_ca(tmp_path: Path) -> None:
    ca = new_ca(tmp_path, days=30)
    issued = run("ca", "issue", "node", "--dir", str(tmp_path), "--days", "36500", timeout=60)
    assert issued.returncode == 0, issued.stderr
    assert "clamped --days 36500 to 29" in issued.stdout
    node = tls.load_identity(str(tmp_path / "node.pem"), str(tmp_path / "node.key")).certificate
    assert node.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    assert node.not_valid_after_utc > ca.certificate.not_valid_after_utc - datetime.timedelta(days=2)


def test_ca_issue_refuses_a_ca_that_has_expired(tmp_path: Path) -> None:
    new_ca(tmp_path, days=0)  # valid until the moment it was made
    error = one_line_error(run("ca", "issue", "node", "--dir", str(tmp_path), timeout=60))
    assert "CA" in error and "qp2p ca init" in error
    assert not (tmp_path / "node.pem").exists() and not (tmp_path / "node.key").exists()


@pytest.mark.parametrize(
    "case",
    ["missing-dir", "dir-is-a-file", "no-ca", "broken-ca", "bad-ip", "bad-port"],
)
def test_errors_are_one_line(tmp_path: Path, case: str) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    (tmp_path / "ca.key").write_text("")
    args = {
        "missing-dir": ["cert", "me", "--dir", str(tmp_path / "missing")],
        "dir-is-a-file": ["ca", "init", str(a_file)],
        "no-ca": ["ca", "issue", "node", "--dir", str(tmp_path / "missing")],
        "broken-ca": ["ca", "issue", "node", "--dir", str(tmp_path)],
        "bad-ip": ["listen", "--ip", "not-an-ip"],
        "bad-port": ["listen", "--port", "70000"],
    }[case]
    one_line_error(run(*args, timeout=60))
