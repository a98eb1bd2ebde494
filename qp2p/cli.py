"""The ``qp2p`` command line: ``info``, ``listen``, ``send``, ``ca`` and ``cert``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import qp2p
from qp2p import _files, _loops, _speedups, tls

Address = tuple[str, int]

# Bytes of a received message that ``listen`` shows.
SHOWN_BYTES = 32


def _info(_args: argparse.Namespace) -> int:
    import aioquic

    print(f"qp2p {qp2p.__version__}")
    print(f"backend: {_speedups.BACKEND}")
    print(f"event loop: {_loops.chosen(_args.loop)}")
    if _speedups.NO_EXTENSIONS:
        print("reason: QP2P_NO_EXTENSIONS is set (or the interpreter is not CPython)")
    elif _speedups.IMPORT_ERROR is not None:
        print(f"reason: the compiled modules did not import: {_speedups.IMPORT_ERROR}")
    for module in (_speedups.framing, _speedups.chunking, _speedups.retry, _speedups.packet):
        print(f"  {module.__name__}: {module.__file__}")
    print(f"aioquic {aioquic.__version__}, Python {sys.version.split()[0]}")
    return 0


# ---- addresses -----------------------------------------------------------------------------


def _address(text: str) -> Address:
    """``HOST:PORT`` (``[IPv6]:PORT``) as a tuple; argparse shows the error."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets, as [::1]:4000: {text!r}")
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def _format(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- listen --------------------------------------------------------------------------------


async def _listen(args: argparse.Namespace) -> int:
    """``qp2p listen``: serve until SIGINT or SIGTERM, then close the endpoint and exit 0; with
    ``--metrics-port``, its Prometheus metrics are served over HTTP as long."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with qp2p.Endpoint(qp2p.Config(local_ip=args.ip, local_port=args.port)) as endpoint:
        print(f"listening on {_format(endpoint.local_addr)}", flush=True)
        metrics = None
        if args.metrics_port is not None:
            from qp2p.metrics import start_metrics_server  # prometheus-client only when asked for

            metrics = start_metrics_server(endpoint, args.metrics_port, args.metrics_host)
            print(f"metrics on http://{_format(metrics.address)}/metrics", flush=True)
        try:
            async with asyncio.TaskGroup() as tasks:
                serving = tasks.create_task(_serve(endpoint, args.save_dir))
                await stop.wait()
                serving.cancel()
        finally:
            if metrics is not None:
                metrics.close()
    return 0


async def _serve(endpoint: qp2p.Endpoint, save_dir: Path | None = None) -> None:
    """Print every message; answer each request with its own bytes. Files go to ``_files``."""
    async for message in _files.Receiver(save_dir, _said).others(endpoint.incoming_messages()):
        data = message.data
        shown = repr(bytes(data[:SHOWN_BYTES])) + ("..." if len(data) > SHOWN_BYTES else "")
        kind = "request" if message.is_request else "message"
        print(f"{_format(message.src)} {kind} {len(data)} bytes {shown}", flush=True)
        if message.is_request:
            try:
                await message.reply(data)
            except qp2p.Error as exc:
                print(
                    f"cannot reply to {_format(message.src)}: {_one_line(exc)}", file=sys.stderr, flush=True
                )


def _said(message: qp2p.Message, text: str) -> None:
    """What the file receiver reports, after the address it came from."""
    print(f"{_format(message.src)} {text}", flush=True)


# ---- send ----------------------------------------------------------------------------------


async def _send(args: argparse.Namespace) -> int:
    """``qp2p send``: one message, request or file; a reply is shown as ``_shown`` makes it safe."""
    host, _ = args.addr
    config = qp2p.Config(local_ip="::" if ":" in host else "0.0.0.0", connect_timeout=args.timeout)
    if args.file is not None and args.request:
        raise ValueError("--request sends a MESSAGE, not a --file")
    async with qp2p.Endpoint(config) as endpoint:
        deadline = time.monotonic() + args.timeout
        connection = await endpoint.connect_to(args.addr)
        if args.file is not None:
            return await _send_file(connection, args.file, args.timeout)
        data = args.message.encode("utf-8", "surrogateescape")  # an argument that is not UTF-8: its bytes
        if args.request:
            reply = await connection.request(data, timeout=max(0.0, deadline - time.monotonic()))
            print(_shown(bytes(reply)))
        else:
            await connection.send(data)
            # send() returns once QUIC has the message; closing at once would discard it
            # before it is on the wire, so let the transmit it scheduled run first.
            await asyncio.sleep(0)
            print(f"sent {len(data)} bytes to {_format(connection.remote_addr)}")
    return 0


async def _send_file(connection: qp2p.Connection, path: Path, timeout: float) -> int:
    """``qp2p send --file``: the file, with a progress bar; its throughput once the receiver
    replied with the same SHA-256 (``SendError`` if it did not)."""
    began = time.perf_counter()
    size, digest = await _files.send_file(connection, path, timeout, _progress)
    seconds = time.perf_counter() - began
    rate = f"{size / seconds / 1e6:.1f} MB/s" if seconds > 0 else "-"
    print(f"sent {path.name}: {size} bytes in {seconds:.2f} s, {rate}, to {_format(connection.remote_addr)}")
    print(f"sha256 {digest}: the receiver has the same")
    return 0


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], object]]:
    """A progress bar on stderr, told of each piece's bytes: tqdm's when it is installed (the
    ``progress`` extra), else one percentage line."""
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        pass
    else:
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
            yield bar.update
        return
    done, shown = 0, -1

    def update(count: int) -> None:
        nonlocal done, shown
        done += count
        if (percent := 100 * done // max(1, total)) != shown:
            shown = percent
            print(f"\rsent {percent}% of {total} bytes", end="", file=sys.stderr, flush=True)

    try:
        yield update
    finally:
        if shown >= 0:
            print(file=sys.stderr)


def _shown(data: bytes) -> str:
    """A peer's bytes as UTF-8 text if every character is printable, else as a bytes literal:
    a peer must not be able to drive our terminal with escape sequences or fake our output."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data)
    return text if text.isprintable() else repr(data)


# ---- the parser ----------------------------------------------------------------------------


def _count(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``minimum`` to ``maximum``."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {minimum} to {maximum}: {value}")
        return value

    return integer


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _run(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """A command as ``main`` calls it: the coroutine run in a fresh event loop."""

    def run(args: argparse.Namespace) -> int:
        return _loops.run(command(args), args.loop)

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qp2p", description="Peer-to-peer messaging over QUIC.")
    parser.add_argument(
        "--loop",
        choices=_loops.LOOPS,
        default="auto",
        help="the event loop: uvloop if installed (auto, the default), or asyncio's own",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the version, the active backend and its modules")
    info.set_defaults(run=_info)

    listen = commands.add_parser(
        "listen", help="print every message received; answer each request with its own bytes"
    )
    listen.add_argument("--ip", default="127.0.0.1", help="address to bind (default: %(default)s)")
    listen.add_argument("--port", type=int, default=0, help="port to bind, 0 for any (default: %(default)s)")
    listen.add_argument(
        "--save-dir", type=Path, help="save the files peers send into this folder (else: checked, not saved)"
    )
    listen.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics over HTTP on this port, 0 for any (needs the metrics extra)",
    )
    listen.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="IP",
        help="address the metrics server binds (default: %(default)s; 0.0.0.0 lets anyone read them)",
    )
    listen.set_defaults(run=_run(_listen))

    send = commands.add_parser("send", help="send one message, a request and print its reply, or a file")
    send.add_argument("addr", type=_address, metavar="ADDR", help="HOST:PORT, or [IPv6]:PORT")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("message", nargs="?", metavar="MESSAGE", help="text to send, encoded as UTF-8")
    what.add_argument(
        "--file", type=Path, metavar="PATH", help="send a file (docs/files.md), with a progress bar"
    )
    send.add_argument("--request", action="store_true", help="send a request and print the reply")
    send.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="seconds to connect, and to get each reply (default: %(default)s)",
    )
    send.set_defaults(run=_run(_send))

    ca = commands.add_parser("ca", help="a network's own certificate authority (Trust.private_ca)")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_commands.add_parser("init", help="create DIR/ca.pem and DIR/ca.key")
    ca_init.add_argument("dir", metavar="DIR", type=Path)
    ca_init.set_defaults(run=_ca_init)
    ca_issue = ca_commands.add_parser(
        "issue", help="create DIR/NAME.pem and DIR/NAME.key, signed by DIR's CA"
    )
    ca_issue.add_argument("name", metavar="NAME", type=_file_name)
    ca_issue.add_argument("--dir", type=Path, default=Path("."), help="the CA's folder (default: .)")
    ca_issue.add_argument(
        "--days", type=_count(1, 36500), default=825, help="validity (default: %(default)s)"
    )
    ca_issue.set_defaults(run=_ca_issue)

    cert = commands.add_parser(
        "cert", help="create a self-signed NAME.pem and NAME.key (for Trust.pinned or encrypt_only)"
    )
    cert.add_argument("name", metavar="NAME", type=_file_name)
    cert.add_argument("--dir", type=Path, default=Path("."), help="where to write (default: .)")
    cert.set_defaults(run=_cert)
    return parser


def _file_name(text: str) -> str:
    if not text or "/" in text or text.startswith(".") or text == "ca":
        raise argparse.ArgumentTypeError(f"not usable as a file name here: {text!r}")
    return text


def _write(identity: tls.Identity, folder: Path, name: str) -> None:
    """Write NAME.pem and NAME.key (0600) into ``folder``: both, or neither if either name is taken."""
    certfile, keyfile = folder / f"{name}.pem", folder / f"{name}.key"
    tls.write_identity(identity, certfile, keyfile)
    print(f"wrote {certfile} and {keyfile}")
    print(f"fingerprint: {identity.fingerprint}")


def _ca_init(args: argparse.Namespace) -> int:
    """``qp2p ca init DIR``: a new CA in DIR (made 0700 if it is new)."""
    folder: Path = args.dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(tls.new_ca(), folder, "ca")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    """``qp2p ca issue NAME``: a node certificate from DIR's CA, expiring no later than the CA."""
    folder: Path = args.dir
    try:
        ca = tls.load_identity(str(folder / "ca.pem"), str(folder / "ca.key"))
    except qp2p.CertificateError as exc:
        raise qp2p.CertificateError(f"{exc} (create the CA with: qp2p ca init {folder})") from None
    days = _days_within(ca, args.days, folder)
    _write(tls.issue(ca, args.name, days=days), folder, args.name)
    if days < args.days:
        expires = ca.certificate.not_valid_after_utc
        print(
            f"clamped --days {args.days} to {days}: "
            f"the CA expires on {expires:%Y-%m-%d}, and {args.name} no later"
        )
    return 0


def _days_within(ca: tls.Identity, days: int, folder: Path) -> int:
    """``days``, or the whole days the CA has left if fewer: a certificate must not outlive its CA."""
    expires = ca.certificate.not_valid_after_utc
    days_left = (expires - datetime.datetime.now(datetime.UTC)) // datetime.timedelta(days=1)
    if days_left < 1:
        raise qp2p.CertificateError(
            f"the CA in {folder} is valid until {expires:%Y-%m-%d %H:%M} UTC: not a whole day left "
            "to issue for; create a new CA with: qp2p ca init"
        )
    return min(days, days_left)


def _cert(args: argparse.Namespace) -> int:
    """``qp2p cert NAME``: a self-signed certificate and key."""
    _write(tls.self_signed_identity(), args.dir, args.name)
    return 0


def _one_line(exc: BaseException) -> str:
    """An error's message on one printable line: it may quote a peer, so nothing raw passes."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status: 0, 1 when a command fails (one line
    on stderr, never a traceback), or argparse's 2 for a command line it cannot parse."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except (qp2p.Error, OSError, ValueError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return status
