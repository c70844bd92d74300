"""Each rank keeps its log in the run location, ``<run>/logs/attempt-<N>/rank-<R>.log``
(:func:`tidetune.layout.rank_log_key`), so that ``tidetune logs`` can show an attempt
whose pods are gone.

Every record of the trainer's loggers (and Python warnings) goes to that file as one line
``<UTC time> [rank R] LEVEL logger: message`` (times in RFC 3339 with milliseconds, so the
CLI can interleave ranks and the job's timeline); a traceback follows its line. On a local
store (``file://``, ``pvc://``) the line is appended at once. Object stores cannot append:
the log is kept in a local file and the whole file is uploaded every
``TIDETUNE_LOG_UPLOAD_SECONDS`` (default 5) when it changed, and once more at exit.
Shipping never fails the training: a storage error is reported once on stderr and the
next upload tries again.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from tidetune.layout import ATTEMPT_ENV, rank_log_key
from tidetune.storage import LocalStore, ObjectStore, StorageError, open_store

UPLOAD_SECONDS_ENV = "TIDETUNE_LOG_UPLOAD_SECONDS"


class UtcFormatter(logging.Formatter):
    """``2026-01-01T12:00:00.123Z [rank 0] INFO name: message``."""

    def __init__(self, rank: int) -> None:
        super().__init__(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class RankLog:
    """The handler on the root logger and, for object stores, the uploader thread."""

    def __init__(self, store: ObjectStore, key: str, rank: int, interval: float) -> None:
        self.store, self.key, self.interval = store, key, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._uploaded_size = -1
        self._warned = False
        if isinstance(store, LocalStore):
            self.path = store.path(key)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._local_dir: str | None = None
        else:
            self._local_dir = tempfile.mkdtemp(prefix="tidetune-log-")
            self.path = Path(self._local_dir) / f"rank-{rank}.log"
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(UtcFormatter(rank))
        self.handler.setLevel(logging.INFO)

    def start(self) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        if self._local_dir is not None:
            self._thread = threading.Thread(target=self._loop, name="rank-log", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.upload()

    def upload(self) -> None:
        """Upload the local file when it changed (object stores only)."""
        if self._local_dir is None:
            return
        try:
            self.handler.flush()
            size = self.path.stat().st_size
            if size == self._uploaded_size:
                return
            self.store.upload_file(self.path, self.key)
            self._uploaded_size = size
        except (OSError, StorageError) as e:
            if not self._warned:
                self._warned = True
                print(
                    f"tidetune: cannot keep this rank's log in the run location: {e}",
                    file=sys.stderr,
                )

    def close(self) -> None:
        """Stop the uploader, upload the last lines, detach the handler."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.upload()
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        if self._local_dir is not None:
            import shutil

            shutil.rmtree(self._local_dir, ignore_errors=True)


def install(run_uri: str, rank: int) -> RankLog | None:
    """Start keeping this rank's log under ``run_uri``; None when that is impossible
    (the reason is printed once; training goes on)."""
    try:
        attempt = int(os.environ.get(ATTEMPT_ENV) or 1)
        interval = float(os.environ.get(UPLOAD_SECONDS_ENV) or 5)
        store, key = open_store(run_uri)
        log = RankLog(store, ObjectStore.join(key, rank_log_key(attempt, rank)), rank, interval)
        log.start()
        return log
    except (OSError, ValueError, StorageError) as e:
        print(f"tidetune: cannot keep this rank's log in {run_uri}: {e}", file=sys.stderr)
        return None
