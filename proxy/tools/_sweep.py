"""Threshold calibration (the FlexGuard card's Option B), as pure functions.

Sweep t over 0..100, predict "flagged" when score >= t, and keep the t that maximises
F1 against the labels; ties go to the lowest t (the stricter of equally good choices).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

__all__ = ["ThresholdPoint", "sweep", "best"]


class ThresholdPoint(msgspec.Struct, frozen=True):
    threshold: int
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int


def sweep(scores: Sequence[int], labels: Sequence[bool]) -> list[ThresholdPoint]:
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    points = []
    for t in range(101):
        tp = fp = fn = tn = 0
        for score, label in zip(scores, labels, strict=True):
            predicted = score >= t
            if predicted and label:
                tp += 1
            elif predicted:
                fp += 1
            elif label:
                fn += 1
            else:
                tn += 1
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        points.append(ThresholdPoint(t, precision, recall, f1, tp, fp, fn, tn))
    return points


def best(points: Sequence[ThresholdPoint]) -> ThresholdPoint:
    return max(points, key=lambda p: (p.f1, -p.threshold))
