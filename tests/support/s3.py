"""An S3 server for tests: moto's ``ThreadedMotoServer`` on a free loopback port.

moto does not check credentials (any non-empty pair works) and keeps everything in memory
for the life of the server. Talk to it with the ``minio`` client (``S3Endpoint.client()``) or
anything S3-compatible pointed at ``endpoint``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

__all__ = ["S3Endpoint", "start_s3"]


@dataclasses.dataclass(frozen=True)
class S3Endpoint:
    """Where the S3 server listens and the credentials to use."""

    endpoint: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    @property
    def host_port(self) -> str:
        """``127.0.0.1:<port>``, the form the minio client wants."""
        return self.endpoint.split("://", 1)[1]

    def client(self) -> Any:
        """A ``minio.Minio`` client for this endpoint (plain http)."""
        from minio import Minio

        return Minio(
            self.host_port,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def as_dict(self) -> dict[str, str]:
        """The ``s3`` block of ``lab.json``."""
        return {
            "endpoint": self.endpoint,
            "accessKey": self.access_key,
            "secretKey": self.secret_key,
            "bucket": self.bucket,
            "region": self.region,
        }

    def __repr__(self) -> str:  # never print the secret key
        return (
            f"S3Endpoint(endpoint={self.endpoint!r}, bucket={self.bucket!r},"
            f" access_key={self.access_key!r})"
        )


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_up(endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the S3 server at {endpoint} did not answer within {timeout} s"
                ) from None
            time.sleep(0.05)


@contextlib.contextmanager
def start_s3(
    bucket: str | None = "tidetune",
    *,
    host: str = "127.0.0.1",
    access_key: str = "tidetune-lab",
    secret_key: str | None = None,
    timeout: float = 15.0,
) -> Iterator[S3Endpoint]:
    """Run a moto S3 server on ``host:<free port>`` for the ``with`` block.

    Creates ``bucket`` (unless ``None``). Yields an :class:`S3Endpoint`; stops the server on
    exit.

    Raises:
        RuntimeError: the server did not come up within ``timeout`` seconds.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    port = _free_port(host)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://{host}:{port}"
        _wait_until_up(endpoint, timeout)
        info = S3Endpoint(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key or secrets.token_hex(16),
            bucket=bucket or "",
        )
        if bucket:
            client = info.client()
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
        yield info
    finally:
        server.stop()
