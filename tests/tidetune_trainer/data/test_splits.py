"""Validation split, mix-in and maxSamples: deterministic for a seed, exact ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidetune_trainer.data import DataConfigError, DataSettings, DataValidationError, load_data
from tidetune_trainer.data.splits import limit, mix_in, split_validation


def test_split_is_deterministic_and_disjoint() -> None:
    recs = list(range(200))
    tr1, va1 = split_validation(recs, 0.1, seed=7)
    tr2, va2 = split_validation(recs, 0.1, seed=7)
    _, va3 = split_validation(recs, 0.1, seed=8)
    assert (tr1, va1) == (tr2, va2)
    assert va1 != va3
    assert len(va1) == 20 and len(tr1) == 180
    assert sorted(tr1 + va1) == recs
    assert tr1 == sorted(tr1)  # original order kept


@pytest.mark.parametrize(
    ("n", "ratio", "n_val"), [(2, 0.5, 1), (3, 0.01, 1), (10, 0.5, 5), (1000, 0.05, 50)]
)
def test_split_sizes(n: int, ratio: float, n_val: int) -> None:
    tr, va = split_validation(list(range(n)), ratio, seed=0)
    assert len(va) == n_val and len(tr) == n - n_val


def test_split_errors() -> None:
    with pytest.raises(DataConfigError, match="at least 2 records"):
        split_validation([1], 0.1, 0)
    with pytest.raises(DataConfigError, match=r"splitRatio must be in \(0, 0.5\]"):
        split_validation([1, 2, 3], 0.7, 0)


@pytest.mark.parametrize(
    ("n_train", "ratio", "n_mix"), [(80, 0.2, 20), (100, 0.5, 100), (99, 0.01, 1), (10, 0.99, 990)]
)
def test_mix_in_ratio_of_the_blend(n_train: int, ratio: float, n_mix: int) -> None:
    train = [("t", i) for i in range(n_train)]
    extra = [("m", i) for i in range(50)]
    blend, got, repeated = mix_in(train, extra, ratio, seed=3)
    assert got == n_mix
    assert len(blend) == n_train + n_mix
    assert sum(1 for k, _ in blend if k == "m") == n_mix
    assert abs(n_mix / len(blend) - ratio) <= 0.5 / len(blend) + 1e-9
    assert repeated == max(0, n_mix - 50)
    assert mix_in(train, extra, ratio, seed=3)[0] == blend  # deterministic
    assert sorted(x for x in blend if x[0] == "t") == train  # nothing of train lost


def test_mix_in_errors() -> None:
    with pytest.raises(DataConfigError, match=r"0\.01–0\.99"):
        mix_in([1], [2], 1.0, 0)
    with pytest.raises(DataConfigError, match="holds no records"):
        mix_in([1], [], 0.5, 0)


def test_limit() -> None:
    assert limit([1, 2, 3], -1) == [1, 2, 3]
    assert limit([1, 2, 3], 2) == [1, 2]
    with pytest.raises(DataConfigError, match="maxSamples"):
        limit([1], 0)


def _texts(path: Path, prefix: str, n: int, bad_line: int | None = None) -> str:
    lines = [json.dumps({"text": f"{prefix} {i}"}) for i in range(n)]
    if bad_line is not None:
        lines[bad_line - 1] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_load_data_pipeline(tmp_path: Path) -> None:
    train = _texts(tmp_path / "train.jsonl", "train", 100)
    extra = _texts(tmp_path / "extra.jsonl", "extra", 10)
    s = DataSettings(
        train_uri=train,
        format="text",
        validation_split_ratio=0.1,
        mix_in_uri=extra,
        mix_in_ratio=0.25,
        max_samples=60,
        seed=1,
    )
    d = load_data(s)
    assert d.dropped_by_max_samples == 40
    assert d.records == 54 and len(d.validation) == 6
    assert d.mix_in == 18 and d.mix_in_repeated == 8
    assert len(d.train) == 72
    origins = {r.origin for r in d.train + d.validation}
    assert not any(o.endswith(f"{train}:{i}") for o in origins for i in range(61, 101))
    assert load_data(s).train == d.train


def test_load_data_validates_every_file_together(tmp_path: Path) -> None:
    train = _texts(tmp_path / "train.jsonl", "train", 10, bad_line=9)
    val = _texts(tmp_path / "val.jsonl", "val", 5, bad_line=2)
    extra = _texts(tmp_path / "extra.jsonl", "x", 5, bad_line=5)
    s = DataSettings(
        train_uri=train,
        format="text",
        validation_uri=val,
        mix_in_uri=extra,
        mix_in_ratio=0.1,
        max_samples=3,
    )
    with pytest.raises(DataValidationError) as ei:
        load_data(s)
    assert [str(p).split(": ")[0] for p in ei.value.problems] == [
        f"{train}:9",
        f"{val}:2",
        f"{extra}:5",
    ]


def test_settings_errors() -> None:
    with pytest.raises(DataConfigError, match="unknown data format 'csv'"):
        DataSettings(train_uri="x", format="csv")  # type: ignore[arg-type]
    with pytest.raises(DataConfigError, match="not both"):
        DataSettings(train_uri="x", validation_uri="y", validation_split_ratio=0.1)
    with pytest.raises(DataConfigError, match="both uri and ratio"):
        DataSettings(train_uri="x", mix_in_uri="y")
