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

``--store-gb`` then swaps the raw and augmented pixel stores for stores of that many GiB each
(64 MiB segments, ``dvc commit -f``: the pipeline's record follows) and times a no-op
``dvc repro`` against the same workspace's before, median of three each, and the lineage digest
of such a store (:func:`curate.data.store.store_digest`).

Each line splits the run into: the stage commands (``dvc.stage.run.cmd_run``: the stages
themselves), DVC's start (interpreter and imports, before its ``main``), the directory trees it
builds (``dvc_data``'s ``_build_tree``: listing and hashing a folder, or looking its files up in
DVC's state by inode, size and mtime), ``dvc.lock`` parsed for update (ruamel's round-trip parser,
once per stage run) and dumped, the other YAML parses (``dvc.yaml``, ``dvc.lock``, params), and
the rest. ``--images 1500`` gives 1x.

    python benchmarks/dvc_overhead.py              # 16x, about 6 minutes here
    python benchmarks/dvc_overhead.py --images 1500 --store-gb 4
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
SOURCE = "data/source"  # the generated images: ingest's folder dependency
SOURCE_BUILDS = "of which the source folder"
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
                spent = time.perf_counter() - started
                seconds[label] += spent
                calls[label] += 1
                if label == "tree builds" and str(a[0]).endswith(SOURCE):
                    seconds[SOURCE_BUILDS] += spent
                    calls[SOURCE_BUILDS] += 1

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
    parts["the rest (index, locks, state, caching outs)"] = record["main"] - sum(
        seconds[label] for label, _, _ in PARTS
    )
    return parts


def print_run(name: str, record: dict, images: int) -> None:
    parts = breakdown(record)
    overhead = record["wall"] - parts["stage commands"]
    print(f"\n{name}: {record['wall']:.1f} s, of which DVC's own {overhead:.1f} s")
    for label, value in parts.items():
        calls = record["calls"].get(label)
        print(f"  {label:46} {value:6.2f} s" + (f"  ({calls} calls)" if calls else ""))
        walks = record["calls"].get(SOURCE_BUILDS, 0)
        if label == "tree builds" and walks:
            spent = record["seconds"][SOURCE_BUILDS]
            print(f"    {SOURCE_BUILDS:44} {spent:6.2f} s  ({walks} walks of its {images:,} files, "
                  f"{1e6 * spent / walks / images:.0f} us a file a walk)")  # fmt: skip


def noop_seconds(root: Path, repeats: int = 3) -> float:
    """Median wall of a no-op ``dvc repro`` (the process, start included)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - started)
        if done.returncode != 0 or "Running stage" in done.stdout:
            sys.exit(f"dvc repro was not a no-op:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return sorted(walls)[len(walls) // 2]


def big_store_noop(root: Path, gib: float) -> None:
    """A no-op ``dvc repro`` with ``gib`` GiB raw and augmented stores, against as it was."""
    from scale import write_stream_store

    from curate.data.store import store_digest

    before = noop_seconds(root)
    for name in ("raw", "augmented"):
        shutil.rmtree(root / "data" / name / "images")
        write_stream_store(root / "data" / name / "images", gib, seed=0)
    started = time.perf_counter()
    subprocess.run(
        ["dvc", "commit", "-f", "-q"], cwd=root, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}
    )
    committed = time.perf_counter() - started
    after = noop_seconds(root)
    segments = len(list((root / "data/raw/images").glob("*.npy")))
    started = time.perf_counter()
    store_digest(root / "data/raw/images")
    digest = time.perf_counter() - started
    print(
        f"\nno-op dvc repro, median of 3: {before:.2f} s; with {gib:g} GiB raw and augmented stores "
        f"({segments} segments each): {after:.2f} s, {after - before:+.2f} s (<= +2 s: "
        f"{'PASS' if after - before <= 2 else 'FAIL'}); dvc commit -f of them (hashing and caching "
        f"{2 * gib:g} GiB once) {committed:.0f} s; lineage digest of one store {1000 * digest:.1f} ms"
    )


def main() -> None:
    if sys.argv[1:2] == ["--account"]:
        sys.exit(accounted_dvc(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24_000, help="source images (default 24,000: 16x)")
    parser.add_argument("--store-gb", type=float, default=0, help="then a no-op with stores this big (GiB)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp folder, removed)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scale import demo_pool, write_source

    from benchmarks._common import TINY, set_params, template_copy

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
        if args.store_gb:
            big_store_noop(root, args.store_gb)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
