"""What the command line tells its user: ``--version``, ``check``'s exit statuses, and the
labelled sample that the docs run ``calibrate`` on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from proxy._cli import main
from tests.conftest import config_toml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "docs/examples/labelled.jsonl"


def test_version_prints_the_installed_version():
    out = subprocess.run([sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"guardproxy {version('guardproxy')}"


def test_check_help_documents_every_exit_status(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for status, meaning in [(0, "not flagged"), (1, "flagged"), (2, "bad command line or config"), (3, "the guard failed")]:
        assert f"{status} {meaning}" in text


def test_check_exit_status_2_for_a_bad_config(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[policy]\nstrictness = 'lenient'\n")
    assert main(["check", "hello", "--config", str(config)]) == 2
    assert "guardproxy:" in capsys.readouterr().err


def _sample_rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


def test_the_sample_is_what_calibrate_reads():
    rows = _sample_rows()
    assert len(rows) >= 12
    for row in rows:
        assert isinstance(row["prompt"], str) and row["prompt"]
        labels = [row[k] for k in ("label_strict", "label_moderate", "label_loose")]
        assert all(v in (0, 1) for v in labels)
        # A stricter policy flags at least what a looser one does.
        assert labels[0] >= labels[1] >= labels[2]
    for column in ("label_strict", "label_moderate", "label_loose"):
        assert {row[column] for row in rows} == {0, 1}, f"{column} needs both classes for a sweep"


def test_the_docs_example_calibrates_on_the_sample(tmp_path, capsys, guard_server_thread, guard):
    """The documented command on the shipped sample, with the scripted FlexGuard scoring."""
    assert "guardproxy calibrate docs/examples/labelled.jsonl" in (REPO / "docs/endpoints.md").read_text()
    config = tmp_path / "config.toml"
    config.write_text(config_toml("http://127.0.0.1:9", guard_server_thread[1].url))
    data = tmp_path / "labelled.jsonl"
    data.write_bytes(SAMPLE.read_bytes())  # the score cache is written beside the data
    assert main(["calibrate", str(data), "--config", str(config), "--plot", ""]) == 0
    out = capsys.readouterr().out
    rows = _sample_rows()
    assert f"{len(rows)} items, 0 scores from the cache" in out and "0 guard errors" in out
    assert len(guard.requests) == len(rows)
    for column in ("label_strict", "label_moderate", "label_loose"):
        positives = sum(int(row[column]) for row in rows)  # type: ignore[call-overload]
        assert f"{column}: {len(rows)} items, {positives} positive" in out
    pasted = out.split("Paste into your config")[1]
    thresholds = [int(t) for t in re.findall(r"strictness = (\d+)", pasted)]
    assert len(thresholds) == 3 and all(0 <= t <= 100 for t in thresholds)
