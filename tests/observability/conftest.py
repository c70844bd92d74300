"""Fixtures for the observability tests: the tools ``.ci/setup-observability.sh`` installs.

A missing tool fails the test with what to run (it is never skipped: the setup script is
part of ``.ci/setup``).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART_FILES = REPO_ROOT / "helm" / "tidetune" / "files"
DASHBOARD = CHART_FILES / "dashboard.json"
ALERTS = CHART_FILES / "alerts.yaml"
ALERTS_TEST = CHART_FILES / "alerts_test.yaml"
NODE_MODULES = REPO_ROOT / ".tools" / "node" / "node_modules"
SETUP = "bash .ci/setup-observability.sh"


def require(tool: str, path: pathlib.Path | None = None) -> str:
    """The path of ``tool`` (``path`` if given, else on PATH); fails the test if missing."""
    found = str(path) if path is not None and path.exists() else None
    if path is None:
        found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed ({path or 'not on PATH'}); run `{SETUP}`")
    return found


@pytest.fixture(scope="session")
def tsc() -> str:
    return require("tsc", NODE_MODULES / ".bin" / "tsc")


@pytest.fixture(scope="session")
def promtool() -> str:
    return require("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Prometheus built with Kubernetes service discovery (Debian's has none)."""
    return require("prometheus", REPO_ROOT / ".tools" / "bin" / "prometheus")


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variable_query(variable: dict[str, Any]) -> str:
    """A query variable's PromQL (``query`` is a string or ``{"query": ...}``)."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    assert isinstance(query, str), variable
    return query


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana template variables (``$x``, ``${x}``, ``${x:fmt}``) in ``expr``.

    Raises:
        KeyError: ``expr`` uses a variable that ``values`` does not define.
    """

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"{expr!r} uses ${name}, which is not defined here")
        return values[name]

    return _VAR.sub(one, expr)


METRIC = re.compile(r"\btidetune_[a-z0-9_]+")


def metric_families(expr: str) -> set[str]:
    """The ``tidetune_*`` metric families ``expr`` reads (``_bucket``/``_count``/… stripped)."""
    out = set()
    for name in METRIC.findall(expr):
        for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        out.add(name)
    return out
