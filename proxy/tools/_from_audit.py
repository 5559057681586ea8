"""``guardproxy calibrate --from-audit PATH``: thresholds from the labels operators gave
in the console.

The audit log (and its rotated files, oldest first) holds decision records and label
lines; a labelled stage of a record with captured content is one item of the
calibration set (its risk score, and whether it was harmful: the verdict's flag and
the label together). The sweep is ``guardproxy calibrate``'s; it prints precision and
recall at the current threshold, at each named strictness, and at the proposed one,
per stage and per FlexGuard category, then the TOML to apply. ``--export`` writes the
set as JSONL for ``guardproxy calibrate DATA`` (which scores the texts again).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .._config import ProxyConfig
from ..console._whatif import calibration, calibration_items
from ..exceptions import ConfigError

__all__ = ["calibrate_from_audit", "read_audit"]


def _files(path: Path) -> list[Path]:
    rotated = sorted((p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
    return rotated + ([path] if path.exists() else [])


def read_audit(path: Path) -> list[dict[str, Any]]:
    """The decision records of the audit log with their labels applied, oldest first."""
    files = _files(path)
    if not files:
        raise ConfigError(f"{path}: no audit log there")
    records: dict[str, dict[str, Any]] = {}
    for file in files:
        with file.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    print(f"{file}:{n}: skipped (not JSON)", file=sys.stderr)
                    continue
                if not isinstance(doc, dict) or not isinstance(doc.get("request_id"), str):
                    continue
                if doc.get("type") == "decision":
                    labels = records.get(doc["request_id"], {}).get("labels")
                    records[doc["request_id"]] = doc | ({"labels": labels} if labels else {})
                elif doc.get("type") == "label" and doc.get("verdict") in ("right", "wrong"):
                    records.setdefault(doc["request_id"], {"request_id": doc["request_id"]}).setdefault("labels", {})[
                        doc["stage"]
                    ] = doc["verdict"]
    return [r for r in records.values() if r.get("type") == "decision"]


def _row(name: str, p: dict[str, Any]) -> str:
    return f"  {name:<22} {p['threshold']:>9}  {p['precision']:>9.3f}  {p['recall']:>6.3f}  {p['f1']:>6.3f}"


def calibrate_from_audit(
    config: ProxyConfig, path: Path, *, export: Path | None = None, out: TextIO | None = None
) -> dict[str, Any]:
    out = out or sys.stdout
    records = read_audit(path)
    labelled = sum(1 for r in records if r.get("labels"))
    items = calibration_items(records, need_content=True)
    print(f"{len(records)} decision records, {labelled} labelled, {len(items)} labelled stages with captured content", file=out)
    if not items:
        raise ConfigError(
            f"{path}: no labelled record with captured content: label decisions in the console, with [audit] capture on"
        )
    if export is not None:
        with export.open("w", encoding="utf-8") as f:
            for i in items:
                row = (
                    {"prompt": i.query, "response": i.text}
                    if i.stage == "answer"
                    else {"prompt": i.text if i.stage == "prompt" else i.query}
                )
                if i.stage == "reasoning":
                    row["reasoning"] = i.text
                f.write(json.dumps(row | {"stage": i.stage, "label": i.harmful, "request_id": i.request_id}) + "\n")
        print(f"calibration set written to {export}", file=out)
    result = calibration(items, config.policy)
    for stage, entry in result["stages"].items():
        print(f"\n{stage}: {entry['items']} items, {entry['harmful']} harmful", file=out)
        print(f"  {'':<22} {'threshold':>9}  {'precision':>9}  {'recall':>6}  {'F1':>6}", file=out)
        print(_row("current", entry["current"]), file=out)
        for name, p in entry.get("strictness", {}).items():
            print(_row(name, p), file=out)
        print(_row("proposed", entry["proposed"]), file=out)
        if "note" in entry:
            print(f"  ({entry['note']})", file=out)
        for code, c in entry["categories"].items():
            print(_row(f"{code} current", c["current"]), file=out)
            print(_row(f"{code} proposed", c["proposed"]), file=out)
    if result["toml"]:
        print("\nPaste into your config:\n" + "\n".join("  " + line for line in result["toml"].splitlines()), file=out)
    else:
        print("\nNo change to propose.", file=out)
    return result
