"""The Grafana dashboard (helm/tidetune/files/dashboard.json): its shape, and a strict
TypeScript type check against the npm package ``@grafana/schema``.

The lab test (``test_lab_prometheus.py``) checks that every query returns data.
"""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import subprocess
from typing import Any

from tests.observability.conftest import (
    DASHBOARD,
    NODE_MODULES,
    REPO_ROOT,
    metric_families,
    panels,
    substitute,
    variable_query,
)
from tidetune_operator import metrics

GRAFANA_DIR = pathlib.Path(__file__).resolve().parent / "grafana"
#: What a panel query may use besides the dashboard's own variables.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}


def test_rows_panels_and_variables(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Pools", "Per job: $job"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    job = variables["job"]
    assert job["type"] == "query"
    assert (
        variable_query(job)
        == 'label_values(tidetune_job_info{namespace=~"$namespace"}, finetunejob)'
    )
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        where = f"panel {panel['id']} ({panel.get('title')!r})"
        assert panel.get("title"), where
        assert panel.get("description"), where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], where
            assert target.get("expr") and target.get("refId"), where
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where


def test_every_query_reads_existing_metrics_and_known_variables(dashboard: dict[str, Any]) -> None:
    known = {f.name for f in metrics.REGISTRY.collect()}
    values = {v["name"]: "x" for v in dashboard["templating"]["list"]} | BUILTIN_VARIABLES
    exprs = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    exprs += [variable_query(v) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used: set[str] = set()
    for expr in exprs:
        substitute(expr, values)  # raises on an undefined variable
        families = metric_families(expr)
        assert families, f"{expr!r} reads no tidetune_* metric"
        assert families <= known, f"{expr!r} reads {families - known}, not exported by the operator"
        used |= families
    # the dashboard shows every operator metric
    assert known - used == set(), f"operator metrics on no panel: {known - used}"


def test_schema_version_is_the_one_grafana_schema_writes(dashboard: dict[str, Any]) -> None:
    node = shutil.which("node")
    assert node, "node is not installed; run `bash .ci/setup-observability.sh`"
    script = "import('@grafana/schema').then(m => console.log(m.defaultDashboard.schemaVersion))"
    res = subprocess.run(
        [node, "-e", script],
        cwd=NODE_MODULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert dashboard["schemaVersion"] == int(res.stdout.strip())


def typecheck(
    tsc: str, workdir: pathlib.Path, dashboards: dict[str, dict[str, Any]]
) -> tuple[int, dict[str, str]]:
    """Run ``tsc --strict --noEmit`` once over ``const dashboard: DashboardJson = <JSON>``,
    one file per dashboard; returns tsc's exit code and its messages by dashboard name."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    shutil.copy(GRAFANA_DIR / "schema.ts", workdir / "schema.ts")
    files = ["schema.ts"]
    for name, dashboard in dashboards.items():
        (workdir / f"{name}.ts").write_text(
            "import type { DashboardJson } from './schema';\n\n"
            f"export const dashboard: DashboardJson = {json.dumps(dashboard, indent=2)};\n"
        )
        files.append(f"{name}.ts")
    config = {"extends": str(GRAFANA_DIR / "tsconfig.json"), "files": files}
    (workdir / "tsconfig.json").write_text(json.dumps(config))
    res = subprocess.run(
        [tsc, "-p", "tsconfig.json", "--strict", "--noEmit", "--pretty", "false"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = {name: "" for name in dashboards}
    for line in (res.stdout + res.stderr).splitlines():
        name = line.split(".ts(", 1)[0]
        errors[name if name in errors else "?"] = errors.get(name, "") + line + "\n"
    return res.returncode, errors


def test_dashboard_type_checks_against_grafana_schema(
    tsc: str, tmp_path: pathlib.Path, dashboard: dict[str, Any]
) -> None:
    code, errors = typecheck(tsc, tmp_path, {"dashboard": dashboard})
    assert code == 0, f"tsc rejected {DASHBOARD.relative_to(REPO_ROOT)}:\n{errors}"


#: (name, path to a field, a wrong value, what tsc must say)
BROKEN: list[tuple[str, tuple[str | int, ...], object, str]] = [
    ("gridpos_w_string", ("panels", 1, "gridPos", "w"), "8", "Type 'string' is not assignable"),
    (
        "thresholds_mode",
        ("panels", 1, "fieldConfig", "defaults", "thresholds", "mode"),
        "absolut",
        'is not assignable to type \'"absolute" | "percentage"\'',
    ),
    ("title_number", ("panels", 2, "title"), 42, "Type 'number' is not assignable"),
    ("variable_type", ("templating", "list", 0, "type"), "datasrc", "is not assignable to type"),
    ("refresh_enum", ("templating", "list", 1, "refresh"), 7, "not assignable to type 'Variable"),
    ("unknown_field", ("panels", 1, "gridPoz"), {"x": 0}, "'\"gridPoz\"' does not exist"),
]


def test_broken_copies_fail_the_type_check(
    tsc: str, tmp_path: pathlib.Path, dashboard: dict[str, Any]
) -> None:
    broken: dict[str, dict[str, Any]] = {}
    for name, path, bad, _ in BROKEN:
        copied = copy.deepcopy(dashboard)
        node: Any = copied
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = bad
        broken[name] = copied
    code, errors = typecheck(tsc, tmp_path, broken)
    assert code != 0, "tsc accepted dashboards with wrong field types"
    assert not errors.get("?"), errors["?"]
    for name, path, bad, message in BROKEN:
        assert message in errors[name], f"{name} ({path} = {bad!r}): {errors[name] or 'accepted'}"
