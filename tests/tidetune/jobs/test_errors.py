"""Every job command's failures: one line on stderr that says what is missing, exit 1 when
the command cannot do it and 2 for a wrong command line, never a traceback; and every
command's ``--help`` ends with examples.

Local runs are folders as ``tidetune run`` leaves them (:mod:`.runfolder`). For cluster
jobs the kubernetes client and minio talk to a loopback HTTP server that answers the way
kube-apiserver and S3 answer a user who lacks access: ``Status`` objects with codes 404
and 403 (``NotFound``, ``Forbidden``) and S3's ``AccessDenied`` error document. It is a
stand-in for those answers only; what is tested is how our code turns them into lines.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tidetune.cli import build_parser, main

from .runfolder import write_run

JOB_COMMANDS = (
    "metrics",
    "logs",
    "compare",
    "copy",
    "cancel",
    "report",
    "publish",
    "chat",
    "generate",
    "eval",
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse: --help and usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def wd(tmp_path: Path) -> Path:
    write_run(tmp_path / "done")
    write_run(tmp_path / "half", exported=False)
    return tmp_path


# --------------------------------------------------------------------------- --help


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (*JOB_COMMANDS, "validate", "crds"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0, command
        examples = out.split("examples:\n", 1)
        assert len(examples) == 2, f"{command} --help has no examples"
        lines = [x.strip() for x in examples[1].splitlines() if x.strip().startswith("tidetune")]
        assert lines and all(x.startswith(f"tidetune {command} ") for x in lines), out
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "examples:" in out and "Exit codes: 0" in out


def test_every_example_in_the_help_parses(capsys: pytest.CaptureFixture[str]) -> None:
    """An example that the parser itself refuses would teach the wrong thing."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in (*JOB_COMMANDS, "validate", "crds"):
        help_text = sub.choices[command].format_help()  # type: ignore[attr-defined]
        for line in help_text.split("examples:\n", 1)[1].splitlines():
            line = line.split("#")[0].split("&&")[0].split("|")[0].strip()
            if not line.startswith("tidetune "):
                continue
            parser.parse_args(line.split()[1:])  # SystemExit if the example does not parse


# --------------------------------------------------------------------------- local runs


NEEDS = {
    "metrics": [],
    "logs": [],
    "compare": ["team-a/poetry-sft"],
    "copy": ["new-name"],
    "cancel": [],
    "report": ["-o", "{tmp}/r.html"],
    "publish": ["--registry", "http://127.0.0.1:9"],
    "chat": [],
    "generate": ["--data", "{tmp}/p.jsonl"],
    "eval": ["--data", "{tmp}/p.jsonl"],
}


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_a_missing_job_is_one_line_naming_the_runs_there(
    command: str, wd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = [a.format(tmp=wd) for a in NEEDS[command]]
    code, out, err = run_cli(
        capsys, command, "team-a/poetry-dpo", *extra, "--workdir", str(wd / "done")
    )
    assert (code, out) == (1, "")
    assert one_line(err) == (
        f"tidetune {command}: job team-a/poetry-dpo not found in {wd / 'done'}; "
        "runs there: team-a/poetry-sft"
    )


def test_a_folder_that_is_no_run_folder(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "metrics", "x", "--workdir", str(wd))
    assert code == 1
    assert one_line(err) == (
        f"tidetune metrics: {wd}: not a tidetune run folder (no store/ in it); give the "
        "--workdir that `tidetune run` used"
    )


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("chat", []),
        ("generate", ["--data", "p.jsonl"]),
        ("eval", ["--data", "p.jsonl"]),
        ("publish", ["--registry", "http://127.0.0.1:9"]),
    ],
)
def test_an_artifact_not_exported_yet(
    command: str, extra: list[str], wd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    half = wd / "half"
    code, _, err = run_cli(capsys, command, "team-a/poetry-sft", *extra, "--workdir", str(half))
    assert code == 1
    line = one_line(err)
    assert line.startswith(
        f"tidetune {command}: team-a/poetry-sft: no artifact exported yet (manifest.json is "
        f"not in file://{half}/store/artifacts/team-a/poetry-sft/"
    ), line
    assert line.endswith("); phase Suspended")


def test_an_artifact_that_was_not_exported(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "chat", "team-a/poetry-sft", "--artifact", "merged", "--workdir", str(wd / "done")
    )
    assert code == 1
    assert one_line(err) == (
        "tidetune chat: team-a/poetry-sft: no artifact 'merged' exported; exported: final"
    )


def test_an_unknown_metric_lists_the_ones_there(
    wd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = str(wd / "done")
    known = "loss, evalLoss, learningRate, tokens, tokensPerSecond"
    code, _, err = run_cli(
        capsys, "metrics", "team-a/poetry-sft", "--metric", "reward", "--workdir", done
    )
    assert (code, one_line(err)) == (
        1,
        f"tidetune metrics: unknown metric 'reward'; this job has: {known}",
    )
    code, _, err = run_cli(
        capsys,
        "compare",
        "team-a/poetry-sft",
        "team-a/poetry-sft",
        "--png",
        str(wd / "c.png"),
        "--metric",
        "reward",
        "--workdir",
        done,
    )
    assert code == 1 and err.strip().endswith(
        f"tidetune compare: unknown metric 'reward'; this job has: {known}"
    )


def test_wrong_command_lines_exit_2(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = str(wd / "done")
    code, _, err = run_cli(capsys, "metrics", "Team_A/x", "--workdir", done)
    assert (code, one_line(err)) == (
        2,
        "tidetune metrics: 'Team_A/x' is not a job; write NAME or NAMESPACE/NAME "
        "(lower-case DNS labels)",
    )
    for smooth in ("1.5", "-0.1", "nan"):
        code, _, err = run_cli(
            capsys, "report", "team-a/poetry-sft", "-o", "x.html", "--smooth", smooth
        )
        assert (code, one_line(err)) == (
            2,
            f"tidetune report: --smooth: got {float(smooth)}; allowed: 0 (none) to 0.99",
        )
    code, _, err = run_cli(capsys, "compare", "team-a/poetry-sft", "--workdir", done)
    assert (code, one_line(err)) == (
        2,
        "tidetune compare: compare needs at least two jobs (names, or -l SELECTOR)",
    )
    code, _, err = run_cli(
        capsys, "copy", "team-a/poetry-sft", "x", "--set", "learningRate", "--workdir", done
    )
    assert code == 2 and "write PATH=VALUE" in one_line(err)
    code, _, err = run_cli(capsys, "metrics")
    assert code == 2 and "the following arguments are required" in err
    code, _, err = run_cli(capsys, "report", "team-a/poetry-sft", "--workdir", done)
    assert code == 2 and "-o/--output" in err


def test_files_that_cannot_be_written(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = str(wd / "done")
    missing = wd / "no" / "such"
    for argv in (
        ["metrics", "team-a/poetry-sft", "--csv", f"{missing}/m.csv"],
        ["report", "team-a/poetry-sft", "-o", f"{missing}/r.html"],
    ):
        code, _, err = run_cli(capsys, *argv, "--workdir", done)
        assert code == 1
        assert one_line(err) == (
            f"tidetune {argv[0]}: cannot write {argv[-1]}: No such file or directory"
        )
    blocker = wd / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "crds", "--write", str(blocker / "crds"))
    assert code == 1 and one_line(err).startswith(f"tidetune crds: cannot write {blocker}")


def test_copy_names_an_unknown_field_and_what_is_allowed(
    wd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "copy", "team-a/poetry-sft", "x", "--set", "zzz=1", "--workdir", str(wd / "done")
    )
    assert (code, out) == (1, "")
    first, last = err.strip().splitlines()
    assert re.fullmatch(
        r"x: spec\.zzz: unknown field; allowed here: displayName, description, method, .*"
        r"\(line \d+\)",
        first,
    ), first
    assert last == "tidetune copy: the copy is not valid; nothing was printed"


def test_cancel_of_a_finished_run(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "cancel", "team-a/poetry-sft", "--workdir", str(wd / "done"))
    assert (code, one_line(err)) == (
        1,
        "tidetune cancel: team-a/poetry-sft: already Succeeded; nothing to cancel",
    )


# --------------------------------------------------------------------------- cluster jobs


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>1</RequestId><HostId>1</HostId></Error>"
)


class Cluster:
    """What alice (namespace team-a) may see: the job ``poetry`` (output in S3, its Secret
    forbidden to her), the job ``running`` (output in a local folder, nothing exported);
    namespace team-b is forbidden; every S3 request is denied."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.requests: list[tuple[str, str]] = []
        cluster = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                cluster.answer(self)

            do_HEAD = do_PATCH = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def job(self, name: str, output: str, secret: bool) -> dict[str, Any]:
        uid = f"uid-{name}"
        spec: dict[str, Any] = {
            "method": "sft",
            "baseModel": {"uri": "builtin://tiny-llama"},
            "data": {"train": {"uri": "s3://data/train.jsonl"}},
            "output": {"uri": output},
        }
        if secret:
            spec["storageSecretRef"] = {"name": "s3-creds"}
        return {
            "apiVersion": "tidetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid},
            "spec": spec,
            "status": {"phase": "Running", "outputUri": f"{output}/team-a/{name}/{uid}"},
        }

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        self.requests.append((h.command, path))
        jobs = "/apis/tidetune.io/v1alpha1/namespaces/"
        body: Any
        if path.startswith(jobs + "team-b/"):
            name = path.rsplit("/", 1)[-1]
            code, body = (
                403,
                _status(
                    403,
                    "Forbidden",
                    f'finetunejobs.tidetune.io "{name}" is forbidden: User "alice" cannot get '
                    'resource "finetunejobs" in API group "tidetune.io" in the namespace "team-b"',
                ),
            )
        elif path == jobs + "team-a/finetunejobs/poetry":
            if h.command == "PATCH":
                code, body = (
                    403,
                    _status(
                        403,
                        "Forbidden",
                        'finetunejobs.tidetune.io "poetry" is forbidden: User "alice" cannot '
                        'patch resource "finetunejobs" in API group "tidetune.io" in the '
                        'namespace "team-a"',
                    ),
                )
            else:
                code, body = 200, self.job("poetry", "s3://artifacts", secret=True)
        elif path == jobs + "team-a/finetunejobs/running":
            code, body = 200, self.job("running", f"file://{self.out_dir}", secret=False)
        elif path.startswith(jobs + "team-a/finetunejobs/"):
            name = path.rsplit("/", 1)[-1]
            code, body = (
                404,
                _status(404, "NotFound", f'finetunejobs.tidetune.io "{name}" not found'),
            )
        elif path == "/api/v1/namespaces/team-a/pods":
            code, body = (
                403,
                _status(
                    403,
                    "Forbidden",
                    'pods is forbidden: User "alice" cannot list resource "pods" in API group "" '
                    'in the namespace "team-a"',
                ),
            )
        elif path == "/api/v1/namespaces/team-a/secrets/s3-creds":
            code, body = (
                403,
                _status(
                    403,
                    "Forbidden",
                    'secrets "s3-creds" is forbidden: User "alice" cannot get resource "secrets" '
                    'in API group "" in the namespace "team-a"',
                ),
            )
        else:  # S3
            h.send_response(403)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(ACCESS_DENIED)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(ACCESS_DENIED)
            return
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "lab", "cluster": {"server": self.url}}],
                    "users": [{"name": "alice", "user": {"token": "alice-token"}}],
                    "contexts": [
                        {
                            "name": "lab",
                            "context": {"cluster": "lab", "user": "alice", "namespace": "team-a"},
                        }
                    ],
                    "current-context": "lab",
                }
            )
        )
        return path


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, str]]:
    server = Cluster(tmp_path / "out")
    server.thread.start()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TIDETUNE_S3_ENDPOINT", server.url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    try:
        yield server, str(server.kubeconfig(tmp_path / "kubeconfig"))
    finally:
        server.server.shutdown()
        server.server.server_close()


def test_cluster_job_not_found_and_forbidden(
    cluster: tuple[Cluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = cluster
    code, _, err = run_cli(capsys, "metrics", "poetry-dpo", "--kubeconfig", kubeconfig)
    assert (code, one_line(err)) == (1, "tidetune metrics: job team-a/poetry-dpo: not found")
    code, _, err = run_cli(
        capsys, "report", "team-b/poetry", "-o", "r.html", "--kubeconfig", kubeconfig
    )
    assert (code, one_line(err)) == (
        1,
        "tidetune report: job team-b/poetry: forbidden; ask for access to it "
        '(finetunejobs.tidetune.io "poetry" is forbidden: User "alice" cannot get resource '
        '"finetunejobs" in API group "tidetune.io" in the namespace "team-b")',
    )
    code, _, err = run_cli(capsys, "cancel", "poetry", "--kubeconfig", kubeconfig)
    assert code == 1
    assert one_line(err).startswith(
        "tidetune cancel: cannot cancel team-a/poetry: forbidden; ask for access to it "
        '(finetunejobs.tidetune.io "poetry" is forbidden: User "alice" cannot patch'
    )


def test_no_access_to_the_jobs_secret_nor_keys_of_ones_own(
    cluster: tuple[Cluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, kubeconfig = cluster
    for argv in (["metrics", "poetry"], ["report", "poetry", "-o", "r.html"]):
        code, _, err = run_cli(capsys, *argv, "--kubeconfig", kubeconfig)
        assert code == 1
        line = one_line(err)
        assert re.fullmatch(
            rf"tidetune {argv[0]}: team-a/poetry: cannot read its files at "
            r"s3://artifacts/team-a/poetry/uid-poetry/run/\S+: no access to Secret "
            r"team-a/s3-creds \(forbidden\) and no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of "
            r"your own; ask for `get` on that Secret, or set AWS_ACCESS_KEY_ID/"
            r"AWS_SECRET_ACCESS_KEY to keys that may read it",
            line,
        ), line
    # compare and report stop at the first file they cannot read (the curve), rather than
    # going on without it and failing on another
    code, _, err = run_cli(capsys, "compare", "poetry", "running", "--kubeconfig", kubeconfig)
    assert code == 1
    assert (
        "cannot read its files at s3://artifacts/team-a/poetry/uid-poetry/run/metrics.jsonl: "
        in one_line(err)
    )
    # it asked for the Secret and then tried the store
    assert ("GET", "/api/v1/namespaces/team-a/secrets/s3-creds") in server.requests
    assert any(path.startswith("/artifacts") for _, path in server.requests)


def test_cluster_job_with_nothing_exported(
    cluster: tuple[Cluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, kubeconfig = cluster
    root = f"file://{server.out_dir}/team-a/running/uid-running"
    for argv in (["chat", "running"], ["publish", "running", "--registry", "http://127.0.0.1:9"]):
        code, _, err = run_cli(capsys, *argv, "--kubeconfig", kubeconfig)
        assert (code, one_line(err)) == (
            1,
            f"tidetune {argv[0]}: team-a/running: no artifact exported yet (manifest.json is "
            f"not in {root}); phase Running",
        )
    code, _, err = run_cli(capsys, "metrics", "running", "--kubeconfig", kubeconfig)
    assert (code, one_line(err)) == (
        1,
        f"tidetune metrics: team-a/running: no metrics yet (metrics.jsonl is not in {root}/run);"
        " phase Running",
    )


def test_a_kubeconfig_that_cannot_be_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("clusters: [")
    code, _, err = run_cli(capsys, "logs", "poetry", "--kubeconfig", str(bad))
    assert code == 1
    assert one_line(err).startswith(f"tidetune logs: cannot load the kubeconfig {bad}: ")
    assert one_line(err).endswith("; give --kubeconfig, or --workdir DIR for a local run")


def test_logs_without_access_to_the_pods_show_the_kept_logs(
    cluster: tuple[Cluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, kubeconfig = cluster
    run = server.out_dir / "team-a" / "running" / "uid-running" / "run"
    log = run / "logs" / "attempt-1" / "rank-0.log"
    log.parent.mkdir(parents=True)
    log.write_text("2026-11-01T00:00:01.000Z INFO tidetune_trainer.progress: step 1/9 loss 2.5\n")
    code, out, err = run_cli(capsys, "logs", "running", "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert "INFO tidetune_trainer.progress: step 1/9 loss 2.5" in out
    assert one_line(err) == (
        "tidetune logs: cannot list the pods of team-a/running: forbidden; ask for access to it "
        '(pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the '
        'namespace "team-a"); showing the logs kept in the run location'
    )
