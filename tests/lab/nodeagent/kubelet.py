"""The kubelet's HTTPS endpoint on ``<node address>:10250``: container logs (and /healthz).

``GET /containerLogs/{namespace}/{pod}/{container}`` with ``follow``, ``tailLines``,
``previous``, ``timestamps``, ``sinceSeconds``, ``sinceTime`` and ``limitBytes``, as the
API server's ``pods/log`` subresource proxies them (so ``kubectl logs`` works). The
certificate is self-signed; client certificates are not checked (a real kubelet
authenticates the API server and authorizes with SubjectAccessReviews).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import pathlib
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["KubeletServer", "LogSource", "self_signed"]

logger = logging.getLogger(__name__)
KUBELET_PORT = 10250
#: (namespace, pod, container, previous) → (log file or None, still written, error text)
LogSource = Callable[[str, str, str, bool], tuple[pathlib.Path | None, bool, str]]


def self_signed(directory: pathlib.Path, name: str, address: str) -> tuple[str, str]:
    """A self-signed serving certificate for ``address``; (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@lab")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(address))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def _parse(raw: bytes) -> tuple[str, bytes, bool] | None:
    """(timestamp, text, complete) of one CRI log line."""
    parts = raw.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 4:
        return None
    return parts[0].decode(), parts[3], parts[2] == b"F"


def _timestamp(text: str) -> float:
    trimmed = text.rstrip("Z")
    whole, _, fraction = trimmed.partition(".")
    moment = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


def log_lines(
    path: pathlib.Path, follow: Callable[[], bool] | None, stop: threading.Event
) -> Iterator[tuple[str, bytes]]:
    """(timestamp, line with newline) of a log file; while ``follow()`` says the container
    runs, waits for more."""
    pending = b""
    with path.open("rb") as handle:
        buffer = b""
        while not stop.is_set():
            chunk = handle.readline()
            if chunk:
                buffer += chunk
                if not buffer.endswith(b"\n"):
                    continue
                parsed = _parse(buffer)
                buffer = b""
                if parsed is None:
                    continue
                stamp, text, complete = parsed
                pending += text
                if complete:
                    yield stamp, pending + b"\n"
                    pending = b""
                continue
            if follow is None or not follow():
                if follow is not None:
                    time.sleep(0.2)  # the last lines of a process that just ended
                    rest = handle.read()
                    for line in (buffer + rest).splitlines():
                        parsed = _parse(line)
                        if parsed is not None:
                            yield parsed[0], pending + parsed[1] + b"\n"
                            pending = b""
                return
            time.sleep(0.2)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("kubelet %s: " + format, self.server.node, *args)

    def _error(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._error(200, "ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._error(
                404, f"the lab's node agent serves only /containerLogs and /healthz, not {url.path}"
            )
            return
        _, namespace, pod, container = parts

        def flag(name: str) -> bool:
            return query.get(name, ["false"])[-1].lower() in {"true", "1", ""}

        def number(name: str) -> int | None:
            values = query.get(name)
            if not values:
                return None
            try:
                return int(values[-1])
            except ValueError:
                return -1

        tail, since, limit = number("tailLines"), number("sinceSeconds"), number("limitBytes")
        if -1 in (tail, since, limit):
            self._error(400, "tailLines, sinceSeconds and limitBytes must be integers")
            return
        previous = flag("previous")
        path, live, error = self.server.logs(namespace, pod, container, previous)
        if path is None:
            # the kubelet: 404 for an unknown pod, 400 for a container without that log
            self._error(404 if "not found on this node" in error else 400, error)
            return
        since_at = None
        if since is not None:
            since_at = time.time() - since
        elif query.get("sinceTime"):
            since_at = _timestamp(query["sinceTime"][-1])
        timestamps = flag("timestamps")
        follow = flag("follow") and live

        def still_running() -> bool:
            return self.server.logs(namespace, pod, container, False)[1]

        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        stop = threading.Event()
        written = 0
        try:
            lines = list(log_lines(path, None, stop))
            if since_at is not None:
                lines = [(s, t) for s, t in lines if _timestamp(s) >= since_at]
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            stream: Iterator[tuple[str, bytes]] = iter(lines)
            if follow:
                consumed = len(list(log_lines(path, None, stop)))

                def more() -> Iterator[tuple[str, bytes]]:
                    yield from lines
                    for index, item in enumerate(log_lines(path, still_running, stop)):
                        if index >= consumed:
                            yield item

                stream = more()
            for stamp, text in stream:
                data = (stamp.encode() + b" " + text) if timestamps else text
                if limit is not None and written + len(data) > limit:
                    data = data[: max(limit - written, 0)]
                self.wfile.write(data)
                self.wfile.flush()
                written += len(data)
                if limit is not None and written >= limit:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            stop.set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int, node: str, logs: LogSource) -> None:
        self.node = node
        self.logs = logs
        super().__init__((address, port), _Handler)


class KubeletServer:
    """One node's endpoint (TLS) in a thread."""

    def __init__(
        self,
        node: str,
        address: str,
        certs: pathlib.Path,
        logs: LogSource,
        port: int = KUBELET_PORT,
    ) -> None:
        cert, key = self_signed(certs, node, address)
        self._server = _Server(address, port, node, logs)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"kubelet-{node}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
