"""The reward runtime as its own container: the sandbox host listening on a Unix socket,
started exactly as the pod's ``reward-runtime`` sidecar starts it (its command and its
environment from the operator's builder), and the trainer's reward calls going to it.

The trainer side of these tests has the storage keys in its environment, as a trainer
pod has them from the Secret; the hostile functions look for them and must not find
them. The tests run as root, so the host drops each connection to ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidetune.api.finetunejob import RlConfig
from tidetune.layout import REWARD_SOCKET_ENV
from tidetune_operator import builders
from tidetune_trainer.rl import sandbox as sandbox_module
from tidetune_trainer.rl.rewards import RewardError
from tidetune_trainer.rl.rules import build_reward_set
from tidetune_trainer.rl.sandbox import HOST_SCRIPT, Limits, Sandbox, UserFunction

SECRET = "s3cr3t-Key-sidecar-4b1d"
SOURCE = textwrap.dedent(
    """
    import glob, os, time

    def environ(prompts, completions, **cols):
        seen = " ".join(f"{k}={v}" for k, v in os.environ.items())
        found = SECRET in seen or "AWS_" in seen
        return [1.0 if found else 0.0] * len(completions)

    def proc_environ(prompts, completions, **cols):
        hits = 0
        for path in glob.glob("/proc/[0-9]*/environ"):
            try:
                if SECRET.encode() in open(path, "rb").read():
                    hits += 1
            except OSError:
                pass
        return [float(hits)] * len(completions)

    def parent(prompts, completions, **cols):
        return [float(os.getppid())] * len(completions)

    def whoami(prompts, completions, **cols):
        return [float(os.getuid())] * len(completions)

    def nproc(prompts, completions, **cols):
        import resource
        return [float(resource.getrlimit(resource.RLIMIT_NPROC)[0])] * len(completions)

    def sleeper(prompts, completions, **cols):
        time.sleep(3600)

    def length(prompts, completions, **cols):
        return [float(len(c)) for c in completions]
    """
).replace("SECRET", repr(SECRET))
NAMES = ["environ", "proc_environ", "parent", "whoami", "sleeper", "length", "nproc"]


class Runtime:
    """The sandbox host as the sidecar runs it (as root, or as ``uid`` — the container's
    ``runAsUser`` — with its socket folder and home its own)."""

    def __init__(self, root: Path, uid: int | None = None) -> None:
        self.socket = root / "run" / "sandbox.sock"
        # each connection's folder is entered as nobody: its parent must be traversable
        self.home = tempfile.mkdtemp(prefix="tidetune-reward-home-")
        os.chmod(self.home, 0o755)
        preexec = None
        if uid is not None:
            # pytest's folders are private to root: the socket goes where uid can write
            self.socket = Path(tempfile.mkdtemp(prefix="tidetune-reward-run-")) / "sandbox.sock"
            for d in (self.home, str(self.socket.parent)):
                os.chown(d, uid, uid)

            def preexec() -> None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)

        cmd = builders.reward_runtime_command()
        assert cmd[:4] == ["python", "-I", "-m", "tidetune_trainer.rl.sandbox_host"]
        # the module by its file: ``-I`` ignores PYTHONPATH, and the checkout under test
        # need not be the one installed in the environment
        cmd = [sys.executable, "-I", str(HOST_SCRIPT), *cmd[4:]]
        cmd[cmd.index("--listen") + 1] = str(self.socket)
        cmd[cmd.index("--home") + 1] = self.home
        # the container's environment: the builder's, plus the image's PATH
        env = {e["name"]: e["value"] for e in builders.reward_runtime_env()}
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        env["TMPDIR"] = env["HOME"] = self.home
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, preexec_fn=preexec)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the reward runtime did not start"
            time.sleep(0.05)

    def handlers(self) -> list[int]:
        out = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    stat = Path(f"/proc/{p}/stat").read_bytes()
                except OSError:
                    continue
                if int(stat[stat.rfind(b")") + 2 :].split()[1]) == self.proc.pid:
                    out.append(int(p))
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        shutil.rmtree(self.home, ignore_errors=True)
        if self.socket.parent.name.startswith("tidetune-reward-run-"):
            shutil.rmtree(self.socket.parent, ignore_errors=True)
        return code


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime(tmp_path_factory.mktemp("reward-runtime"))
    try:
        yield rt
    finally:
        if rt.proc.poll() is None:
            rt.stop()


@pytest.fixture
def trainer_env(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The trainer's environment in a pod: the Secret's keys and the socket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-sidecar-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv(REWARD_SOCKET_ENV, str(runtime.socket))
    return runtime


LIMITS = Limits(timeout_seconds=2, memory_mb=512)


def start(limits: Limits = LIMITS) -> Sandbox:
    fns = [
        UserFunction(f"spec.rl.rewards[{i}] (r/reward.py:{n})", "reward.py", SOURCE, n)
        for i, n in enumerate(NAMES)
    ]
    return Sandbox.start(fns, limits)


def call(sb: Sandbox, name: str) -> list[float]:
    return sb.call(NAMES.index(name), ["p", "p"], ["a", "bb"], {})[0]


def test_reward_calls_go_to_the_container_and_see_no_credentials(trainer_env: Runtime) -> None:
    sb = start()
    try:
        assert sb.runtime == "container" and sb.proc is None  # nothing started here
        assert sb.info.get("runtime") == "container"
        assert call(sb, "length") == [1.0, 2.0]
        assert call(sb, "environ") == [0.0, 0.0]
        assert call(sb, "proc_environ") == [0.0, 0.0]
        assert call(sb, "whoami") == [65534.0, 65534.0]
        # the call ran in a handler forked by the listening runtime, not by this process
        (handler,) = {int(x) for x in call(sb, "parent")}
        assert handler in trainer_env.handlers()
    finally:
        sb.close()


def test_a_call_past_its_limit_fails_fast_and_the_next_one_works(trainer_env: Runtime) -> None:
    sb = start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RewardError, match=r"timed out after 2 s \(wall clock\)") as err:
            call(sb, "sleeper")
        assert time.monotonic() - t0 < 2 + 8
        assert str(err.value).startswith("spec.rl.rewards[4] (r/reward.py:sleeper)")
        assert call(sb, "length") == [1.0, 2.0]
    finally:
        sb.close()


def test_a_lost_connection_is_reported_then_made_again(trainer_env: Runtime) -> None:
    sb = start()
    try:
        (handler,) = {int(x) for x in call(sb, "parent")}
        os.kill(handler, signal.SIGKILL)
        with pytest.raises(RewardError, match=r"closed the connection|went away"):
            call(sb, "length")
        (again,) = {int(x) for x in call(sb, "parent")}
        assert again != handler and again in trainer_env.handlers()
    finally:
        sb.close()


def test_the_job_rules_use_the_container(trainer_env: Runtime) -> None:
    rl = RlConfig.model_validate(
        {
            "rewards": [
                {"preset": "length-target", "params": {"target": 2}, "weight": 1.0},
                {
                    "function": {
                        "configMapRef": {"name": "r", "key": "reward.py"},
                        "entrypoint": "environ",
                    },
                    "weight": 10.0,
                },
            ],
            "rewardRuntime": {"timeoutSeconds": 5},
        }
    )
    rules = build_reward_set(rl, lambda name, key: SOURCE if name == "r" else None)
    try:
        per_rule, totals = rules.score(["p", "p"], ["ab", "abcd"], {})
        assert per_rule == [[1.0, 0.0], [0.0, 0.0]] and totals == [1.0, 0.0]
        box = rules.rules[1].fn.sandbox  # type: ignore[attr-defined]
        assert box.runtime == "container"
    finally:
        rules.close()


def test_no_runtime_listening_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_module, "START_SECONDS", 0.5)
    monkeypatch.setenv(REWARD_SOCKET_ENV, str(tmp_path / "nothing.sock"))
    with pytest.raises(RewardError, match=r"reward runtime container does not answer at .*nothing"):
        start()


def test_sigterm_stops_the_runtime_and_removes_the_socket(tmp_path: Path) -> None:
    rt = Runtime(tmp_path)
    assert rt.stop() == 0
    assert not rt.socket.exists()


def test_as_the_containers_own_user_calls_run_as_that_user_with_32_more_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar runs as ``REWARD_RUNTIME_UID``, not root. Where the kernel lets it make
    a user namespace (to cut the call's network), the call still runs as that uid — not
    the overflow id an unmapped namespace shows — and the fork-bomb limit is that uid's
    processes + 32, not every process on the node + 32."""
    uid = builders.REWARD_RUNTIME_UID
    rt = Runtime(tmp_path, uid=uid)
    monkeypatch.setenv(REWARD_SOCKET_ENV, str(rt.socket))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    sb = start()
    try:
        if sb.network == "isolated":  # the kernel permits unprivileged user namespaces
            assert sb.info["userns"] == "mapped", sb.info
        assert call(sb, "whoami") == [float(uid), float(uid)]
        assert call(sb, "environ") == [0.0, 0.0]
        everyone = sum(p.isdigit() for p in os.listdir("/proc"))
        (limit,) = set(call(sb, "nproc"))
        assert 32 < limit <= 32 + 8 < everyone + 32, (limit, everyone)
    finally:
        sb.close()
        rt.stop()
