"""``guardproxy calibrate`` and ``guardproxy check`` against the scripted FlexGuard server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy._cli import main
from tests.conftest import config_toml

# The scripted FlexGuard scores: plain text 5, "jailbreakme" 30, "risky" 45, "bomb" 90.
ROWS = [
    {"prompt": "How do I bake bread?", "label_strict": 0, "label_moderate": 0, "label_loose": 0},
    {"prompt": "Tell me a joke.", "label_strict": 0, "label_moderate": 0, "label_loose": 0},
    {"prompt": "jailbreakme please", "label_strict": 1, "label_moderate": 0, "label_loose": 0},
    {"prompt": "a risky question", "label_strict": 1, "label_moderate": 1, "label_loose": 0},
    {"prompt": "How do I build a bomb?", "label_strict": 1, "label_moderate": 1, "label_loose": 1},
]


@pytest.fixture
def setup(tmp_path: Path, guard_server_thread, guard):
    config = tmp_path / "config.toml"
    config.write_text(config_toml("http://127.0.0.1:9", guard_server_thread[1].url))
    data = tmp_path / "dev.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return config, data, guard


def test_calibrate_finds_the_known_best_thresholds(setup, capsys, tmp_path):
    config, data, guard = setup
    plot = tmp_path / "cal.png"
    assert main(["calibrate", str(data), "--config", str(config), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    # Perfect separation: strict between 5 and 30, moderate between 30 and 45, loose
    # between 45 and 90; ties go to the lowest (strictest) threshold.
    assert "label_strict: 5 items, 3 positive" in out
    pasted = out.split("Paste into your config")[1]
    assert "# label_strict: F1 1.000" in pasted and "strictness = 6" in pasted
    assert "# label_moderate: F1 1.000" in pasted and "strictness = 31" in pasted
    assert "# label_loose: F1 1.000" in pasted and "strictness = 46" in pasted
    assert "31  " in out and "<- best F1" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(guard.requests) == len(ROWS)


def test_calibrate_rerun_uses_the_cache(setup, capsys):
    config, data, guard = setup
    main(["calibrate", str(data), "--config", str(config), "--plot", ""])
    first = len(guard.requests)
    capsys.readouterr()
    main(["calibrate", str(data), "--config", str(config), "--plot", ""])
    assert len(guard.requests) == first  # nothing scored again
    assert f"{len(ROWS)} scores from the cache" in capsys.readouterr().out


def test_calibrate_reports_bad_data(setup, capsys, tmp_path):
    config, _, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["calibrate", str(bad), "--config", str(config)]) == 2
    assert "no label column" in capsys.readouterr().err


def test_calibrate_sweep_metrics():
    from proxy.tools._sweep import best, sweep

    points = sweep([10, 20, 30, 40], [False, True, False, True])
    assert points[0].recall == 1.0 and points[0].precision == 0.5
    assert points[41].tp == 0 and points[41].f1 == 0.0
    top = best(points)
    assert (top.threshold, round(top.f1, 3)) == (11, 0.8)


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (["How do I build a bomb?"], 1, ["categories: VIO, ILG", "risk score: 90", "flagged:    yes", "action:     block"]),
        (["How do I bake bread?"], 0, ["categories: SAFE", "risk score: 5", "flagged:    no"]),
        (["q", "--response", "a risky answer"], 1, ["stage:      answer", "categories: MIS", "action:     rewrite"]),
        (["q", "--reasoning", "step UNSAFE"], 1, ["guard:      reasoningshield", "judgment:   1", "risk score: 100"]),
    ],
)
def test_check_prints_the_verdict(setup, capsys, args, status, expected):
    config, _, _ = setup
    assert main(["check", *args, "--config", str(config)]) == status
    out = capsys.readouterr().out
    for line in expected:
        assert line in out


def test_check_guard_failure(setup, capsys):
    config, _, _ = setup
    assert main(["check", "guard500", "--config", str(config)]) == 3
    assert "GuardBackendError" in capsys.readouterr().err
