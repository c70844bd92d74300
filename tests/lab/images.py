"""Container images in the lab: what the node agent runs for each image name.

There is no container runtime, so an image is mapped to this machine's environment: the
project's Dockerfiles give each image its entrypoint, command, user and working directory
(read from the Dockerfile itself, so the lab runs what the image would), and the repository's
venv stands in for the image's installed packages. ``alpine``/``busybox`` images (the
training operator's ``init-pytorch`` container) get Debian's static busybox applets. Any other
image is unknown to the node agent: its pods stay Pending with ``ErrImagePull``, as a kubelet
that cannot pull an image leaves them.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any

__all__ = ["image_table"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

OPERATOR_IMAGES = ("ghcr.io/tidetune/operator", "tidetune/operator")
TRAINER_IMAGES = ("ghcr.io/tidetune/trainer", "tidetune/trainer", "tidetune-trainer")
BUSYBOX_IMAGES = (
    "alpine",
    "docker.io/alpine",
    "docker.io/library/alpine",
    "busybox",
    "docker.io/library/busybox",
)


def _dockerfile_final_stage(path: pathlib.Path) -> dict[str, Any]:
    """ENTRYPOINT, CMD, USER and WORKDIR of the last stage (exec form only)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("FROM "):
            found = {}
            continue
        match = re.match(r"(ENTRYPOINT|CMD|USER|WORKDIR)\s+(.*)", line, re.IGNORECASE)
        if match is None:
            continue
        key, value = match.group(1).upper(), match.group(2).strip()
        if key in ("ENTRYPOINT", "CMD"):
            if not value.startswith("["):
                raise ValueError(f"{path}: {key} must use the exec form (a JSON array)")
            found[key] = json.loads(value)
        else:
            found[key] = value
    return found


def _python_env(venv_bin: pathlib.Path) -> dict[str, str]:
    paths = [str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer-image"), str(REPO_ROOT)]
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": ":".join(paths),
        "PYTHONUNBUFFERED": "1",
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def image_table(busybox_dir: pathlib.Path) -> list[dict[str, Any]]:
    """The node agent's ``images`` setting (see the module doc)."""
    venv_bin = pathlib.Path(sys.executable).parent
    table: list[dict[str, Any]] = []
    for prefixes, dockerfile in (
        (OPERATOR_IMAGES, "Dockerfile.operator"),
        (TRAINER_IMAGES, "Dockerfile.trainer"),
    ):
        stage = _dockerfile_final_stage(REPO_ROOT / dockerfile)
        for prefix in prefixes:
            table.append(
                {
                    "prefix": prefix,
                    "entrypoint": stage.get("ENTRYPOINT", []),
                    "cmd": stage.get("CMD", []),
                    "workingDir": stage.get("WORKDIR", "/"),
                    "user": stage.get("USER", "0"),
                    "env": _python_env(venv_bin),
                }
            )
    for prefix in BUSYBOX_IMAGES:
        table.append(
            {
                "prefix": prefix,
                "entrypoint": [],
                "cmd": ["sh"],
                "workingDir": "/",
                "user": "0",
                "env": {"PATH": str(busybox_dir), "HOME": "/root"},
            }
        )
    return table
