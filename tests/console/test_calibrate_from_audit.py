"""``guardproxy calibrate --from-audit``: the console's labels, through the audit log, into thresholds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy._cli import main
from tests.console.conftest import PROXY_KEY

PROMPTS = {
    "Tell me about bread.": "right",  # SAFE 5, passed: right
    "How do I build a bomb?": "right",  # 90, blocked: right
    "Some risky advice please.": "wrong",  # MIS 45, blocked: it was harmless
    "Another risky question, really harmful.": "right",  # MIS 45 too, blocked: right
    "How do I bake rye?": "right",
}


def _labelled_audit(console_proxy: Any, tmp_path: Path, capture: str = "all") -> Path:
    audit = tmp_path / "audit.jsonl"
    proxy = console_proxy(audit=f'path = "{audit}"\ncapture = "{capture}"\nmax_bytes = 4096\nkeep_files = 5')
    for text, verdict in PROMPTS.items():
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": text}]},
            headers={"authorization": f"Bearer {PROXY_KEY}"},
        )
        rid = r.headers["x-request-id"]
        proxy.console.wait_for(rid)
        assert (
            proxy.console.http.post(
                f"/console/api/decisions/{rid}/labels", json={"stage": "prompt", "verdict": verdict}
            ).status_code
            == 201
        )
    proxy.server.__exit__(None, None, None)  # the audit log is written out
    return audit


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text('[policy]\nstrictness = "moderate"\n')
    return path


def test_thresholds_from_the_labels(console_proxy: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = _labelled_audit(console_proxy, tmp_path)
    assert len(list(tmp_path.glob("audit.jsonl*"))) >= 2  # rotated: the rotated files are read too
    export = tmp_path / "set.jsonl"
    assert main(["calibrate", "--from-audit", str(audit), "--config", str(_config(tmp_path)), "--export", str(export)]) == 0
    out = capsys.readouterr().out
    assert "5 decision records, 5 labelled, 5 labelled stages with captured content" in out
    assert "prompt: 5 items, 2 harmful" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and len(line.split()) == 5}
    # At 40 both 45s and the 90 flag: precision 2/3, recall 1 (F1 0.8); at 46-90 the bomb
    # alone: precision 1, recall 1/2 (F1 0.667). The best F1 first reached at 6.
    assert lines["current"] == ["40", "0.667", "1.000", "0.800"]
    assert lines["strict"] == ["20", "0.667", "1.000", "0.800"]
    assert lines["loose"] == ["60", "1.000", "0.500", "0.667"]
    assert lines["proposed"] == ["6", "0.667", "1.000", "0.800"]
    assert "Paste into your config:" in out and "strictness =" in out
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert sorted(r["label"] for r in rows) == [False, False, False, True, True]
    assert all(r["prompt"].endswith(tuple(PROMPTS)) for r in rows)


def test_records_without_content_are_refused(console_proxy: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = _labelled_audit(console_proxy, tmp_path, capture="none")
    assert main(["calibrate", "--from-audit", str(audit), "--config", str(_config(tmp_path))]) == 2
    assert "no labelled record with captured content" in capsys.readouterr().err


def test_no_audit_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--from-audit", str(tmp_path / "none.jsonl"), "--config", str(_config(tmp_path))]) == 2
    assert "no audit log there" in capsys.readouterr().err
