"""Packing samples into rows of ``max_seq_length`` tokens.

``best_fit_decreasing`` places samples longest first, each into the open row with the
least room that still fits it (a new row when none does). It runs in O(n log n): rows are
bucketed by their free room, and the distinct free-room values are kept in a sorted list
searched with ``bisect``. It is deterministic (ties: the lowest sample index first, the
earliest opened row first).

A packed row keeps each sample's own position ids (0, 1, 2, … restarting per sample); the
collator turns that into "no attention across samples" (see ``collate``).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from .tokenize import TokenizedSample


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into bins of total length ≤ ``capacity``.

    Returns the bins (lists of indices into ``lengths``) in the order they were opened;
    within a bin, indices are in placement order (longest first).
    Raises ``ValueError`` for a length above ``capacity`` or below 1.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be ≥ 1, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free_of: list[int] = []
    by_free: dict[int, list[int]] = {}  # free room -> heap of bin ids
    frees: list[int] = []  # sorted distinct free-room values present in by_free
    for i in order:
        n = lengths[i]
        if n < 1 or n > capacity:
            raise ValueError(f"sample {i} has length {n}; packing needs 1 ≤ length ≤ {capacity}")
        k = bisect.bisect_left(frees, n)
        if k < len(frees):
            room = frees[k]
            stack = by_free[room]
            b = heapq.heappop(stack)
            if not stack:
                del by_free[room]
                frees.pop(k)
        else:
            b = len(bins)
            bins.append([])
            free_of.append(capacity)
        bins[b].append(i)
        left = free_of[b] - n
        free_of[b] = left
        if left > 0:
            same = by_free.get(left)
            if same is None:
                by_free[left] = [b]
                bisect.insort(frees, left)
            else:
                heapq.heappush(same, b)
    return bins


@dataclass(slots=True)
class PackedRow:
    """Several samples concatenated; ``position_ids`` restart at 0 for each sample."""

    input_ids: list[int]
    loss_weights: list[float]
    position_ids: list[int]
    seq_lengths: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def rows_from_bins(
    samples: Sequence[TokenizedSample], bins: Sequence[Sequence[int]]
) -> list[PackedRow]:
    """Concatenate the samples of each bin into a row (samples in ascending index order)."""
    rows: list[PackedRow] = []
    for b in bins:
        ids: list[int] = []
        ws: list[float] = []
        pos: list[int] = []
        lens: list[int] = []
        for i in sorted(b):
            s = samples[i]
            ids.extend(s.input_ids)
            ws.extend(s.loss_weights)
            pos.extend(range(len(s.input_ids)))
            lens.append(len(s.input_ids))
        rows.append(PackedRow(ids, ws, pos, lens))
    return rows


def pack(samples: Sequence[TokenizedSample], max_seq_length: int) -> list[PackedRow]:
    """Pack samples (each ≤ ``max_seq_length``) into rows with best-fit-decreasing."""
    bins = best_fit_decreasing([len(s.input_ids) for s in samples], max_seq_length)
    return rows_from_bins(samples, bins)


def unpacked_rows(samples: Sequence[TokenizedSample]) -> list[PackedRow]:
    """One row per sample (packing off), with the same row type."""
    return [
        PackedRow(
            list(s.input_ids),
            list(s.loss_weights),
            list(range(len(s.input_ids))),
            [len(s.input_ids)],
        )
        for s in samples
    ]


def packing_efficiency(rows: Sequence[PackedRow], capacity: int) -> float:
    """Real tokens / (rows × capacity); 1.0 for no rows."""
    if not rows:
        return 1.0
    return sum(len(r) for r in rows) / (len(rows) * capacity)
