"""Every program in examples/, run end to end as real processes over UDP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import netlab
import pytest
from processes import ENV, Running, env_without

import qp2p

pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
README = EXAMPLES.parent / "README.md"

Start = Callable[..., Running]


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts ``examples/NAME`` with arguments (inside a namespace, given ``within``); whatever
    still runs at the end is killed."""
    started: list[Running] = []

    def run(
        name: str, *args: str, within: netlab.Namespace | None = None, env: dict[str, str] = ENV
    ) -> Running:
        argv = [sys.executable, str(EXAMPLES / name), *args]
        started.append(Running(within.command(argv) if within else argv, env=env))
        return started[-1]

    yield run
    for running in started:
        running.stop()


def test_every_example_is_short_and_says_what_it_shows() -> None:
    for path in sorted(EXAMPLES.glob("*.py")):
        source = path.read_text()
        assert source.startswith('"""'), f"{path.name} has no docstring at the top"
        assert "python examples/" in source.split('"""')[1], f"{path.name} does not say how to run it"
        if path.name != "demo.py":
            assert len(source.splitlines()) < 100, f"{path.name} is too long for an example"


# ---- chat ------------------------------------------------------------------------------------


def converse(listener: Running, connector: Running, listener_addr: str) -> str:
    """Both sides connect, lines cross both ways in order, the connector leaves; the address the
    listener saw the connector at."""
    connector_seen_at = listener.expect("* connected to ").split()[-1]
    assert connector.expect("* connected to ") == f"* connected to {listener_addr}"
    lines = [f"line {i} from the connector" for i in range(20)]
    connector.write("".join(f"{line}\n" for line in lines))
    assert [listener.next() for _ in lines] == [f"< {line}" for line in lines]
    listener.write("hi back\n\x1b[2J\n")  # the second line would clear a terminal
    assert connector.next() == "< hi back"
    assert connector.next() == "< '\\x1b[2J'"
    connector.write("last words\n")
    connector.close_stdin()  # at once: what it sent still arrives before it leaves
    assert connector.wait() == 0, connector.stderr
    assert listener.next() == "< last words"
    assert listener.next() == "* peer left"
    assert listener.wait() == 0, listener.stderr
    return connector_seen_at


def test_chat_over_loopback(start: Start) -> None:
    listener = start("chat.py", "--listen", "127.0.0.1:0")
    addr = listener.expect("* listening on ").split()[-1]
    assert addr.startswith("127.0.0.1:")
    connector = start("chat.py", "--connect", addr)
    assert converse(listener, connector, addr).startswith("127.0.0.1:")


@netlab.requires(*netlab.NAT)
def test_chat_with_one_peer_behind_a_nat(start: Start) -> None:
    with netlab.Namespace() as wan, netlab.Namespace() as router, netlab.Namespace() as lan:
        netlab.wire(router, "wan0", "198.18.7.1/24", wan, "eth0", "198.18.7.2/24")
        netlab.wire(router, "lan0", "10.7.0.1/24", lan, "eth0", "10.7.0.2/24")
        lan.ip("route", "add", "default", "via", "10.7.0.1")
        netlab.NatRouter(router, "lan0", "wan0")  # port-restricted cone: MASQUERADE
        listener = start("chat.py", "--listen", "198.18.7.2:0", within=wan)
        addr = listener.expect("* listening on ").split()[-1]
        connector = start("chat.py", "--connect", addr, within=lan)
        seen_at = converse(listener, connector, addr)
    # The listener talked to the NAT's public address, never to the host's own.
    assert seen_at.startswith("198.18.7.1:"), seen_at


# ---- send_file -------------------------------------------------------------------------------

TQDM = pytest.mark.skipif(importlib.util.find_spec("tqdm") is None, reason="tqdm is not installed")


@pytest.mark.parametrize("bar", [pytest.param("tqdm", marks=TQDM), "plain"])
def test_send_file_arrives_intact_with_progress(start: Start, tmp_path: Path, bar: str) -> None:
    data = os.urandom(5 << 20)
    source, copy = tmp_path / "source.bin", tmp_path / "copy.bin"
    source.write_bytes(data)
    env = env_without("tqdm", tmp_path / "hidden") if bar == "plain" else ENV
    receiver = start("send_file.py", "receive", str(copy), "127.0.0.1:0")
    addr = receiver.expect("listening on ").split()[-1]
    sender = start("send_file.py", "send", str(source), addr, env=env)
    assert sender.wait(timeout=120) == 0, sender.stderr
    digest = hashlib.sha256(data).hexdigest()
    throughput, checked = sender.rest()
    assert re.fullmatch(r"sent 5242880 bytes in \d+\.\d\d s: \d+\.\d MB/s", throughput), throughput
    assert checked == f"sha256 {digest}: the receiver has the same"
    assert receiver.wait() == 0, receiver.stderr
    assert receiver.next() == f"received 5242880 bytes, sha256 {digest}: intact"
    assert copy.read_bytes() == data
    progress = sender.stderr.splitlines()
    if bar == "tqdm":
        assert "100%|" in progress[-1] and "5.00M/5.00M" in progress[-1], progress
    else:
        assert progress[-1] == "sent 100%" and "sent 20%" in progress, progress


# ---- service ---------------------------------------------------------------------------------


def test_service_answers_three_clients_at_once(start: Start) -> None:
    server = start("service.py", "serve", "127.0.0.1:0")
    addr = server.expect("serving on ").split()[-1]
    clients = [start("service.py", "ask", addr, "--count", "50") for _ in range(3)]
    for client in clients:
        assert client.wait(timeout=60) == 0, client.stderr
        assert list(client.rest()) == ["101 of 101 replies right"]
    server.process.send_signal(signal.SIGINT)
    assert server.wait() == 0, server.stderr
    assert list(server.rest()) == ["served 303 requests from 3 clients"]


# ---- rejoin ----------------------------------------------------------------------------------


def test_rejoin_from_the_cache_alone_once_the_contact_is_gone(start: Start, tmp_path: Path) -> None:
    def node(name: str, *contact: str) -> tuple[Running, str]:
        running = start("rejoin.py", "--cache-dir", str(tmp_path / name), *contact)
        return running, running.expect("node at ").split()[-1]

    first, first_addr = node("first")
    assert first.next().startswith("the first node (")
    other, other_addr = node("other", "--contact", first_addr)
    assert other.expect("joined through ") == f"joined through {first_addr}"
    # First run: through the contact; the contact hands out the other node, which answers.
    rejoining, addr = node("rejoining", "--contact", first_addr)
    assert rejoining.expect("joined through ") == f"joined through {first_addr}"
    both = ", ".join(sorted([first_addr, other_addr], key=lambda addr: int(addr.rsplit(":", 1)[1])))
    assert rejoining.expect(f"cache: {both}")
    rejoining.close_stdin()
    assert rejoining.wait() == 0, rejoining.stderr
    assert list(rejoining.rest()) == [f"saved: {both}"]
    saved = json.loads((tmp_path / "rejoining" / "bootstrap_cache.json").read_text())["peers"]
    assert sorted(f"{host}:{port}" for host, port in (entry["addr"] for entry in saved)) == sorted(
        [first_addr, other_addr]
    )

    first.process.kill()  # the contact is gone for good
    first.wait()
    # Second run: no contact given, the cache alone.
    again, _ = node("rejoining")
    assert again.expect("joined through ") == f"joined through {other_addr}"
    for running in (again, other):
        running.close_stdin()
        assert running.wait() == 0, running.stderr


# ---- demo ------------------------------------------------------------------------------------

UVLOOP = pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")


@pytest.mark.parametrize("loop", [pytest.param("uvloop", marks=UVLOOP), "asyncio"])
def test_demo(start: Start, loop: str) -> None:
    demo = start("demo.py", "--loop", loop, "--nodes", "3", "--messages", "200", "--requests", "20")
    assert demo.wait(timeout=150) == 0, demo.stderr
    out = list(demo.rest())
    assert out[0] == f"qp2p {qp2p.__version__} demo, event loop: {loop}"
    assert out[1] == f"backend: {qp2p.BACKEND}"
    assert out[2].startswith("3 nodes on 127.0.0.1")
    totals = next(line for line in out if line.split()[:1] == ["all"])
    assert totals.split()[1:5] == ["1200", "1200", "120/120", "120"]
    assert out[-2].startswith("OK: all 3 nodes reported no errors; each of the 1200 messages"), out


def test_demo_fails_when_something_is_missing(start: Start) -> None:
    # Far more than two nodes can exchange in the time given: each times out, short.
    demo = start("demo.py", "--nodes", "2", "--messages", "10000000", "--timeout", "0.5")
    assert demo.wait(timeout=150) == 1, demo.stderr
    out = "\n".join(demo.rest())
    assert "\nFAILED:\n" in out and "timed out after 0.5 s" in out and "OK: all" not in out


# ---- the README's quick start ----------------------------------------------------------------


def fenced_after(marker: str) -> str:
    """The text of the code block that follows ``marker`` in the README."""
    lines = README.read_text().splitlines()
    start = lines.index(marker) + 1
    assert lines[start].startswith("```"), f"no code block right after {marker}"
    end = lines.index("```", start + 1)
    return "".join(f"{line}\n" for line in lines[start + 1 : end])


def test_the_readme_quick_start_prints_what_the_readme_says(tmp_path: Path) -> None:
    snippet = fenced_after("<!-- quick-start -->")
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 15, "no longer a dozen lines"
    (tmp_path / "hello.py").write_text(snippet)
    home = tmp_path / "home"  # the snippet never bootstraps, so it writes no bootstrap cache
    env = {**ENV, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    done = subprocess.run(
        [sys.executable, "hello.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == fenced_after("<!-- quick-start-output -->")
    assert not home.exists()
