"""Pure parts of the job commands: references, label selectors, copy, log merging."""

from __future__ import annotations

from typing import Any

import pytest

from tidetune.jobs.copy import copy_manifest
from tidetune.jobs.logs import merge, parse_log, timeline_entry
from tidetune.jobs.source import JobRef, UsageError, local_phase, selector_matches
from tidetune.layout import parse_rank_log_key, rank_log_key


def test_job_references() -> None:
    assert JobRef.parse("poetry") == JobRef(None, "poetry")
    assert JobRef.parse("team-a/poetry") == JobRef("team-a", "poetry")
    for bad in ("a/b/c", "Poetry", "", "team_a/x"):
        with pytest.raises(UsageError, match="write NAME or NAMESPACE/NAME"):
            JobRef.parse(bad)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("group=poetry", True),
        ("group==poetry,tier=gold", True),
        ("group=prose", False),
        ("group!=prose", True),
        ("tier", True),
        ("!tier", False),
        ("!missing", True),
        ("group in (prose, poetry)", True),
        ("group notin (prose,poetry)", False),
        ("group in (a,b),tier", False),
    ],
)
def test_label_selectors_follow_kubernetes(selector: str, expected: bool) -> None:
    assert selector_matches(selector, {"group": "poetry", "tier": "gold"}) is expected


OLD: dict[str, Any] = {
    "apiVersion": "tidetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {
        "name": "a",
        "namespace": "team-a",
        "uid": "u-1",
        "resourceVersion": "7",
        "generation": 3,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "managedFields": [{"manager": "kubectl"}],
        "labels": {"group": "poetry"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "x"},
    },
    "spec": {
        "method": "sft",
        "suspend": True,
        "cancelled": True,
        "hyperparameters": {"learningRate": 0.001, "maxSteps": 10},
    },
    "status": {"phase": "Cancelled"},
}


def test_copy_keeps_what_users_wrote_and_applies_sets() -> None:
    new = copy_manifest(
        OLD,
        "b",
        [
            "hyperparameters.learningRate=3e-4",
            "spec.hyperparameters.maxSteps=null",
            "metadata.labels.tidetune.io/run=2",
            "data.validation.splitRatio=0.1",
        ],
    )
    assert new == {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": "b",
            "namespace": "team-a",
            "labels": {"group": "poetry", "tidetune.io/run": "2"},
            "annotations": {"team": "x"},
        },
        "spec": {
            "method": "sft",
            "hyperparameters": {"learningRate": 3e-4},
            "data": {"validation": {"splitRatio": 0.1}},
        },
    }
    assert OLD["spec"]["hyperparameters"]["maxSteps"] == 10  # the old one is untouched


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("learningRate", "write PATH=VALUE"),
        ("metadata.name=x", "only labels.KEY and annotations.KEY"),
        ("method.x=1", "spec.method is not a mapping"),
    ],
)
def test_copy_rejects_bad_sets(item: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        copy_manifest(OLD, "b", [item])


def test_rank_log_keys_round_trip() -> None:
    assert rank_log_key(2, 3) == "logs/attempt-2/rank-3.log"
    assert parse_rank_log_key("x/run/" + rank_log_key(2, 3)) == (2, 3)
    assert parse_rank_log_key("logs/attempt-x/rank-3.log") is None


def test_logs_keep_tracebacks_with_their_record_and_interleave_the_timeline() -> None:
    log = (
        "2026-01-01T00:00:01.000Z [rank 0] INFO a: step 1\n"
        "2026-01-01T00:00:03.000Z [rank 0] ERROR a: the trainer crashed\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1\n'
    )
    records = parse_log(log)
    assert len(records) == 2 and records[1].text.endswith('File "x.py", line 1')
    tl = timeline_entry(
        {
            "time": "2026-01-01T00:00:02Z",
            "type": "Checkpoint",
            "reason": "CheckpointSaved",
            "message": "step 1",
        }
    )
    merged = [e.text.splitlines()[0] for e in merge(records, [tl])]
    assert merged == [
        "2026-01-01T00:00:01.000Z [rank 0] INFO a: step 1",
        "2026-01-01T00:00:02Z ── Checkpoint (CheckpointSaved): step 1",
        "2026-01-01T00:00:03.000Z [rank 0] ERROR a: the trainer crashed",
    ]


def test_local_phase_from_the_timeline() -> None:
    def tl(*types: str) -> list[dict[str, Any]]:
        return [{"type": t} for t in types]

    assert local_phase(tl("Validated", "Estimated"), running=False) == "Pending"
    assert local_phase(tl("Validated", "Started"), running=True) == "Running"
    assert local_phase(tl("Started"), running=False) == "Suspended"  # killed: rerun resumes
    assert local_phase(tl("Started", "Succeeded"), running=False) == "Succeeded"
    assert local_phase(tl("Started", "Suspended", "Cancelled"), running=False) == "Cancelled"


def test_chart_axis_labels_fit_the_margin() -> None:
    from tidetune.jobs.report import tick

    assert [tick(v) for v in (0.0024, 1.058, 9999.0, 36020.0, -12000.0, 2.5e6, 3e9)] == [
        "0.0024",
        "1.058",
        "9999",
        "36k",
        "-12k",
        "2.5M",
        "3G",
    ]


def test_only_losses_and_rewards_have_a_best() -> None:
    from tidetune.jobs.summary import lower_is_better

    assert lower_is_better("loss") is True and lower_is_better("evalLoss") is True
    assert lower_is_better("reward") is False and lower_is_better("rewards/exact-match") is False
    for counter in ("tokens", "elapsed", "learningRate", "tokensPerSecond", "gradNorm"):
        assert lower_is_better(counter) is None
