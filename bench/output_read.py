"""What reading one upstream event costs the proxy, per API: this tree against another,
side by side in one run.

    git archive <commit> | tar -x -C /tmp/or-before    # the old code, outside the repo
    python -m bench.output_read --before /tmp/or-before [--quick]

A script you run on purpose, not part of the test suite. Each tree runs in a process of
its own (``--child``) that times its adapter's ``read`` plus the relay's split into
reasoning and answer, over vLLM's own recorded streams (tests/e2e/fixtures/recordings:
chat, legacy completions, Responses), and over the chat stream with an undeclared field
added to every chunk (the path that drops it and re-encodes the chunk). The trees take
turns, rounds alternating, so that drift on a shared machine hits them alike.

Output: a markdown table on stdout and in bench/results/output-read.md (ns per event,
the median of the rounds, and after / before).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = ROOT / "tests" / "e2e" / "fixtures" / "recordings"
OUT_MD = ROOT / "bench" / "results" / "output-read.md"
STREAMS = {
    "chat": "chat_stream_benign",
    "completions": "completions_stream_str",
    "responses": "responses_stream_benign",
}


def _events(name: str) -> list[bytes]:
    raw = (RECORDINGS / f"{name}.sse").read_bytes()
    out = []
    for block in raw.split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if data and data[0] != b"[DONE]":
            out.append(b"\n".join(data))
    return out


def _child(tree: Path, repeat: int) -> dict[str, float]:
    """ns per event for each stream, reading with the code under ``tree``."""
    sys.path.insert(0, str(tree))
    from proxy.pipeline._channels import ThinkSplitter, split_output
    from proxy.protocols.chat import ChatAdapter
    from proxy.protocols.completions import CompletionsAdapter
    from proxy.protocols.responses import ResponsesAdapter

    assert Path(sys.modules["proxy"].__file__ or "").resolve().is_relative_to(tree.resolve())
    adapters = {"chat": ChatAdapter, "completions": CompletionsAdapter, "responses": ResponsesAdapter}
    cases = {api: (adapters[api], _events(name)) for api, name in STREAMS.items()}
    chat = _events(STREAMS["chat"])
    cases["chat, undeclared field"] = (ChatAdapter, [e.replace(b'"delta":{', b'"delta":{"vendor":1,', 1) for e in chat])
    out = {}
    for label, (make, events) in cases.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter_ns()
            for _ in range(repeat):
                adapter = make()  # one per request, as the routes make them
                splitter = ThinkSplitter()
                for data in events:
                    for o in adapter.read(data).outputs:
                        split_output(o, splitter)
            best = min(best, (time.perf_counter_ns() - started) / (repeat * len(events)))
        out[label] = best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.output_read", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare against")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (~20 s)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.repeat)))
        return 0
    trees = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    rounds = 3 if args.quick else 7
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            cmd = [sys.executable, "-m", "bench.output_read", "--child", str(trees[name]), "--repeat", str(args.repeat)]
            got: dict[str, Any] = json.loads(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
            for label, ns in got.items():
                results[name].setdefault(label, []).append(ns)
    lines = ["| events | " + " | ".join(f"{n} ns/event" for n in trees) + (" | after / before |" if "before" in trees else " |")]
    lines.append("|" + "---|" * (len(trees) + 1 + ("before" in trees)))
    for label in results["after"]:
        med = {n: statistics.median(results[n][label]) for n in trees if label in results[n]}
        row = f"| {label} | " + " | ".join(f"{med[n]:,.0f}" if n in med else "-" for n in trees)
        if "before" in med:
            row += f" | {med['after'] / med['before']:.2f}"
        elif "before" in trees:
            row += " | -"
        lines.append(row + " |")
    table = "\n".join(lines)
    print(table)
    OUT_MD.write_text(f"# Reading upstream events: ns per event ({rounds} rounds, median)\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
