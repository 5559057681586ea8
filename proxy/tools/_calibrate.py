"""``guardproxy calibrate``: the threshold that fits a labelled dev set.

It reads a labelled JSONL dev set, scores each item with FlexGuard (cached by
content, so a rerun costs nothing), sweeps the threshold and prints the config to paste.

Accepted JSONL fields, one object a line:
  text:   "prompt" (or "text", "user", "query") — the user message;
          "response" (or "assistant", "answer") — with --mode response, the answer judged.
  labels: "label" (0/1 or true/false), or FlexBench's "label_strict", "label_moderate",
          "label_loose"; any field whose name starts with "label" is a label column.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from guards import FlexGuard, GuardError, open_backend

from .._config import ProxyConfig
from ..exceptions import ConfigError
from ._sweep import ThresholdPoint, best, sweep

__all__ = ["calibrate", "load_dataset"]

_TEXT_FIELDS = ("prompt", "text", "user", "query")
_RESPONSE_FIELDS = ("response", "assistant", "answer")


def load_dataset(path: Path, mode: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Items ({prompt, response?, labels}) and the label columns found."""
    items: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            prompt = next((row[k] for k in _TEXT_FIELDS if isinstance(row.get(k), str)), None)
            if prompt is None:
                raise ConfigError(f"{path}:{n}: no text field (one of {', '.join(_TEXT_FIELDS)})")
            response = next((row[k] for k in _RESPONSE_FIELDS if isinstance(row.get(k), str)), None)
            if mode == "response" and response is None:
                raise ConfigError(f"{path}:{n}: --mode response needs one of {', '.join(_RESPONSE_FIELDS)}")
            labels = {}
            for key, value in row.items():
                if key.startswith("label") and value is not None:
                    if value not in (0, 1, True, False):
                        raise ConfigError(f"{path}:{n}: `{key}` must be 0/1 or true/false")
                    labels[key] = bool(value)
                    columns[key] = None
            items.append({"prompt": prompt, "response": response, "labels": labels})
    if not items:
        raise ConfigError(f"{path}: no items")
    if not columns:
        raise ConfigError(f"{path}: no label column (label, label_strict, label_moderate, label_loose, ...)")
    return items, list(columns)


def _cache_key(model: str, mode: str, item: dict[str, Any]) -> str:
    payload = json.dumps([model, mode, item["prompt"], item["response"] if mode == "response" else None])
    return hashlib.sha256(payload.encode()).hexdigest()


async def _score_all(
    config: ProxyConfig, items: list[dict[str, Any]], mode: str, cache: dict[str, int], concurrency: int, out: TextIO
) -> tuple[dict[str, int], int]:
    guard_config = config.guards.flexguard
    todo = [i for i, item in enumerate(items) if _cache_key(guard_config.model, mode, item) not in cache]
    errors = 0
    done = len(items) - len(todo)
    if todo:
        backend = await open_backend(guard_config)
        flexguard = FlexGuard(backend, guard_config)
        limit = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            nonlocal errors, done
            item = items[i]
            async with limit:
                try:
                    if mode == "response":
                        verdict = await flexguard.check_response(item["prompt"], item["response"])
                    else:
                        verdict = await flexguard.check_prompt(item["prompt"])
                    cache[_cache_key(guard_config.model, mode, item)] = verdict.risk_score
                except GuardError:
                    errors += 1
            done += 1
            _progress(out, done, len(items))

        try:
            await asyncio.gather(*(one(i) for i in todo))
        finally:
            await backend.aclose()
    _progress(out, len(items), len(items))
    out.write("\n")
    return cache, errors


def _progress(out: TextIO, done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    out.write(f"\rscoring [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    out.flush()


def calibrate(
    config: ProxyConfig,
    data: Path,
    *,
    mode: str = "prompt",
    cache_path: Path | None = None,
    plot_path: Path | None = None,
    concurrency: int = 8,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> dict[str, ThresholdPoint]:
    out = out or sys.stdout
    err = err or sys.stderr
    items, columns = load_dataset(data, mode)
    cache_path = cache_path or data.with_suffix(data.suffix + ".scores.json")
    cache: dict[str, int] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    cached_before = sum(_cache_key(config.guards.flexguard.model, mode, i) in cache for i in items)
    cache, errors = asyncio.run(_score_all(config, items, mode, cache, concurrency, err))
    cache_path.write_text(json.dumps(cache, sort_keys=True))
    print(f"{len(items)} items, {cached_before} scores from the cache {cache_path}, {errors} guard errors", file=out)

    results: dict[str, ThresholdPoint] = {}
    curves: dict[str, list[ThresholdPoint]] = {}
    model = config.guards.flexguard.model
    for column in columns:
        pairs = [
            (cache[key], item["labels"][column])
            for item in items
            if column in item["labels"] and (key := _cache_key(model, mode, item)) in cache
        ]
        if not pairs:
            continue
        points = sweep([s for s, _ in pairs], [label for _, label in pairs])
        curves[column] = points
        results[column] = top = best(points)
        print(f"\n{column}: {len(pairs)} items, {sum(label for _, label in pairs)} positive", file=out)
        print(f"{'threshold':>9}  {'precision':>9}  {'recall':>6}  {'F1':>6}", file=out)
        for p in points:
            t = p.threshold
            mark = "  <- best F1" if t == top.threshold else ""
            print(f"{t:>9}  {p.precision:>9.3f}  {p.recall:>6.3f}  {p.f1:>6.3f}{mark}", file=out)
    if not results:
        raise ConfigError("no item could be scored: check the guard (see the errors above)")
    if plot_path is not None:
        _plot(curves, plot_path, out)
    print("\nPaste into your config (the column that matches your policy):", file=out)
    for column, top in results.items():
        print(f"  # {column}: F1 {top.f1:.3f} (precision {top.precision:.3f}, recall {top.recall:.3f})", file=out)
        print(f"  [policy]\n  strictness = {top.threshold}", file=out)
    return results


def _plot(curves: dict[str, list[ThresholdPoint]], path: Path, out: TextIO) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot written: matplotlib is missing (pip install 'guardproxy[calibrate]')", file=out)
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (column, points) in zip(axes[0], curves.items(), strict=True):
        ts = [p.threshold for p in points]
        ax.plot(ts, [p.precision for p in points], label="precision")
        ax.plot(ts, [p.recall for p in points], label="recall")
        ax.plot(ts, [p.f1 for p in points], label="F1", linewidth=2)
        top = best(points)
        ax.axvline(top.threshold, color="grey", linestyle="--", label=f"best t={top.threshold}")
        ax.set_title(column)
        ax.set_xlabel("threshold (flagged when risk score >= t)")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot written to {path}", file=out)
