"""How long each command takes to start before doing any work, against the 1.5 s target.

For every stage (and ``compare``, ``trace``): the wall time of a fresh interpreter that imports
the command's module and validates ``params.yaml`` (what a stage does before reading its inputs),
the median of ``--repeat`` runs, and whether torch, torchvision or cleanlab got imported. The
light stages (those that train nothing) must stay under 1.5 s and import none of the three.
Run from the repository root on an otherwise idle machine: ``python benchmarks/startup.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "ingest": "curate.stages.ingest",
    "folds": "curate.stages.folds",
    "clean": "curate.stages.clean",
    "rebalance": "curate.stages.rebalance",
    "augment": "curate.stages.augment",
    "train": "curate.stages.train",
    "train_report": "curate.stages.train_report",
    "evaluate": "curate.stages.evaluate",
    "gate": "curate.stages.gate",
    "compare": "curate.people.compare",
    "trace": "curate.people.trace",
}
# The stages that train nothing and need neither torch nor cleanlab (clean needs cleanlab).
LIGHT = {"ingest", "rebalance", "train_report", "gate", "compare", "trace"}
TARGET_SECONDS = 1.5
HEAVY_MODULES = ("torch", "torchvision", "cleanlab")
PROBE = (
    "import importlib, json, sys; importlib.import_module({module!r}); "
    "from curate.params import load_params; load_params('params.yaml'); "
    "print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
)


def start_time(module: str, repeat: int) -> tuple[float, list[str]]:
    """Median wall seconds of a fresh interpreter importing ``module`` and loading params."""
    seconds, heavy = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY_MODULES)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seconds.append(time.perf_counter() - started)
        heavy = json.loads(out.strip().splitlines()[-1])
    return statistics.median(seconds), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':<10} {'start (s)':>9}  {'heavy imports':<28} verdict")
    for name, module in COMMANDS.items():
        try:
            seconds, heavy = start_time(module, args.repeat)
        except subprocess.CalledProcessError:
            print(f"{name:<10} {'n/a':>9}  module {module} not importable")
            continue
        light = name in LIGHT
        ok = not light or (seconds <= TARGET_SECONDS and not heavy)
        verdict = ("pass" if ok else "FAIL") if light else "(needs torch or cleanlab: not judged)"
        print(f"{name:<10} {seconds:>9.2f}  {', '.join(heavy) or '-':<28} {verdict}")
    print(f"target: light stages ({', '.join(sorted(LIGHT))}) start in <= {TARGET_SECONDS} s, no torch")


if __name__ == "__main__":
    main()
