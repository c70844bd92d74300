"""The reward sandbox against hostile functions, and `tidetune rewards test`.

These run as root on the test machines, so the sandbox drops to ``nobody`` and gets a
network namespace; the assertions check the effects (nothing leaks, nothing hangs),
not the mechanism.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tidetune_trainer.rl.rewards import RewardError
from tidetune_trainer.rl.sandbox import Limits, Sandbox, UserFunction

SECRET = "s3cr3t-Key-9f8e7d"
HOSTILE = textwrap.dedent(
    """
    import os, glob, socket, time

    def environ(prompts, completions, **cols):
        found = any(SECRET in v for v in os.environ.values())
        return [1.0 if found else 0.0] * len(completions) + [float(len(os.environ))] * 0

    def env_names(prompts, completions, **cols):
        print(sorted(os.environ))
        return [0.0] * len(completions)

    def proc_environ(prompts, completions, **cols):
        hits, readable = 0, 0
        for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
            try:
                data = open(path, "rb").read()
            except OSError:
                continue
            readable += 1
            if SECRET.encode() in data:
                hits += 1
        print("readable", readable)
        return [float(hits)] * len(completions)

    def secret_file(prompts, completions, **cols):
        try:
            data = open(cols["path"][0]).read()
        except OSError as e:
            return [-1.0] * len(completions)
        return [1.0 if SECRET in data else 0.0] * len(completions)

    def connect(prompts, completions, **cols):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", int(cols["port"][0])))
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            return [1.0] * len(completions)
        except OSError as e:
            print("connect:", e)
            return [0.0] * len(completions)

    def endless(prompts, completions, **cols):
        while True:
            pass

    def sleeper(prompts, completions, **cols):
        time.sleep(3600)

    def hog(prompts, completions, **cols):
        blob = bytearray(10 * 1024 ** 3)
        return [float(len(blob))] * len(completions)

    def forkbomb(prompts, completions, **cols):
        while True:
            try:
                os.fork()
            except OSError:
                pass

    def whoami(prompts, completions, **cols):
        return [float(os.getuid())] * len(completions)

    def nan(prompts, completions, **cols):
        return [float("nan")] * len(completions)

    def short(prompts, completions, **cols):
        return [1.0]

    def words(prompts, completions, **cols):
        return ["high"] * len(completions)

    def raises(prompts, completions, **cols):
        table = {"a": 1}
        return [table[c] for c in completions]
    """
).replace("SECRET", repr(SECRET))
NAMES = [
    "environ",
    "env_names",
    "proc_environ",
    "secret_file",
    "connect",
    "endless",
    "sleeper",
    "hog",
    "forkbomb",
    "whoami",
    "nan",
    "short",
    "words",
    "raises",
]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    old = os.environ.get("AWS_SECRET_ACCESS_KEY")
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET  # as the trainer has it from the Secret
    fns = [
        UserFunction(f"spec.rl.rewards[{i}] (hostile/reward.py:{n})", "reward.py", HOSTILE, n)
        for i, n in enumerate(NAMES)
    ]
    sb = Sandbox.start(fns, Limits(timeout_seconds=3, memory_mb=512))
    try:
        yield sb
    finally:
        sb.close()
        if old is None:
            os.environ.pop("AWS_SECRET_ACCESS_KEY", None)
        else:
            os.environ["AWS_SECRET_ACCESS_KEY"] = old


def call(sb: Sandbox, name: str, **cols: object) -> list[float]:
    return sb.call(NAMES.index(name), ["p", "p"], ["a", "b"], {k: [v, v] for k, v in cols.items()})[
        0
    ]


def test_runs_as_another_user_without_the_environment(sandbox: Sandbox) -> None:
    assert os.geteuid() == 0, "the test machines run as root; the sandbox drops to nobody"
    assert call(sandbox, "whoami") == [65534.0, 65534.0]
    assert call(sandbox, "environ") == [0.0, 0.0]
    _, logs = sandbox.call(NAMES.index("env_names"), ["p"], ["a"], {})
    assert "AWS" not in logs and "TIDETUNE" not in logs and "HOME" in logs


def test_proc_environ_of_the_trainer_is_not_readable(sandbox: Sandbox) -> None:
    assert call(sandbox, "proc_environ") == [0.0, 0.0]


def test_secret_files_of_the_trainer_are_not_readable(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secretKey"
    secret.write_text(SECRET)
    secret.chmod(0o600)  # as a Secret volume mounts it (defaultMode 0600) for the trainer
    tmp_path.chmod(0o755)
    assert call(sandbox, "secret_file", path=str(secret)) == [-1.0, -1.0]


def test_no_network_not_even_the_s3_endpoint_on_loopback(sandbox: Sandbox) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def serve() -> None:
        server.settimeout(5)
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert sandbox.network == "isolated"
        assert call(sandbox, "connect", port=port) == [0.0, 0.0]
    finally:
        t.join()
        server.close()
    assert not accepted


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("endless", r"used more than 3 s of CPU|timed out after 3 s"),
        ("sleeper", r"timed out after 3 s \(wall clock\)"),
        ("hog", r"MemoryError"),
        ("forkbomb", r"timed out after 3 s|used more than 3 s of CPU"),
        ("nan", r"score 0 is nan; scores must be finite"),
        ("short", r"returned 1 scores for 2 completions"),
        ("words", r"score 0 is str"),
        ("raises", r"KeyError: 'b'\n  at reward.py, line \d+, in <listcomp>: return \[table\[c\]"),
    ],
)
def test_hostile_and_broken_functions_fail_fast_naming_the_rule(
    sandbox: Sandbox, name: str, message: str
) -> None:
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=message) as err:
        call(sandbox, name)
    assert time.monotonic() - t0 < 3 + 8
    assert str(err.value).startswith(
        f"spec.rl.rewards[{NAMES.index(name)}] (hostile/reward.py:{name})"
    )
    # the sandbox is still usable afterwards, and nothing of the call lingers
    assert call(sandbox, "whoami") == [65534.0, 65534.0]


def test_forkbomb_leaves_no_processes(sandbox: Sandbox) -> None:
    with pytest.raises(RewardError):
        call(sandbox, "forkbomb")
    mine = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == 65534:
                    mine.append(p)
            except OSError:
                pass
    assert mine == [str(sandbox.proc.pid)] if sandbox.proc else False, f"left: {mine}"


def test_load_errors_and_missing_requirements_are_reported() -> None:
    bad = UserFunction(
        "spec.rl.rewards[1] (m/reward.py:score)", "reward.py", "x = 1\ndef f(:\n", "score"
    )
    with pytest.raises(RewardError, match=r"rewards\[1\] .*cannot load reward.py: SyntaxError"):
        Sandbox.start([bad])
    missing = UserFunction(
        "spec.rl.rewards[0] (m/reward.py:score)",
        "reward.py",
        "def score(p, c, **k):\n    return [0.0] * len(c)\n",
        "score",
        ("surely-not-installed-pkg>=1", "numpy<0.1", "numpy"),
    )
    with pytest.raises(RewardError) as err:
        Sandbox.start([missing])
    msg = str(err.value)
    assert "surely-not-installed-pkg>=1 (not installed)" in msg
    assert "numpy<0.1 (installed: " in msg
    assert "numpy," not in msg and not msg.rstrip().endswith("numpy")
    nofn = UserFunction(
        "spec.rl.rewards[0] (m/reward.py:score)", "reward.py", "def other(p, c): pass\n", "score"
    )
    with pytest.raises(RewardError, match="defines no 'score' \\(callables: other\\)"):
        Sandbox.start([nofn])


def test_requirements_that_are_installed_load_and_import(tmp_path: Path) -> None:
    fn = UserFunction(
        "r",
        "reward.py",
        "import numpy as np\n"
        "def score(p, c, **k):\n"
        "    return np.array([len(x) for x in c], dtype=float)\n",
        "score",
        ("numpy>=1",),
    )
    sb = Sandbox.start([fn])
    try:
        assert sb.call(0, ["p", "p"], ["ab", "abc"], {})[0] == [2.0, 3.0]
    finally:
        sb.close()


GRPO_JOB = """
apiVersion: v1
kind: ConfigMap
metadata: {name: r, namespace: t}
data:
  reward.py: |
    def score(prompts, completions, **columns):
        return [1.0 if c.strip() == columns["answer"][i].strip() else 0.0
                for i, c in enumerate(completions)]
    def level(prompts, completions, **columns):
        print("levels seen:", sorted(set(columns["level"])))
        return [float(x) for x in columns["level"]]
---
apiVersion: tidetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: g, namespace: t}
spec:
  method: grpo
  baseModel: {uri: builtin://tiny-llama}
  data:
    train:
      {uri: file://data.jsonl, format: prompt-completion, promptColumn: q, responseColumn: answer}
  rl:
    rewards:
      - {preset: numeric-match, weight: 2}
      - {function: {configMapRef: {name: r, key: reward.py}, entrypoint: score}, weight: 1}
      - {function: {configMapRef: {name: r, key: reward.py}, entrypoint: level}, weight: 0.5}
  resources: {gpusPerNode: 0}
"""


def test_rewards_test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tidetune.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(GRPO_JOB)
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"q": f"{a}+{b}=", "answer": str(a + b), "level": a})
            for a, b in [(1, 2), (3, 4)]
        )
    )
    assert main(["rewards", "test", str(job), "--data", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["weight"] for r in out["rules"]] == [2.0, 1.0, 0.5]
    assert [s["rewards"] for s in out["scores"]] == [[1.0, 1.0, 1.0], [1.0, 1.0, 3.0]]
    assert [s["reward"] for s in out["scores"]] == [3.5, 4.5]
    comps = tmp_path / "c.jsonl"
    comps.write_text('"3"\n{"completions": ["7", "6"]}\n')
    assert (
        main(["rewards", "test", str(job), "--data", str(data), "--completions", str(comps)]) == 0
    )
    text = capsys.readouterr().out
    assert "rule 1: spec.rl.rewards[1] (r/reward.py:score) × 1" in text
    assert "mean reward 3.1667 over 3 completion(s)" in text
    assert "output of spec.rl.rewards[2] (r/reward.py:level):\nlevels seen: [1, 3]" in text
    # a broken function: the rule and the user's line, exit 1
    body = list(yaml.safe_load_all(GRPO_JOB))
    body[0]["data"]["reward.py"] = (
        "def score(prompts, completions, **columns):\n"
        "    return [columns['nope'] for c in completions]\n"
        "def level(p, c, **k):\n"
        "    return [0.0] * len(c)\n"
    )
    job.write_text(yaml.safe_dump_all(body))
    assert main(["rewards", "test", str(job), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "spec.rl.rewards[1] (r/reward.py:score): KeyError: 'nope'" in err
    assert "reward.py, line 2" in err
