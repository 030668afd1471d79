"""What a data version costs: the DVC cache growth and the ``dvc push`` bytes of each kind of change.

Generates a folder of photo-like JPEGs (256-512 px, gradients + shapes + sensor noise: about
100 KB each, as camera photos compress), runs a baseline ``dvc repro ingest`` in a copy of the
template, then, each from that baseline: append 1% (new files named after the existing ones, as
cameras name them), a new subfolder of 1%, relabel 1% (files moved between class folders), delete
1% (a contiguous run of names, as a bad batch is deleted, and 1% at random), and 1% with random
(uuid) names. For each it prints the growth of ``.dvc/cache`` (bytes, and as ratios to the raw
store and to the change's own decoded pixels), the store segments written anew, and the bytes
``dvc push`` sends to an S3 remote (moto on loopback, as in tests/test_remote.py) that holds the
baseline. ``--augment`` reproduces up to the augment stage instead of ingest (on 2-fold, 2-epoch
folds) and also prints the augmented store's growth against the copies that are new.
``--ingest`` instead measures ingest's peak RSS at 1x and 4x the files and its throughput with
1 and 2 workers.

    python benchmarks/versioning.py --photos 3000 --size 64 --segment-mb 1
    python benchmarks/versioning.py --photos 3000 --size 64 --segment-mb 1 --augment
    python benchmarks/versioning.py --ingest --photos 1000 --size 64
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import set_params, template_copy  # noqa: E402

CLASSES = ("cat", "dog", "fox", "owl", "yak")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO / "src")}
BUCKET, KEY_ID, SECRET = "versions", "testing-key-id", "testing-secret-key"


# --- photos ------------------------------------------------------------------------------------


def photo(seed: int) -> bytes:
    """A photo-like JPEG: smooth gradients and waves, a few flat shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = (int(n) for n in rng.integers(256, 513, 2))
    y, x = np.ogrid[0:h, 0:w]
    x, y = x[..., None] / max(w, h), y[..., None] / max(w, h)
    a, b, f, p = rng.uniform(-1, 1, (4, 3))
    base = 128 + 60 * (a * x + b * y) + 40 * np.sin(2 * np.pi * (2 * f * x + p * y))
    picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, w // 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(picture).astype(np.int16) + rng.integers(-20, 21, (h, w, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def add_photos(folder: Path, names: list[str], seed: int) -> None:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(photo(seed + i))


def camera_names(first: int, count: int, rng: np.random.Generator, prefix: str = "") -> list[str]:
    """``<class>/<prefix>IMG_<n>.jpg`` for n = first.., each in a class drawn at random."""
    return [
        f"{CLASSES[rng.integers(len(CLASSES))]}/{prefix}IMG_{n:05d}.jpg" for n in range(first, first + count)
    ]


# --- the changes, each from the baseline -------------------------------------------------------


def listing(photos: Path) -> list[Path]:
    return sorted(p for p in photos.rglob("*.jpg"))


def append(photos: Path, n: int, total: int, rng: np.random.Generator) -> None:
    add_photos(photos, camera_names(total, n, rng), seed=10**6)


def new_subfolder(photos: Path, n: int, total: int, rng: np.random.Generator) -> None:
    add_photos(photos, camera_names(0, n, rng, prefix="trip_2026/"), seed=2 * 10**6)


def relabel(photos: Path, n: int, total: int, rng: np.random.Generator) -> None:
    for path in rng.choice(listing(photos), n, replace=False):
        others = [c for c in CLASSES if c != path.parent.name]
        path.rename(photos / others[rng.integers(len(others))] / path.name)


def delete_run(photos: Path, n: int, total: int, rng: np.random.Generator) -> None:
    start = total // 2
    for number in range(start, start + n):
        for path in photos.glob(f"*/IMG_{number:05d}.jpg"):
            path.unlink()


def delete_random(photos: Path, n: int, total: int, rng: np.random.Generator) -> None:
    for path in rng.choice(listing(photos), n, replace=False):
        path.unlink()


def uuid_names(photos: Path, n: int, total: int, rng: np.random.Generator) -> None:
    names = [
        f"{CLASSES[rng.integers(len(CLASSES))]}/{uuid.UUID(int=int(rng.integers(2**62)))}.jpg"
        for _ in range(n)
    ]
    add_photos(photos, names, seed=3 * 10**6)


CHANGES: dict[str, Callable] = {
    "append 1%": append,
    "new subfolder 1%": new_subfolder,
    "relabel 1%": relabel,
    "delete 1% (a run)": delete_run,
    "delete 1% (random)": delete_random,
    "uuid names 1%": uuid_names,
}


# --- measuring ---------------------------------------------------------------------------------


def run(*args: str, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def cache_files(root: Path) -> dict[str, int]:
    cache = root / ".dvc/cache"
    return {str(p.relative_to(cache)): p.stat().st_size for p in cache.rglob("*") if p.is_file()}


def store_segments(root: Path, store: str = "raw") -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (root / "data" / store / "images").glob("*.npy")}


def raw_splits(root: Path) -> dict[str, str]:
    """Each ingested sample's split, by sample id."""
    import pandas as pd

    table = pd.read_parquet(root / "data/raw/samples.parquet", columns=["sample_id", "split"])
    return dict(zip(table["sample_id"], table["split"], strict=True))


def copy_ids(root: Path) -> set[str]:
    """The augmented copies' ids (``<parent sample_id>~a<k>``): one id, one image."""
    import pandas as pd

    table = pd.read_parquet(root / "data/augmented/samples.parquet", columns=["sample_id", "store"])
    return set(table.loc[table["store"] == "augmented", "sample_id"])


def remote_bytes(client, prefix: str) -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def copy_project(base: Path, target: Path) -> None:
    """A copy of the baseline project: photos and the cache hard-linked (never edited in place:
    new files are added, old ones renamed or unlinked), the rest copied."""
    linked = {"photos", ".dvc"}
    shutil.copytree(
        base, target, symlinks=True, ignore=lambda d, names: linked & set(names) if d == str(base) else []
    )
    shutil.copytree(base / "photos", target / "photos", copy_function=os.link)
    shutil.copytree(base / ".dvc", target / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    shutil.copytree(base / ".dvc/cache", target / ".dvc/cache", copy_function=os.link)


def add_remote(root: Path, endpoint: str, prefix: str) -> None:
    run("dvc", "remote", "add", "-f", "-d", "storage", f"s3://{BUCKET}/{prefix}", cwd=root)
    run("dvc", "remote", "modify", "storage", "endpointurl", endpoint, cwd=root)
    run("dvc", "remote", "modify", "--local", "storage", "access_key_id", KEY_ID, cwd=root)
    run("dvc", "remote", "modify", "--local", "storage", "secret_access_key", SECRET, cwd=root)


def baseline(root: Path, args: argparse.Namespace) -> None:
    template_copy(root)
    add_photos(root / "photos", camera_names(0, args.photos, np.random.default_rng(0)), seed=0)
    set_params(
        root / "params.yaml",
        image={"size": args.size, "channels": 3},
        ingest={"source": "photos", "segment_mb": args.segment_mb},
        # --augment: folds short enough to run seven times; their skill on these photos (classes
        # drawn at random) is nil, so clean acts on nothing and every train row gets its copy.
        **({"folds": {"k": 2, "epochs": 2, "min_steps": 0}} if args.augment else {}),
    )
    started = time.perf_counter()
    run("dvc", "repro", args.target, cwd=root)
    print(f"baseline: {args.photos:,} photos, dvc repro {args.target} {time.perf_counter() - started:.1f} s")


def measure(base: Path, work: Path, name: str, endpoint: str, args: argparse.Namespace) -> dict:
    """One change from the baseline: cache growth, new segments and push bytes."""
    import boto3

    root = work / name.replace(" ", "_").replace("%", "").replace("(", "").replace(")", "")
    copy_project(base, root)
    prefix = root.name
    add_remote(root, endpoint, prefix)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    run("dvc", "push", cwd=root)
    cache, remote, segments = cache_files(root), remote_bytes(client, prefix), store_segments(root)
    augmented = store_segments(root, "augmented") if args.augment else {}
    copies, splits = (copy_ids(root), raw_splits(root)) if args.augment else (set(), {})
    n = max(1, round(args.photos / 100))
    CHANGES[name](root / "photos", n, args.photos, np.random.default_rng(7))
    started = time.perf_counter()
    run("dvc", "repro", args.target, cwd=root)
    seconds = time.perf_counter() - started
    run("dvc", "push", cwd=root)
    after, after_segments = cache_files(root), store_segments(root)
    pushed = remote_bytes(client, prefix)
    new_segments = set(after_segments) - set(segments)
    row = {
        "change": name,
        "files": n,
        "decoded": n * args.size * args.size * 3,
        "store": sum(after_segments.values()),
        "segments": len(after_segments),
        "new_segments": len(new_segments),
        "new_segment_bytes": sum(after_segments[s] for s in new_segments),
        "largest_segment": max(after_segments.values()),
        "cache_growth": sum(size for path, size in after.items() if path not in cache),
        "raw_growth": sum(after_segments[s] for s in new_segments),
        "pushed": sum(size for key, size in pushed.items() if key not in remote),
        "repro_s": seconds,
    }
    if args.augment:
        row |= augmented_growth(root, augmented, copies)
        after_splits = raw_splits(root)
        row["split_moves"] = sum(after_splits.get(sid, split) != split for sid, split in splits.items())
    return row


def augmented_growth(root: Path, segments: dict[str, int], copies: set[str]) -> dict:
    """The augmented store's new segments against the copies that are new (a copy of the same
    parent with the same index is the same image, so only new ids need new pixels)."""
    after, after_copies = store_segments(root, "augmented"), copy_ids(root)
    new = set(after) - set(segments)
    return {
        "copies": len(after_copies),
        "new_copies": len(after_copies - copies),
        "gone_copies": len(copies - after_copies),
        "aug_store": sum(after.values()),
        "aug_segments": len(after),
        "aug_new_segments": len(new),
        "aug_growth": sum(after[s] for s in new),
        "aug_largest_segment": max(after.values(), default=0),
    }


def print_markdown(header: list[str], lines: list[list[str]]) -> None:
    """A Markdown table, the first column left-aligned and the figures right-aligned."""
    print("\n| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for line in lines:
        print("| " + " | ".join(line) + " |")


def print_table(rows: list[dict]) -> None:
    header = ["change", "files", "new segments (of)", "cache growth", "/ store", "/ change's pixels",
              "dvc push sends", "largest segment"]  # fmt: skip
    print_markdown(header, [
        [r["change"], str(r["files"]), f"{r['new_segments']} ({r['segments']})", f"{r['cache_growth']:,} B",
         f"{r['cache_growth'] / r['store']:.3f}", f"{r['cache_growth'] / r['decoded']:.1f}x",
         f"{r['pushed']:,} B", f"{r['largest_segment']:,} B"]
        for r in rows
    ])  # fmt: skip


def print_augmented(rows: list[dict]) -> None:
    header = ["change", "raw store growth", "old rows that moved split",
              "augmented copies new / gone (of)", "new segments (of)", "augmented store growth",
              "/ store", "segments new per copy changed"]  # fmt: skip
    print_markdown(header, [
        [r["change"], f"{r['raw_growth']:,} B", str(r["split_moves"]),
         f"{r['new_copies']} / {r['gone_copies']} ({r['copies']})",
         f"{r['aug_new_segments']} ({r['aug_segments']})",
         f"{r['aug_growth']:,} B", f"{r['aug_growth'] / r['aug_store']:.3f}",
         f"{r['aug_new_segments'] / max(r['new_copies'] + r['gone_copies'], 1):.2f}"]
        for r in rows
    ])  # fmt: skip


def versions(args: argparse.Namespace) -> None:
    from moto.server import ThreadedMotoServer

    work = Path(tempfile.mkdtemp(prefix="curate-versions-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        baseline(work / "base", args)
        segments = store_segments(work / "base")
        print(
            f"raw store: {sum(segments.values()):,} B, {len(segments)} segments ({args.segment_mb} MiB each)"
        )
        rows = [measure(work / "base", work, name, endpoint, args) for name in args.only or CHANGES]
        print(json.dumps(rows, indent=1))
        print_table(rows)
        if args.augment:
            print_augmented(rows)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --- ingest: memory and throughput -------------------------------------------------------------


def ingest_run(root: Path, workers: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, the largest process) of one ``curate ingest`` in ``root``."""
    set_params(root / "params.yaml", ingest={"workers": workers})
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter();"
        "subprocess.run([sys.executable, '-m', 'curate.stages.ingest'], check=True, capture_output=True);"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    seconds, rss = run(sys.executable, "-c", probe, cwd=root).split()
    return float(seconds), float(rss)


def cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (the decoding workers)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_throughput(root: Path, workers: int) -> tuple[float, float]:
    """Photos per second through ingest's read-decode-write path (no start-up, no report) and the
    CPU milliseconds per photo over all processes: equal CPU per photo with 1 and 2 workers means
    the speed-up is the cores free to run them."""
    from curate.data.folder import read_image_folder
    from curate.params import load_params

    params = load_params(root / "params.yaml")
    settings = params.ingest.model_copy(update={"workers": workers, "source": str(root / "photos")})
    started, cpu_started = time.perf_counter(), cpu_seconds()
    data = read_image_folder(root / "photos", params.image, settings, 0, root / "throughput")
    seconds = time.perf_counter() - started
    return len(data.samples) / seconds, 1000 * (cpu_seconds() - cpu_started) / len(data.samples)


def interleaved_throughput(root: Path, repeats: int = 3) -> dict[int, tuple[float, float]]:
    """Median photos/s and CPU ms per photo of 1 and 2 workers, runs interleaved (1, 2, 1, 2, ...):
    a 2-vCPU machine's speed drifts over minutes (a neighbour's load, clocks), and runs of one
    kind back to back would read that drift as the workers' effect."""
    runs: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in runs:
            runs[workers].append(decode_throughput(root, workers))
    return {workers: tuple(np.median(np.array(figures), axis=0)) for workers, figures in runs.items()}


def ingest_figures(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="curate-ingest-"))
    try:
        names = camera_names(0, 4 * args.photos, np.random.default_rng(0))
        add_photos(work / "all", names, seed=0)
        for scale, count in (("1x", args.photos), ("4x", 4 * args.photos)):
            root = work / scale
            (root / "data/demo").mkdir(parents=True)
            shutil.copy(REPO / "params.yaml", root / "params.yaml")
            for name in names[:count]:
                (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
                os.link(work / "all" / name, root / "photos" / name)
            size = sum(p.stat().st_size for p in (root / "photos").rglob("*.jpg"))
            set_params(
                root / "params.yaml", image={"size": args.size, "channels": 3}, ingest={"source": "photos"}
            )
            for workers in (1, 2):
                seconds, rss = ingest_run(root, workers)
                print(
                    f"curate ingest {scale}: {count:,} photos ({size / 2**20:.0f} MiB), {workers} worker(s): "
                    f"{seconds:.1f} s in all, peak RSS {rss:.0f} MiB"
                )
        figures = interleaved_throughput(work / "4x")
        (one, one_cpu), (two, two_cpu) = figures[1], figures[2]
        print(
            f"read-decode-write, 4x, median of 3 interleaved runs: 1 worker {one:.0f} photos/s "
            f"({one_cpu:.1f} ms CPU each), 2 workers {two:.0f} photos/s ({two_cpu:.1f} ms CPU each): "
            f"{two / one:.2f}x (>= 1.7x: {'PASS' if two / one >= 1.7 else 'FAIL'})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=3000, help="photos in the baseline (default 3000)")
    parser.add_argument("--size", type=int, default=64, help="image.size of the store (default 64)")
    parser.add_argument("--segment-mb", type=float, default=1.0, help="ingest.segment_mb (default 1)")
    parser.add_argument("--ingest", action="store_true", help="ingest RSS and throughput instead")
    parser.add_argument(
        "--augment", action="store_true", help="reproduce up to augment, and measure its store too"
    )
    parser.add_argument("--only", nargs="+", choices=list(CHANGES), help="these changes alone")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    args.target = "augment" if args.augment else "ingest"
    (ingest_figures if args.ingest else versions)(args)


if __name__ == "__main__":
    main()
