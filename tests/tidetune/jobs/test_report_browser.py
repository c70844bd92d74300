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
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from .runfolder import STEPS, write_run

REPO = Path(__file__).resolve().parents[3]
#: the colours the page uses: the Succeeded badge and the charts' line
BADGE = (0x2E, 0x85, 0x40)
LINE = (0x1F, 0x77, 0xB4)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(
            "headless Chromium is needed for the report test and is not installed: "
            "run `bash .ci/setup-chromium.sh` (Debian's chromium package)"
        )
    return exe


class _Dom(HTMLParser):
    """What the browser built: headings, the SVG elements, the table cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.h2: list[str] = []
        self.polylines: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        if tag == "polyline":
            self.polylines.append(dict(attrs))
        self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "h2":
            self.h2.append(data.strip())
        if data.strip():
            self.text.append(data.strip())


def run_chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium(),
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to sandbox as root
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


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
    dumped = run_chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = _Dom()
    dom.feed(dumped.stdout)
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
    from PIL import Image

    shot = tmp_path / "report.png"
    done = run_chromium(
        "--window-size=1200,1400",
        f"--screenshot={shot}",
        page.as_uri(),
        profile=tmp_path / "profile",
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1400)
    colours: Counter[tuple[int, int, int]] = Counter(
        {colour: n for n, colour in image.getcolors(maxcolors=1 << 24) or []}
    )
    white = colours[(255, 255, 255)]
    assert white < 0.97 * image.width * image.height, "the page rendered (almost) blank"

    def near(target: tuple[int, int, int], tol: int = 12) -> int:
        return sum(
            n
            for c, n in colours.items()
            if all(abs(a - b) <= tol for a, b in zip(c, target, strict=True))
        )

    assert near(BADGE) > 200, "the green Succeeded badge is not on screen"
    assert near(LINE) > 500, "no chart line was drawn"
    # the charts sit in the middle of the page: blue pixels below the overview table
    pixels: Any = image.load()
    blue_rows = {
        y
        for y in range(image.height)
        for x in range(0, image.width, 2)
        if all(abs(a - b) <= 12 for a, b in zip(pixels[x, y], LINE, strict=True))
    }
    assert blue_rows and min(blue_rows) > 200
