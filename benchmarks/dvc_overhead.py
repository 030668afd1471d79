"""Where DVC's own time goes in a ``dvc repro``: the profile behind the scale benchmark's
"DVC overhead" line.

A template copy over ``--images`` generated images (the scale benchmark's 16x by default:
24,000 PNGs of ``benchmarks/scale.py``'s generator, one file each, as a user's folder has them),
on short trainings (``tests/test_experiments.TINY``: the overhead does not depend on the epochs),
reproduced three times under DVC's own CLI with the wall time of a few of its functions
accounted:

1. from scratch (every file of the source hashed for the first time),
2. after a change of ``seed`` (every stage runs, the source's hashes come from DVC's state),
3. no-op (nothing runs).

Each line splits the run into: the stage commands (``dvc.stage.run.cmd_run``: the stages
themselves), DVC's start (interpreter and imports, before its ``main``), the directory trees it
builds (``dvc_data``'s ``_build_tree``: listing and hashing a folder, or looking its files up in
DVC's state by inode, size and mtime), ``dvc.lock`` parsed for update (ruamel's round-trip parser,
once per stage run) and dumped, the other YAML parses (``dvc.yaml``, ``dvc.lock``, params), and
the rest. ``--images 1500`` gives 1x.

    python benchmarks/dvc_overhead.py              # 16x, about 6 minutes here
    python benchmarks/dvc_overhead.py --images 1500
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCOUNT_ENV = "CURATE_DVC_ACCOUNT"  # where the accounted DVC process writes its figures
PARTS = (
    ("stage commands", "dvc.stage.run", "cmd_run"),
    ("tree builds", "dvc_data.hashfile.build", "_build_tree"),
    ("dvc.lock parsed for update", "dvc.utils.serialize._yaml", "parse_yaml_for_update"),
    ("YAML parsed (the rest)", "dvc.utils.serialize._yaml", "parse_yaml"),
    ("YAML dumped", "dvc.utils.serialize._yaml", "_dump"),
)


def accounted_dvc(args: list[str]) -> int:
    """Run DVC's CLI in this process with the functions of ``PARTS`` timed (seconds and calls)."""
    import importlib

    seconds, calls = collections.Counter(), collections.Counter()

    def timed(label, function):
        @functools.wraps(function)
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                seconds[label] += time.perf_counter() - started
                calls[label] += 1

        return wrapper

    for label, module, name in PARTS:
        owner = importlib.import_module(module)
        setattr(owner, name, timed(label, getattr(owner, name)))
    from dvc.cli import main

    started = time.perf_counter()
    code = main(args)
    record = {"main": time.perf_counter() - started, "seconds": seconds, "calls": calls}
    Path(os.environ[ACCOUNT_ENV]).write_text(json.dumps(record))
    return code


def run_accounted(root: Path, *args: str) -> dict:
    """One accounted ``dvc <args>`` in ``root``: its figures and the process's wall."""
    log = root.parent / "account.json"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1", ACCOUNT_ENV: str(log)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--account", *args], cwd=root, env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(log.read_text()) | {"wall": wall}


def breakdown(record: dict) -> dict[str, float]:
    """The run's wall split into parts; the round-trip parse is inside parse_yaml's total."""
    seconds = collections.Counter(record["seconds"])
    seconds["YAML parsed (the rest)"] -= seconds["dvc.lock parsed for update"]
    parts = {"DVC start (interpreter, imports)": record["wall"] - record["main"]}
    parts |= {label: seconds[label] for label, _, _ in PARTS}
    parts["the rest (index, locks, state, caching outs)"] = record["main"] - sum(seconds.values())
    return parts


def print_run(name: str, record: dict, images: int) -> None:
    parts = breakdown(record)
    overhead = record["wall"] - parts["stage commands"]
    print(f"\n{name}: {record['wall']:.1f} s, of which DVC's own {overhead:.1f} s")
    for label, value in parts.items():
        calls = record["calls"].get(label)
        print(f"  {label:46} {value:6.2f} s" + (f"  ({calls} calls)" if calls else ""))
    builds = record["calls"].get("tree builds", 0)
    if builds:
        per_file = 1e6 * parts["tree builds"] / max(builds, 1) / images
        print(f"  a tree build of the {images:,}-file source costs about {per_file:.0f} us a file")


def main() -> None:
    if sys.argv[1:2] == ["--account"]:
        sys.exit(accounted_dvc(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24_000, help="source images (default 24,000: 16x)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp folder, removed)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scale import demo_pool, write_source

    from tests.conftest import set_params, template_copy
    from tests.test_experiments import TINY

    work = args.keep or Path(tempfile.mkdtemp(prefix="curate-dvc-overhead-"))
    try:
        root = template_copy(work / "repo")
        write_source(root / "data" / "source", args.images, demo_pool(0), 0)
        short = {section: values for section, values in TINY.items() if section != "ingest"}
        set_params(root / "params.yaml", ingest={"source": "data/source"}, **short)
        lock = (root / "dvc.lock").stat().st_size
        print(f"{args.images:,} source images; dvc.lock {lock:,} bytes, dvc.yaml "
              f"{(root / 'dvc.yaml').stat().st_size:,} bytes")  # fmt: skip
        print_run("from scratch", run_accounted(root, "repro"), args.images)
        set_params(root / "params.yaml", seed=1)
        print_run("after a change of seed (every stage runs)", run_accounted(root, "repro"), args.images)
        print_run("no-op", run_accounted(root, "repro"), args.images)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
