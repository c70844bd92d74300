"""A real MLflow tracking server and model registry for tests: ``mlflow server`` with a
SQLite backend and its artifacts in S3 (the tests' moto server), served through the
tracking server (``--serve-artifacts``, the default), on a free loopback port.

Nothing is faked: it is the ``mlflow`` package's own server; clients talk to it over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.s3 import S3Endpoint

__all__ = ["MlflowServer", "start_mlflow"]


@dataclass(frozen=True)
class MlflowServer:
    url: str  # http://127.0.0.1:<port>
    artifacts: str  # s3://<bucket>/<prefix>
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def start_mlflow(
    s3: S3Endpoint, workdir: Path, prefix: str = "mlflow", timeout: float = 120.0
) -> Iterator[MlflowServer]:
    """Run ``mlflow server`` for the ``with`` block; its log is ``workdir/mlflow.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    artifacts = f"s3://{s3.bucket}/{prefix}"
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
        "MLFLOW_S3_IGNORE_TLS": "true",
    }
    log = workdir / "mlflow.log"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not come up on {url}: {log.read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield MlflowServer(url, artifacts, log)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
