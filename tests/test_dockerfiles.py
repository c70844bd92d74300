"""Dockerfile.operator and Dockerfile.trainer, parsed (no Docker engine here) and checked.

The images are not built on these machines; these checks hold the Dockerfiles to what the
chart and the operator's pod specs assume: pinned bases, a numeric non-root USER (so
Kubernetes can enforce runAsNonRoot), no torch in the operator, no kopf in the trainer, a
health check (or a documented reason for none), no secrets baked in, DeepSpeed ops prebuilt.
"""

from __future__ import annotations

import pathlib
import re
import shlex
from dataclasses import dataclass, field

import dockerfile
import pytest

from tests.support.users import getuser_without_passwd_entry
from tidetune_operator.builders import RESTRICTED_POD_SECURITY

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPERATOR = ROOT / "Dockerfile.operator"
TRAINER = ROOT / "Dockerfile.trainer"

SECRET_NAME = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|API_KEY|APIKEY|CREDENTIAL|PRIVATE_KEY", re.I
)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|[A-Za-z0-9+/]{40,}")


@dataclass
class Stage:
    image: str
    alias: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)


def stages(path: pathlib.Path) -> list[Stage]:
    out: list[Stage] = []
    for cmd in dockerfile.parse_file(str(path)):
        if cmd.cmd.upper() == "FROM":
            args = [v for v in cmd.value if not v.startswith("--")]
            alias = args[2] if len(args) >= 3 and args[1].upper() == "AS" else None
            out.append(Stage(args[0], alias))
        elif out:
            out[-1].commands.append(cmd)
        else:
            assert cmd.cmd.upper() == "ARG", f"{path.name}: {cmd.original} before FROM"
    return out


def of(stage: Stage, name: str) -> list[dockerfile.Command]:
    return [c for c in stage.commands if c.cmd.upper() == name]


def env_of(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for cmd in of(stage, "ENV"):
        values = list(cmd.value)
        for key, value in zip(values[::2], values[1::2], strict=True):
            out[key] = value.strip('"')
    return out


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of every ``pip install``/``pip wheel`` in the stage's RUN lines."""
    out = []
    for cmd in of(stage, "RUN"):
        lexer = shlex.shlex(" ".join(cmd.value), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        for i, word in enumerate(words):
            if word.endswith("pip") and words[i + 1 : i + 2] in (["install"], ["wheel"]):
                args = []
                for arg in words[i + 2 :]:
                    if arg in ("&&", ";", "||", "|", "&", ">", "<"):
                        break
                    args.append(arg)
                out.append(args)
    return out


def copied_sources(stage: Stage) -> list[str]:
    return [
        src
        for cmd in of(stage, "COPY") + of(stage, "ADD")
        if not any(f.startswith("--from=") for f in cmd.flags)
        for src in cmd.value[:-1]
    ]


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_base_images_are_pinned(path: pathlib.Path) -> None:
    all_stages = stages(path)
    aliases = {s.alias for s in all_stages if s.alias}
    for stage in all_stages:
        if stage.image in aliases:
            continue
        assert "$" not in stage.image, f"{path.name}: FROM {stage.image} is not a literal"
        if "@sha256:" in stage.image:
            assert re.search(r"@sha256:[0-9a-f]{64}$", stage.image), stage.image
            continue
        name, _, tag = stage.image.rpartition(":")
        assert name and "/" not in tag, f"{path.name}: FROM {stage.image} has no tag"
        assert tag != "latest", f"{path.name}: FROM {stage.image} uses latest"
        assert re.search(r"\d+\.\d+\.\d+", tag), (
            f"{path.name}: FROM {stage.image}: pin an exact version (x.y.z) or a digest"
        )


@pytest.mark.parametrize(
    ("path", "uid"),
    [(OPERATOR, 65532), (TRAINER, RESTRICTED_POD_SECURITY["runAsUser"])],
    ids=["operator", "trainer"],
)
def test_final_stage_runs_as_numeric_non_root_user(path: pathlib.Path, uid: object) -> None:
    final = stages(path)[-1]
    users = of(final, "USER")
    assert users, f"{path.name}: the final stage sets no USER"
    user = users[-1].value[0]
    name, _, group = user.partition(":")
    assert name.isdigit() and int(name) != 0, f"{path.name}: USER {user} must be a numeric uid"
    assert not group or (group.isdigit() and int(group) != 0), f"{path.name}: USER {user}"
    assert int(name) == uid, f"{path.name}: USER {user}, but the pods run as {uid}"
    # nothing after the last USER switches back, and it comes after every RUN
    last_user = final.commands.index(users[-1])
    assert not [c for c in final.commands[last_user:] if c.cmd.upper() == "RUN"]


def test_operator_image_has_no_torch_and_no_trainer() -> None:
    for stage in stages(OPERATOR):
        for args in pip_installs(stage):
            joined = " ".join(args).lower()
            for banned in ("torch", "deepspeed", "[trainer", "trainer]", "transformers"):
                assert banned not in joined, f"Dockerfile.operator installs {args}"
        for src in copied_sources(stage):
            assert src.rstrip("/") not in (".", "trainer-image") and "tidetune_trainer" not in src
    installs = [a for s in stages(OPERATOR) for a in pip_installs(s)]
    assert any(".[operator]" in " ".join(a).replace('"', "") for a in installs)


def test_trainer_image_has_no_kopf_and_no_operator() -> None:
    for stage in stages(TRAINER):
        for args in pip_installs(stage):
            joined = " ".join(args).lower()
            for banned in ("kopf", "[operator", "operator]", "kubernetes"):
                assert banned not in joined, f"Dockerfile.trainer installs {args}"
        for src in copied_sources(stage):
            assert src.rstrip("/") not in (".", "operator") and "tidetune_operator" not in src
    installs = [a for s in stages(TRAINER) for a in pip_installs(s)]
    assert any(".[trainer]" in " ".join(a).replace('"', "") for a in installs)


def test_trainer_image_has_torch_cuda_and_prebuilt_deepspeed_ops() -> None:
    all_stages = stages(TRAINER)
    final = all_stages[-1]
    assert re.match(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime$", final.image)
    builder = next(
        s for s in all_stages if any("deepspeed" in " ".join(a) for a in pip_installs(s))
    )
    env = env_of(builder)
    prebuilt = {k for k, v in env.items() if k.startswith("DS_BUILD_") and v == "1"}
    assert (
        prebuilt >= {"DS_BUILD_CPU_ADAM", "DS_BUILD_FUSED_ADAM"} or env.get("DS_BUILD_OPS") == "1"
    )
    assert builder.image.endswith("-devel"), "compiling CUDA ops needs nvcc (a -devel image)"
    # the same torch/CUDA in both stages, so the compiled ops match the runtime
    assert builder.image.removesuffix("-devel") == final.image.removesuffix("-runtime")
    copies = [c for c in of(final, "COPY") if f"--from={builder.alias}" in c.flags]
    assert copies, "the runtime stage must install the wheel built in the deepspeed stage"
    for name in ("peft", "trl", "accelerate", "transformers", "deepspeed"):
        assert name in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    entry = of(final, "ENTRYPOINT")[-1]
    assert entry.json and list(entry.value) == ["python", "-m", "tidetune_trainer.launch"]


def test_operator_entrypoint_and_read_only_root() -> None:
    final = stages(OPERATOR)[-1]
    assert re.match(r"python:3\.11\.\d+-slim", final.image)
    entry = of(final, "ENTRYPOINT")[-1]
    assert entry.json and list(entry.value) == [
        "kopf",
        "run",
        "-A",
        "--standalone",
        "-m",
        "tidetune_operator.handlers",
        "--liveness=http://0.0.0.0:8081/healthz",
    ]
    env = env_of(final)
    # a read-only root filesystem: no .pyc writes, HOME and temp files under /tmp
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    assert not of(final, "VOLUME")


def test_operator_image_gives_kopf_a_user_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """USER 65532 has no passwd entry: without ENV USER, kopf's getpass.getuser() raises."""
    env = env_of(stages(OPERATOR)[-1])
    assert env["USER"] == "tidetune"
    assert getuser_without_passwd_entry(env, monkeypatch) == "tidetune"
    with pytest.raises((KeyError, OSError)):
        getuser_without_passwd_entry({}, monkeypatch)


def test_health_checks() -> None:
    operator = of(stages(OPERATOR)[-1], "HEALTHCHECK")
    assert operator and operator[-1].value[0] == "CMD"
    assert "127.0.0.1:8081/healthz" in " ".join(operator[-1].value)
    trainer = of(stages(TRAINER)[-1], "HEALTHCHECK")
    assert trainer and trainer[-1].value[0] == "NONE"
    # a batch pod has no health endpoint: the Dockerfile must say why, right above it
    lines = TRAINER.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK NONE"))
    assert lines[at - 1].startswith("#") and "health" in " ".join(lines[at - 3 : at]).lower()


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_no_secrets_in_env_or_arg(path: pathlib.Path) -> None:
    for stage in stages(path):
        for key, value in env_of(stage).items():
            assert not SECRET_NAME.search(key), f"{path.name}: ENV {key}"
            assert not SECRET_VALUE.search(value), f"{path.name}: ENV {key} looks like a secret"
    for cmd in dockerfile.parse_file(str(path)):
        if cmd.cmd.upper() == "ARG":
            for arg in cmd.value:
                name, _, value = arg.partition("=")
                assert not SECRET_NAME.search(name), f"{path.name}: ARG {name}"
                assert not SECRET_VALUE.search(value), f"{path.name}: ARG {name}"


def test_checks_would_catch_a_bad_dockerfile(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nENV AWS_SECRET_ACCESS_KEY=abc\nRUN pip install torch\nUSER root\n",
        encoding="utf-8",
    )
    with pytest.raises(AssertionError):
        test_base_images_are_pinned(bad)
    with pytest.raises(AssertionError):
        test_no_secrets_in_env_or_arg(bad)
    with pytest.raises(AssertionError):
        test_final_stage_runs_as_numeric_non_root_user(bad, 65532)
    assert pip_installs(stages(bad)[0]) == [["torch"]]
