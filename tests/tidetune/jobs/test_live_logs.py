"""``tidetune logs`` on a cluster job, with the pods and the API answered in memory: the
running attempt's log with the kubelet's timestamps interleaved with the timeline, ``-f``
from before the pod exists until the job ends, and what is read from the run location."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tidetune.jobs import logs
from tidetune.jobs.source import ClusterJob, JobError

NS = "team-a"


def pod(name: str, attempt: int, phase: str = "Running", uid: str | None = None) -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=name,
            uid=uid or f"uid-{name}",
            labels={"tidetune.io/job": "poem", "tidetune.io/attempt": str(attempt)},
            creation_timestamp=None,
            deletion_timestamp=None,
        ),
        status=SimpleNamespace(phase=phase),
    )


class Stream:
    """A followed log: its lines arrive split across chunks; the last one only once
    ``later`` is set (as a line that the trainer prints later)."""

    def __init__(self, data: bytes, later: threading.Event) -> None:
        self.data = data
        self.later = later

    def stream(self, size: int) -> Iterator[bytes]:
        *first, last = self.data.splitlines(keepends=True)
        head = b"".join(first)
        for i in range(0, len(head), 7):
            yield head[i : i + 7]
        assert self.later.wait(10)
        yield last


class Core:
    def __init__(self, pods: list[Any], logs: dict[str, str], forbidden: bool = False) -> None:
        self.pods = pods
        self.logs = logs
        self.forbidden = forbidden
        self.calls: list[dict[str, Any]] = []
        self.later = threading.Event()

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        assert (namespace, label_selector) == (NS, "tidetune.io/job=poem")
        if self.forbidden:
            raise SimpleError(403, 'pods is forbidden: User "bob" cannot list resource "pods"')
        return SimpleNamespace(items=list(self.pods))

    def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> Any:
        self.calls.append({"name": name, **kw})
        # as the real client is called: raw bytes (it would decode them as str(bytes))
        assert kw["container"] == "pytorch" and kw["timestamps"] is True
        assert kw["_preload_content"] is False
        data = self.logs[name].encode()
        return Stream(data, self.later) if kw.get("follow") else SimpleNamespace(data=data)


class SimpleError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = json.dumps({"message": message})


def job(
    core: Core,
    phase: str,
    timeline: list[tuple[str, str, str]],
    root: Path,
    attempt: int = 1,
) -> ClusterJob:
    body = {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "poem", "namespace": NS, "uid": "u1"},
        "spec": {"output": {"uri": f"file://{root}"}},
        "status": {
            "phase": phase,
            "attempt": attempt,
            "outputUri": f"file://{root}/{NS}/poem/u1/",
            "timeline": [
                {"time": t, "type": kind, "reason": kind, "message": msg}
                for t, kind, msg in timeline
            ],
        },
    }
    return ClusterJob(body=body, api=SimpleNamespace(core=core))


STARTED = ("2026-01-01T00:00:01Z", "Started", "poem-1 is running")
CHECKPOINT = ("2026-01-01T00:00:03Z", "Checkpoint", "step 2")
CANCELLED = ("2026-01-01T00:00:06Z", "Cancelled", "cancelled")
POD_LOG = (
    "2026-01-01T00:00:02.123456789Z 00:00:02,123 [rank 0] INFO step 1/9\n"
    "2026-01-01T00:00:02.900000000Z Traceback-free continuation\n"
    "2026-01-01T00:00:04.000000001Z 00:00:04,000 [rank 0] INFO step 2/9\n"
)


def test_kubelet_timestamps_are_split_off() -> None:
    when, text = logs.split_kubelet_stamp("2026-01-01T00:00:02.123456789Z hello  world")
    assert text == "hello  world" and when is not None
    assert when.isoformat() == "2026-01-01T00:00:02.123456+00:00"
    assert logs.split_kubelet_stamp("no stamp") == (None, "no stamp")


def test_the_running_attempt_is_read_from_its_pod_interleaved_with_the_timeline(
    tmp_path: Path,
) -> None:
    core = Core([pod("old", 0, "Failed"), pod("poem-1-master-0", 1)], {"poem-1-master-0": POD_LOG})
    out = io.StringIO()
    assert (
        logs.show(job(core, "Running", [STARTED, CHECKPOINT], tmp_path), None, None, False, out)
        == 0
    )
    assert out.getvalue().splitlines() == [
        "2026-01-01T00:00:01Z ── Started (Started): poem-1 is running",
        "00:00:02,123 [rank 0] INFO step 1/9",
        "Traceback-free continuation",
        "2026-01-01T00:00:03Z ── Checkpoint (Checkpoint): step 2",
        "00:00:04,000 [rank 0] INFO step 2/9",
    ]
    assert [c["name"] for c in core.calls] == ["poem-1-master-0"]


def test_follow_waits_for_the_pod_streams_it_and_ends_with_the_job(tmp_path: Path) -> None:
    core = Core([], {"poem-1-master-0": POD_LOG})
    launched = ("2026-01-01T00:00:00Z", "Launched", "PyTorchJob poem-1 created")
    views = [
        job(core, "Pending", [launched], tmp_path),  # the first look: nothing runs yet
        job(core, "Running", [launched, STARTED], tmp_path),
        job(core, "Running", [launched, STARTED, CHECKPOINT], tmp_path),
        job(core, "Cancelled", [launched, STARTED, CHECKPOINT, CANCELLED], tmp_path),
    ]
    looks = iter(views[1:])
    # the trainer also keeps its log in the run location: the attempt followed live from
    # its pod is not printed again from there
    kept = tmp_path / NS / "poem" / "u1" / "run" / "logs" / "attempt-1" / "rank-0.log"

    def refresh() -> ClusterJob:
        view = next(looks, views[-1])
        if view.phase == "Running":
            core.pods = [pod("poem-1-master-0", 1)]
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text("2026-01-01T00:00:02.123Z [rank 0] INFO step 1/9\n")
            if CHECKPOINT in [(e["time"], e["type"], e["message"]) for e in view.timeline()]:
                core.later.set()  # step 2's line comes after the checkpoint
        if view.phase == "Cancelled":
            core.pods = []
        return view

    out = io.StringIO()
    assert logs.show(views[0], None, None, True, out, refresh=refresh, interval=0.01) == 0
    assert out.getvalue().splitlines() == [
        "2026-01-01T00:00:00Z ── Launched (Launched): PyTorchJob poem-1 created",
        "2026-01-01T00:00:01Z ── Started (Started): poem-1 is running",
        "00:00:02,123 [rank 0] INFO step 1/9",
        "Traceback-free continuation",
        "2026-01-01T00:00:03Z ── Checkpoint (Checkpoint): step 2",
        "00:00:04,000 [rank 0] INFO step 2/9",
        "2026-01-01T00:00:06Z ── Cancelled (Cancelled): cancelled",
    ]
    assert [c.get("follow") for c in core.calls] == [True]  # streamed once


def test_follow_without_access_to_pods_reads_the_kept_log_as_it_grows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    core = Core([], {}, forbidden=True)
    kept = tmp_path / NS / "poem" / "u1" / "run" / "logs" / "attempt-1" / "rank-0.log"
    kept.parent.mkdir(parents=True)
    kept.write_text("2026-01-01T00:00:02.000Z [rank 0] INFO step 1/9\n")
    views = [
        job(core, "Running", [STARTED], tmp_path),
        job(core, "Succeeded", [STARTED, ("2026-01-01T00:00:09Z", "Succeeded", "done")], tmp_path),
    ]
    looks = iter(views[1:])

    def refresh() -> ClusterJob:
        kept.write_text(
            "2026-01-01T00:00:02.000Z [rank 0] INFO step 1/9\n"
            "2026-01-01T00:00:05.000Z [rank 0] INFO step 9/9\n"
        )
        return next(looks, views[-1])

    out = io.StringIO()
    assert logs.show(views[0], None, None, True, out, refresh=refresh, interval=0.01) == 0
    assert out.getvalue().splitlines() == [
        "2026-01-01T00:00:01Z ── Started (Started): poem-1 is running",
        "2026-01-01T00:00:02.000Z [rank 0] INFO step 1/9",
        "2026-01-01T00:00:05.000Z [rank 0] INFO step 9/9",
        "2026-01-01T00:00:09Z ── Succeeded (Succeeded): done",
    ]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tidetune logs: cannot list the pods of team-a/poem")


def test_no_pods_and_no_kept_logs_is_one_error_naming_both(tmp_path: Path) -> None:
    core = Core([], {}, forbidden=True)
    with pytest.raises(JobError) as caught:
        logs.show(job(core, "Running", [STARTED], tmp_path), None, None, False, io.StringIO())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("team-a/poem: no logs in the run location yet")
    assert message.endswith(
        "; and cannot list the pods of team-a/poem: forbidden; ask for access to it "
        '(pods is forbidden: User "bob" cannot list resource "pods")'
    )
