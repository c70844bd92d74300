"""Headless Chromium (Debian's package, ``bash .ci/setup-chromium.sh``) for the tests that
check ``tidetune report``'s page in a real browser: the DOM it built and a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pytest

__all__ = [
    "BADGE",
    "LINE",
    "Dom",
    "chromium",
    "dump_dom",
    "near",
    "run_chromium",
    "screenshot_colours",
]

#: the colours the report uses: the Succeeded badge and the charts' line
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


class Dom(HTMLParser):
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


def dump_dom(page: Path, profile: Path) -> Dom:
    """The DOM the browser built from ``page`` (``--dump-dom``), parsed."""
    dumped = run_chromium("--dump-dom", page.as_uri(), profile=profile)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom()
    dom.feed(dumped.stdout)
    return dom


def screenshot_colours(
    page: Path, shot: Path, profile: Path, size: tuple[int, int] = (1200, 1400)
) -> tuple[Any, Counter[tuple[int, int, int]]]:
    """Take a screenshot of ``page`` into ``shot``; the image (PIL, RGB) and its colours."""
    from PIL import Image

    done = run_chromium(
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={shot}",
        page.as_uri(),
        profile=profile,
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == size
    colours: Counter[tuple[int, int, int]] = Counter()
    for n, colour in image.getcolors(maxcolors=1 << 24) or []:
        colours[cast(tuple[int, int, int], colour)] = n
    return image, colours


def near(
    colours: Counter[tuple[int, int, int]], target: tuple[int, int, int], tol: int = 12
) -> int:
    """How many pixels are within ``tol`` of ``target`` in every channel."""
    return sum(
        n
        for c, n in colours.items()
        if all(abs(a - b) <= tol for a, b in zip(c, target, strict=True))
    )
