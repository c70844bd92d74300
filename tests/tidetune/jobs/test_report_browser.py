"""``tidetune report``'s page in a real browser: headless Chromium (Debian's package,
``bash .ci/setup-chromium.sh``) loads the page, dumps the DOM it built and takes a
screenshot; the test asserts on both.

The job is a local run folder laid out as ``tidetune run`` leaves it (the job, its
timeline, ``progress.json``, ``estimate.json``, ``metrics.jsonl`` and the artifact
manifest), read through the same lookup every job command uses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import BADGE, LINE, dump_dom, near, screenshot_colours

from .runfolder import STEPS, write_run

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("report")
    write_run(workdir / "wd")
    out = workdir / "report.html"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO)]))
    made = subprocess.run(
        [
            *(sys.executable, "-m", "tidetune", "report", "team-a/poetry-sft"),
            *("--workdir", str(workdir / "wd"), "-o", str(out), "--smooth", "0.6"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return out


def test_the_browser_builds_every_section_and_chart(page: Path, tmp_path: Path) -> None:
    dom = dump_dom(page, tmp_path / "profile")
    assert dom.h2 == [
        "Overview",
        "Estimate vs actual",
        "Curves",
        "Timeline",
        "Checkpoints",
        "Artifacts",
        "Evaluations",
    ]
    # one chart per series the run wrote: raw points and the smoothed line
    charts = dom.tags["svg"]
    assert charts >= 4, dom.tags  # loss, evalLoss, learningRate, tokensPerSecond, …
    assert len(dom.polylines) == 2 * charts
    loss_raw = dom.polylines[0]["points"] or ""
    assert len(loss_raw.split()) == STEPS
    # the page is self-contained: nothing for the browser to fetch
    assert dom.tags["script"] == 0 and dom.tags["img"] == 0 and dom.tags["link"] == 0
    text = " ".join(dom.text)
    for expected in ("poetry-sft-v1", "team-a/poetry-sft", "Succeeded", "TrainingComplete"):
        assert expected in text
    assert re.search(r"\bfinal\b", text) and "CheckpointSaved" in text


def test_the_screenshot_shows_the_badge_and_the_curves(page: Path, tmp_path: Path) -> None:
    image, colours = screenshot_colours(page, tmp_path / "report.png", tmp_path / "profile")
    white = colours[(255, 255, 255)]
    assert white < 0.97 * image.width * image.height, "the page rendered (almost) blank"
    assert near(colours, BADGE) > 200, "the green Succeeded badge is not on screen"
    assert near(colours, LINE) > 500, "no chart line was drawn"
    # the charts sit in the middle of the page: blue pixels below the overview table
    pixels: Any = image.load()
    blue_rows = {
        y
        for y in range(image.height)
        for x in range(0, image.width, 2)
        if all(abs(a - b) <= 12 for a, b in zip(pixels[x, y], LINE, strict=True))
    }
    assert blue_rows and min(blue_rows) > 200
