"""The lab's process supervisor: children outlive the thread that asked for them, are
restarted when they die, and are all gone once it stops."""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import threading
import time

from tests.lab.processes import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _wait(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): look at its state
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state == "Z"


def test_child_started_from_a_short_lived_thread_survives_that_thread(
    tmp_path: pathlib.Path,
) -> None:
    supervisor = Supervisor(tmp_path)
    try:
        started: list[int] = []
        thread = threading.Thread(
            target=lambda: started.append(supervisor.add("sleeper", SLEEPER, {}).pid or 0)
        )
        thread.start()
        thread.join()
        time.sleep(0.5)  # PR_SET_PDEATHSIG would have fired by now
        proc = supervisor.processes["sleeper"]
        assert started[0] and proc.pid == started[0] and proc.restarts == 0
    finally:
        supervisor.stop(grace=2)


def test_a_killed_child_is_restarted_and_stop_ends_every_child(tmp_path: pathlib.Path) -> None:
    supervisor = Supervisor(tmp_path)
    proc = supervisor.add("sleeper", SLEEPER, {})
    first = proc.pid
    assert first is not None
    proc.signal(signal.SIGKILL)
    _wait(lambda: proc.pid is not None and proc.pid != first)
    assert proc.restarts == 1 and proc.exit_codes == [-signal.SIGKILL]
    second = proc.pid
    supervisor.stop(grace=2)
    assert second is not None and _gone(second)
    assert "starting sleeper (run 2)" in (tmp_path / "sleeper.log").read_text()


def test_adding_after_stop_is_refused(tmp_path: pathlib.Path) -> None:
    supervisor = Supervisor(tmp_path)
    supervisor.stop()
    try:
        supervisor.add("late", SLEEPER, {})
    except RuntimeError as exc:
        assert "stopped" in str(exc)
    else:
        raise AssertionError("a stopped supervisor started a process")
