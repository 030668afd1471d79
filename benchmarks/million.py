"""The whole DAG at 62,000, 250,000 and 1,000,000 images from WebDataset tar shards: each stage's
time and peak RSS, the exponent between sizes, DVC's no-op commands on the packed source against a
folder of loose files, and what appending one shard costs the DVC cache.

**Data.** Synthetic 32 px RGB photos of the demo's digits (MNIST and scikit-learn's, the demo's
pool), each a random shift of a demo image, in a random ink colour on a random paper colour, the
small group (a fifth) on a textured paper; 10 % of the labels flipped uniformly. Drawn once into
a pool folder (2 processes; image ``i`` is the same at every size) and hard-linked into each
size's ImageFolder with its ``metadata.csv`` (path, group).

**Order.** At each size, what the source costs comes first, the figures a 1M run is for: ``curate
pack`` of the folder into tar shards (``--shard-mb``); ingest from the shards (``ingest.source:
data/shards``) and, up to ``--folder-upto``, from the loose folder, whose outs must be the same
bytes; ``dvc add`` of each and the no-op ``dvc status ingest`` / ``dvc repro ingest`` (median of
3: DVC hashes the source, the rest of the DAG is a fixed number of files at any size); at the
largest size, the append: 0.1 % new images into the folder, ``curate pack`` again (new shards
only), ``dvc add data/shards``, ``dvc repro ingest``, and the cache's growth against the new
shards and the raw store's new segments. Then every other stage, the review sheet and ``curate
trace`` of one sample, and once all have run the whole pipeline's no-op ``dvc status`` and ``dvc
repro`` (part ``dvc_all``). Last, at the smallest size, ingest from the shards with 1 and 2
``ingest.workers``, interleaved (part ``ingest_workers``: run it on an otherwise idle machine).

**Stages.** Each runs as ``python -m curate.stages.<stage>`` in a copy of the template, timed:
wall, the stage process's own peak RSS (``VmHWM``) and the largest total RSS of it and its
children (:class:`TreeSampler`). At these sizes the run uses ``folds.method: embeddings`` (a
frozen network's features and an out-of-fold logistic regression, the cheap path) and one
training epoch (``train.epochs: 1``); every other param is the template's.

**Resumable.** Each finished part writes its figures to ``<workdir>/results.json`` and is skipped
on the next run, so the 1M run may be done in several sittings; run it in the background::

    nohup python benchmarks/million.py --workdir /var/tmp/curate-million > million.log 2>&1 &

Targets (2 cores, 24 GiB): every stage's exponent from 250k to 1M <= 1.15; no-op ``dvc status``
and ``dvc repro`` on the 1M shard source <= 10 s each; clean at 1M <= 10 min and <= 6 GiB; ingest
at 1M <= 1 GiB peak RSS; the append's cache growth <= 1.1x (new shards + changed segments + tables).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._synthetic import tinted_digit  # noqa: E402
from benchmarks.scale import demo_pool  # noqa: E402

STAGES = ("ingest", "folds", "clean", "rebalance", "augment", "train", "train_report", "evaluate", "gate")
SIDE = 32
GROUP_B_SHARE = 0.2
LABEL_NOISE = 0.10
MAX_EXPONENT = 1.15
MAX_NOOP_SECONDS = 10.0
MAX_CLEAN_SECONDS, MAX_CLEAN_RSS = 600.0, 6 * 2**30
MAX_INGEST_RSS = 2**30
MAX_APPEND_GROWTH = 1.1
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1"}
PARAMS = {
    "image": {"size": SIDE, "channels": 3},
    "ingest": {"source": "data/shards"},
    "folds": {"method": "embeddings"},
    "train": {"epochs": 1, "patience": 1},
}


# --- results ----------------------------------------------------------------------------------


class Results:
    """``<workdir>/results.json``: ``{"<n>/<part>": figures}``, rewritten after every part."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.figures = json.loads(path.read_text()) if path.exists() else {}

    def done(self, n: int, part: str) -> bool:
        return f"{n}/{part}" in self.figures

    def get(self, n: int, part: str) -> dict | None:
        return self.figures.get(f"{n}/{part}")

    def put(self, n: int, part: str, figures: dict) -> None:
        self.figures[f"{n}/{part}"] = figures
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.figures, indent=1, sort_keys=True))
        temp.replace(self.path)
        print(f"[{n:,}] {part}: {json.dumps(figures)}", flush=True)


class TreeSampler:
    """Peaks of a process and its descendants, from ``/proc`` every 0.2 s: the process's own peak
    RSS (``VmHWM``: since its exec, unlike ``wait4``'s ``ru_maxrss``, which starts from the size
    of the forking benchmark) and the largest sum of ``VmRSS`` over the tree (ingest's decoding
    workers included)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.own, self.tree = pid, 0, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:  # gone, or a zombie about to be reaped
            return {}
        fields = (line.split(":", 1) for line in lines if line.startswith(("VmHWM", "VmRSS")))
        return {key: int(value.split()[0]) * 1024 for key, value in fields}

    def _tree(self) -> list[int]:
        pids, pending = [], [self.pid]
        while pending:
            pid = pending.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    pending.extend(int(child) for child in task.read_text().split())
                except OSError:
                    continue
        return pids

    def _run(self) -> None:
        while not self.done.wait(0.2):
            self.own = max(self.own, self._status(self.pid).get("VmHWM", 0))
            total = sum(self._status(pid).get("VmRSS", 0) for pid in self._tree())
            self.tree = max(self.tree, total)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.thread.join()
        return {"rss": self.own, "rss_tree": self.tree}


def measured(command: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run ``command``; its wall time, its CPU time (user + sys, with its workers': what compares
    on a machine other jobs load) and the peaks of :class:`TreeSampler`. Exits with its output
    on failure."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    sampler = TreeSampler(process.pid)
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)  # its CPU and that of the children it waited for
    wall = time.perf_counter() - started
    peaks = sampler.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{output[-4000:]}")
    return {"wall": round(wall, 2), "cpu": round(usage.ru_utime + usage.ru_stime, 2)} | peaks


# --- the data set ---------------------------------------------------------------------------------


@functools.cache
def parents() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The demo's images (28 x 28), labels and class names: loaded once, before the pool forks."""
    images, samples = demo_pool(0)
    names = sorted(samples["label_name"].unique())
    labels = samples["label_name"].map({name: i for i, name in enumerate(names)}).to_numpy()
    return images.reshape(len(images), 28, 28), labels, names


def write_images(root: Path, first: int, count: int, seed: int) -> list[str]:
    """Images ``first .. first+count`` as ``<root>/<class>/<i>.png``; their metadata lines."""
    import numpy as np
    from PIL import Image

    images, labels, names = parents()
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    lines = []
    rng = np.random.default_rng([seed, first])
    for i in range(first, first + count):
        parent = int(rng.integers(len(images)))
        group = "b" if rng.random() < GROUP_B_SHARE else "a"
        pixels = tinted_digit(rng, images[parent], SIDE, 18 if group == "b" else 4, 200)
        label = int(labels[parent])
        if rng.random() < LABEL_NOISE:
            label = int((label + rng.integers(1, len(names))) % len(names))
        path = f"{names[label]}/{i:07d}.png"
        Image.fromarray(pixels).save(root / path)
        lines.append(f"{path},{group}")
    return lines


def _write_range(args: tuple[Path, int, int, int]) -> list[str]:
    return write_images(*args)


def write_folder(root: Path, first: int, count: int, seed: int) -> None:
    """``count`` images from number ``first`` over 2 processes; metadata.csv lists every image."""
    import multiprocessing

    step = 20_000
    parents()
    ends = range(first, first + count, step)
    ranges = [(root, start, min(step, first + count - start), seed) for start in ends]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        lines = [line for chunk in pool.imap(_write_range, ranges) for line in chunk]
    metadata = root / "metadata.csv"
    old = metadata.read_text() if metadata.exists() else "path,group\n"
    metadata.write_text(old + "\n".join(lines) + "\n")


def linked_folder(workdir: Path, target: Path, n: int) -> None:
    """The first ``n`` images at ``target``, hard-linked from one pool that grows to the largest
    size (image ``i`` is the same at every size): each image is drawn and encoded once."""
    pool = workdir / "pool"
    have = (
        len((pool / "metadata.csv").read_text().splitlines()) - 1 if (pool / "metadata.csv").exists() else 0
    )
    if have < n:
        write_folder(pool, have, n - have, seed=0)
    lines = (pool / "metadata.csv").read_text().splitlines()[: n + 1]
    for line in lines[1:]:
        path = line.rsplit(",", 1)[0]
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(pool / path, target / path)
    (target / "metadata.csv").write_text("\n".join(lines) + "\n")


def cache_bytes(root: Path) -> int:
    cache = root / ".dvc" / "cache"
    return sum(path.stat().st_size for path in cache.rglob("*") if path.is_file()) if cache.exists() else 0


# --- parts --------------------------------------------------------------------------------------


def prepare(workdir: Path, n: int, results: Results) -> Path:
    """The template copy at ``n`` images and its folder source (part ``source``)."""
    from benchmarks._common import set_params, template_copy

    root = workdir / f"repo-{n}"
    if not results.done(n, "source"):
        shutil.rmtree(root, ignore_errors=True)
        template_copy(root)
        set_params(root / "params.yaml", **PARAMS)
        started = time.perf_counter()
        linked_folder(workdir, root / "data" / "folder", n)
        results.put(n, "source", {"wall": round(time.perf_counter() - started, 1)})
    return root


def use_source(root: Path, source: str) -> None:
    from benchmarks._common import set_params

    set_params(root / "params.yaml", ingest={"source": source})


def run_stages(root: Path, n: int, results: Results) -> None:
    """Every stage after ingest, then the two commands people run between repros: the review
    sheet (the flagged queue, most suspicious first) and ``curate trace`` of one sample."""
    for stage in STAGES[1:]:
        if not results.done(n, stage):
            results.put(n, stage, measured([sys.executable, "-m", f"curate.stages.{stage}"], root))
    first_path = (root / "data" / "folder" / "metadata.csv").read_text().splitlines()[1].rsplit(",", 1)[0]
    for part, command in (("review", ["curate", "review"]), ("trace", ["curate", "trace", first_path])):
        if not results.done(n, part):
            results.put(n, part, measured(command, root))


def raw_digests(root: Path) -> dict[str, str]:
    """SHA-256 of ingest's outs: the sample table and every file of the raw store."""
    import hashlib

    raw = root / "data" / "raw"
    files = [raw / "samples.parquet", *sorted((raw / "images").iterdir())]
    return {str(p.relative_to(raw)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def source_parts(root: Path, n: int, results: Results, shard_mb: int, with_folder: bool) -> None:
    """``curate pack`` of the folder (part ``pack``), ingest from the shards (part ``ingest``), and
    with ``with_folder`` from the loose folder (``ingest_folder``), whose outs must be the same
    bytes. The pipeline goes on from the shards."""
    ingest = [sys.executable, "-m", "curate.stages.ingest"]
    if not results.done(n, "pack"):
        shutil.rmtree(root / "data" / "shards", ignore_errors=True)
        command = ["curate", "pack", "data/folder", "data/shards", "--shard-mb", str(shard_mb)]
        figures = measured(command, root)
        shards = list((root / "data" / "shards").glob("*.tar"))
        figures |= {"shards": len(shards), "bytes": sum(path.stat().st_size for path in shards)}
        results.put(n, "pack", figures)
    if not results.done(n, "ingest"):
        use_source(root, "data/shards")
        results.put(n, "ingest", measured(ingest, root))
    if with_folder and not results.done(n, "ingest_folder"):
        from_shards = raw_digests(root)
        use_source(root, "data/folder")
        figures = measured(ingest, root)
        results.put(n, "ingest_folder", figures | {"same_bytes_as_shards": raw_digests(root) == from_shards})
    use_source(root, "data/shards")


def median_seconds(command: list[str], root: Path, repeats: int = 3) -> float:
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=root, env=ENV, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
    return round(statistics.median(walls), 2)


def dvc_commit(root: Path, *stages: str) -> None:
    subprocess.run(["dvc", "commit", "-f", "-q", *stages], cwd=root, env=ENV, check=True)


def dvc_part(root: Path, n: int, results: Results, with_folder: bool) -> None:
    """What the source costs DVC: ``dvc add`` and the no-op ``dvc status ingest`` / ``dvc repro
    ingest`` with the shards, and with the loose folder (the rest of the DAG is a fixed number
    of files whatever the size: part ``dvc_all`` times the whole pipeline's no-op)."""
    if results.done(n, "dvc"):
        return
    use_source(root, "data/shards")
    # Once packed, the loose folder leaves DVC's sight: DVC walks the whole workspace for .dvc
    # files at every command, matching each file against .dvcignore (70 s a `dvc status` with a
    # million loose files beside the shards; 5 s with the folder ignored).
    ignore = root / ".dvcignore"
    kept = ignore.read_text() if ignore.exists() else ""
    ignore.write_text(kept + "/data/folder/\n")
    figures = {"add_shards": measured(["dvc", "add", "data/shards"], root)["wall"]}
    dvc_commit(root, "ingest")
    figures["status_shards"] = median_seconds(["dvc", "status", "ingest"], root)
    figures["repro_shards"] = median_seconds(["dvc", "repro", "ingest"], root)
    if with_folder:
        ignore.write_text(kept)
        use_source(root, "data/folder")
        figures["add_folder"] = measured(["dvc", "add", "data/folder"], root)["wall"]
        dvc_commit(root, "ingest")
        figures["status_folder"] = median_seconds(["dvc", "status", "ingest"], root)
        figures["repro_folder"] = median_seconds(["dvc", "repro", "ingest"], root)
        use_source(root, "data/shards")
        dvc_commit(root, "ingest")
        (root / "data" / "folder.dvc").unlink()  # the folder is the packing's input, not tracked
        ignore.write_text(kept + "/data/folder/\n")
    results.put(n, "dvc", figures)


def dvc_all_part(root: Path, n: int, results: Results) -> None:
    """Once every stage has run: the whole pipeline's no-op ``dvc status`` and ``dvc repro``."""
    if results.done(n, "dvc_all") or not all(results.done(n, stage) for stage in STAGES[1:]):
        return
    figures = {"commit": measured(["dvc", "commit", "-f", "-q"], root)["wall"]}
    figures["status"] = median_seconds(["dvc", "status"], root)
    figures["repro"] = median_seconds(["dvc", "repro"], root)
    results.put(n, "dvc_all", figures)


def append_part(root: Path, n: int, results: Results, shard_mb: int) -> None:
    """0.1 % new images, re-packed and added: the cache's growth against what changed."""
    if results.done(n, "append"):
        return
    shards = root / "data" / "shards"
    old_shards = {path.name: path.stat().st_size for path in shards.glob("*.tar")}
    raw = root / "data" / "raw"
    old_files = {path.relative_to(raw): path.stat().st_size for path in raw.rglob("*") if path.is_file()}
    before = cache_bytes(root)
    write_folder(root / "data" / "folder", n, max(1, n // 1000), seed=0)
    pack = measured(["curate", "pack", "data/folder", "data/shards", "--shard-mb", str(shard_mb)], root)
    add = measured(["dvc", "add", "data/shards"], root)
    repro = measured(["dvc", "repro", "ingest"], root)
    after = cache_bytes(root)
    new_shards = {p.name: p.stat().st_size for p in shards.glob("*.tar") if p.name not in old_shards}
    changed = {
        str(path.relative_to(raw)): path.stat().st_size
        for path in raw.rglob("*")
        if path.is_file() and old_files.get(path.relative_to(raw)) is None
    }
    expected = sum(new_shards.values()) + sum(changed.values())
    results.put(n, "append", {
        "pack": pack["wall"], "add": add["wall"], "repro_ingest": repro["wall"],
        "new_shards": len(new_shards), "new_shard_bytes": sum(new_shards.values()),
        "new_raw_files": len(changed), "new_raw_bytes": sum(changed.values()),
        "cache_growth": after - before, "growth_ratio": round((after - before) / max(expected, 1), 3),
    })  # fmt: skip


def workers_part(root: Path, n: int, results: Results, repeats: int = 2) -> None:
    """Ingest from the shards with ``ingest.workers`` 1 and 2, interleaved (1 2 1 2 ...): the
    medians and their ratio. The outs must be the same bytes."""
    from benchmarks._common import set_params

    if results.done(n, "ingest_workers"):
        return
    ingest = [sys.executable, "-m", "curate.stages.ingest"]
    walls: dict[int, list[float]] = {1: [], 2: []}
    digests = {}
    for _ in range(repeats):
        for workers in (1, 2):
            set_params(root / "params.yaml", ingest={"workers": workers})
            walls[workers].append(measured(ingest, root)["wall"])
            digests[workers] = raw_digests(root)
    set_params(root / "params.yaml", ingest={"workers": "auto"})
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    results.put(n, "ingest_workers", {
        "one": walls[1], "two": walls[2], "speedup": round(one / two, 2),
        "same_bytes": digests[1] == digests[2],
    })  # fmt: skip


# --- the table -------------------------------------------------------------------------------------


def exponent(small: float, big: float, ratio: float) -> float:
    return math.log(big / small) / math.log(ratio) if small > 0 and big > 0 else float("nan")


def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def print_table(results: Results, sizes: list[int]) -> None:
    print("\n| part | " + " | ".join(f"{n:,} s | GiB" for n in sizes) + " | exponents (time) |")
    print("|---|" + "---|---|" * len(sizes) + "---|")
    for part in ("pack", "ingest_folder", *STAGES, "review", "trace"):
        cells, walls = [], []
        for n in sizes:
            figures = results.get(n, part)
            walls.append(figures["wall"] if figures else None)
            cells.append(f"{figures['wall']:.1f} | {gib(figures['rss'])}" if figures else "- | -")
        exponents = [
            f"{exponent(a, b, n2 / n1):.2f}"
            for n1, n2, a, b in zip(sizes, sizes[1:], walls, walls[1:], strict=False)
            if a and b
        ]
        print(f"| {part} | " + " | ".join(cells) + f" | {', '.join(exponents) or '-'} |")
    for n in sizes:
        for part in ("dvc", "dvc_all", "append", "ingest_workers"):
            if results.get(n, part):
                print(f"{n:,} {part}: {json.dumps(results.get(n, part))}")
    checks(results, sizes)


def checks(results: Results, sizes: list[int]) -> None:
    big, small = sizes[-1], sizes[-2] if len(sizes) > 1 else None
    lines = []
    if small:
        for stage in STAGES:
            a, b = results.get(small, stage), results.get(big, stage)
            if a and b:
                e = exponent(a["wall"], b["wall"], big / small)
                lines.append(
                    (f"{stage} exponent {small:,}->{big:,} {e:.2f} <= {MAX_EXPONENT}", e <= MAX_EXPONENT)
                )
    clean = results.get(big, "clean")
    if clean:
        lines.append(
            (
                f"clean at {big:,}: {clean['wall']:.0f} s <= {MAX_CLEAN_SECONDS:.0f}",
                clean["wall"] <= MAX_CLEAN_SECONDS,
            )
        )
        lines.append((f"clean peak RSS {gib(clean['rss'])} GiB <= 6", clean["rss"] <= MAX_CLEAN_RSS))
    ingest = results.get(big, "ingest")
    if ingest:
        lines.append((f"ingest peak RSS {gib(ingest['rss'])} GiB <= 1", ingest["rss"] <= MAX_INGEST_RSS))
    dvc = results.get(big, "dvc")
    if dvc:
        for key in ("status_shards", "repro_shards"):
            lines.append((f"no-op {key} {dvc[key]} s <= {MAX_NOOP_SECONDS}", dvc[key] <= MAX_NOOP_SECONDS))
    append = results.get(big, "append")
    if append:
        ratio = append["growth_ratio"]
        lines.append((f"append cache growth {ratio}x <= {MAX_APPEND_GROWTH}", ratio <= MAX_APPEND_GROWTH))
    for text, ok in lines:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[62_000, 250_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/curate-million"))
    parser.add_argument("--shard-mb", type=int, default=256)
    parser.add_argument(
        "--folder-upto",
        type=int,
        default=250_000,
        help="ingest and DVC on the loose folder too, up to this size (DVC walks every file)",
    )
    parser.add_argument("--table", action="store_true", help="print the table of what is done, run nothing")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = Results(args.workdir / "results.json")
    sizes = sorted(args.sizes)
    if not args.table:
        for n in sizes:
            # What the source costs first (pack, ingest, DVC, the append at the largest size):
            # the figures a 1M run is for, in case the sitting ends before training does.
            root = prepare(args.workdir, n, results)
            with_folder = n <= args.folder_upto
            source_parts(root, n, results, args.shard_mb, with_folder)
            dvc_part(root, n, results, with_folder)
            if n == sizes[-1]:
                append_part(root, n, results, args.shard_mb)
            run_stages(root, n, results)
            dvc_all_part(root, n, results)
        workers_part(args.workdir / f"repo-{sizes[0]}", sizes[0], results)
    print_table(results, sizes)


if __name__ == "__main__":
    main()
