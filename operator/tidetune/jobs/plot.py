"""PNG plots of metric series with matplotlib (imported here only, with the Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from tidetune.jobs.series import Series
from tidetune.jobs.source import JobError


def _pyplot() -> object:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise JobError("--png needs matplotlib: pip install 'tidetune[plots]'") from None
    return plt


def plot(
    groups: Sequence[tuple[str, Sequence[Series]]],
    path: str | Path,
    weight: float,
    title: str,
) -> Path:
    """One panel per metric; in each, one line per group (job), smoothed with ``weight``
    over the raw points drawn faintly (as TensorBoard does)."""
    plt = _pyplot()
    names: list[str] = []
    for _, group in groups:
        names.extend(s.name for s in group if s.name not in names)
    rows = len(names)
    fig, axes = plt.subplots(  # type: ignore[attr-defined]
        rows, 1, figsize=(8, 2.8 * rows + 0.6), squeeze=False, sharex=True
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # type: ignore[attr-defined]
    for row, name in enumerate(names):
        ax = axes[row][0]
        for i, (label, group) in enumerate(groups):
            ser = next((s for s in group if s.name == name), None)
            if ser is None or not ser.steps:
                continue
            color = colors[i % len(colors)]
            if weight > 0:
                ax.plot(ser.steps, ser.values, color=color, alpha=0.25, linewidth=1)
                ax.plot(ser.steps, ser.smoothed(weight), color=color, linewidth=2, label=label)
            else:
                ax.plot(ser.steps, ser.values, color=color, linewidth=1.6, label=label)
            if len(ser.steps) == 1 or all(not math.isfinite(v) for v in ser.values[1:]):
                ax.scatter(ser.steps[:1], ser.values[:1], color=color)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if len(groups) > 1 or row == 0:
            ax.legend(loc="upper right", fontsize="small")
    axes[-1][0].set_xlabel("step")
    suffix = f" — smoothing {weight:g}" if weight > 0 else ""
    fig.suptitle(title + suffix)
    fig.tight_layout()
    out = Path(path)
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise JobError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)  # type: ignore[attr-defined]
    return out
