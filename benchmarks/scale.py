"""How the pipeline's cost grows with the data: ``dvc repro`` of a generated data set at 1x, 4x
and 16x, per stage; a ~4 GB set trained for one epoch streamed from disk; 1 against 2 training
processes.

**Sizes.** The data set is demo-like: ``--base`` (default 1,500) images per 1x, each a random
affine variant (rotation, shift, scale) of a demo image (MNIST digits and scikit-learn's, the
demo's group gap and 10 % label noise, each variant keeping its parent's label, group and
split), written as an ImageFolder with a ``metadata.csv`` (path, group, split): the
bring-your-own-data path, files decoded by ingest. 1,500 is about a fifth of the demo: 16x
(24,000 images) is 3.5 demos, whose training stages (5 folds x 8 epochs, 20 epochs of train)
dominate the run on 2 cores, and even 1x trains every stage on enough rows (about 1,100 train
rows) that fixed costs (imports, report rendering) are not all there is. Params are the
template's, but ``train.patience`` is set to ``train.epochs``: early stopping at one size and
not at another would measure the data, not the cost. Run it on an idle machine: with another
process on one of the 2 cores, torch's 2 intra-op threads wait on each other and a training
stage runs 10x slower (measured), which no exponent survives.

**Per stage.** The temp copy's ``dvc.yaml`` runs each stage's command under this script's
``--time-stage`` wrapper, which records the stage process's wall time and its peak RSS
(``ru_maxrss`` from ``wait4``: the process and the processes it waited for, file-backed pages of
memory-maps included). DVC's own overhead is the ``dvc repro`` wall minus the stages' walls in
that one run, less the wrappers' own starts (read from ``/proc``: the benchmark's cost): its
start, hashing the source folder and the outs, caching them, writing ``dvc.lock``. Images/s is
the data set's images over the stage's wall; the cost exponent between two sizes is
``log(t_big / t_small) / log(n_big / n_small)`` (1: linear).

**Streaming.** A raw store of ``--stream-gb`` GiB of 64 px RGB images (about 350,000 at
4 GiB), written chunk by chunk through a memory-map (never whole in memory), and its sample
table, trained for one epoch by the train stage (``python -m curate.stages.train``) with
``train.data_on_device: never``. Peak RSS is reported with its anonymous and file-backed
parts as ``/proc/<pid>/status`` shows them (file-backed: shared libraries and memory-mapped files,
the image file's pages among them: page cache, reclaimable).

**Processes.** With ``train.nproc`` in params, the train stage on the largest size's data with 1
and 2 processes (DDP over gloo), the images/s of each, and the share of the 2-process training
time the gradient all-reduce takes: 2 gloo processes on loopback all-reduce a tensor of the
model's parameter count, timed alone (the communication itself; a DDP comm hook that times each
bucket from launch to completion also counts the wait for the slower rank), times the steps.

Targets on this machine: every stage's exponent from 4x to 16x <= 1.1; the streaming train stage's peak
RSS <= 2 GiB; DVC's overhead at 16x <= 5 s (out of reach with DVC 3.67: ``benchmarks/dvc_overhead.py``
says where it goes, docs/storage.md, "DVC's own time"). Run on an otherwise idle machine (the full run:
``python benchmarks/scale.py``; small: ``--base 300 --sizes 1 4 --stream-gb 0.25``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# numpy, pandas, yaml, PIL and tests.conftest (template_copy, set_params) are imported where
# used: the --time-stage wrapper runs before each stage and must start in milliseconds.
REPO = Path(__file__).resolve().parents[1]

STAGES = ("ingest", "folds", "clean", "rebalance", "augment", "train", "train_report", "evaluate", "gate")
LOG_ENV = "CURATE_SCALE_LOG"
MAX_EXPONENT = 1.1
MAX_STREAM_RSS = 2 * 2**30
MAX_DVC_OVERHEAD = 5.0
STREAM_SIDE, STREAM_CHANNELS, STREAM_CLASSES = 64, 3, 10
CHUNK_IMAGES = 8192
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1"}


# --- the per-stage wrapper (runs inside dvc repro) ---------------------------------------------


def time_stage(name: str, command: list[str]) -> int:
    """Run one stage's command; append its wall time and peak RSS to ``$CURATE_SCALE_LOG``, and
    the wrapper's own start (the benchmark's cost, not DVC's)."""
    wrapper_start = own_age()
    started = time.perf_counter()
    process = subprocess.Popen(command)
    sampler = StatusSampler(process.pid)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    sampler.stop()
    record = {"stage": name, "wall": wall, "rss": usage.ru_maxrss * 1024, "wrapper": wrapper_start}
    if LOG_ENV in os.environ:
        with open(os.environ[LOG_ENV], "a") as log:
            log.write(json.dumps(record | sampler.peaks()) + "\n")
    return os.waitstatus_to_exitcode(status)


def own_age() -> float:
    """Seconds since this process started (from /proc, to the kernel's 10 ms tick)."""
    ticks = os.sysconf("SC_CLK_TCK")
    started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    return float(Path("/proc/uptime").read_text().split()[0]) - started


class StatusSampler:
    """Peak anonymous and file-backed RSS of a process, from ``/proc/<pid>/status`` every 0.2 s."""

    FIELDS = ("RssAnon", "RssFile")

    def __init__(self, pid: int) -> None:
        self.pid, self.max = pid, dict.fromkeys(self.FIELDS, 0)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.2):
            try:
                lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
            except OSError:  # gone (or a zombie about to be reaped)
                continue
            for line in lines:
                key, _, value = line.partition(":")
                if key in self.max and value.strip():
                    self.max[key] = max(self.max[key], int(value.split()[0]) * 1024)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def peaks(self) -> dict[str, int]:
        return {"rss_anon": self.max["RssAnon"], "rss_file": self.max["RssFile"]}


# --- the generated data set --------------------------------------------------------------------


def demo_pool(seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """The demo's images and sample table (label noise and group gap as the template has them)."""
    from curate.data.demo import build_demo

    return build_demo(
        seed=seed, test_fraction=0.25, label_noise=0.10, minority_keep=0.10, size=28, channels=1
    )


def write_source(root: Path, n: int, pool: tuple[np.ndarray, pd.DataFrame], seed: int) -> None:
    """``n`` random affine variants of demo images as ``<root>/<class>/<i>.png`` + metadata.csv."""
    import numpy as np
    from PIL import Image

    images, samples = pool
    rng = np.random.default_rng([seed, n])
    parents = rng.integers(0, len(samples), n)
    rows = ["path,group,split"]
    for folder in samples["label_name"].unique():
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, parent in enumerate(parents):
        meta = samples.iloc[parent]
        image = Image.fromarray(images[parent].reshape(28, 28))
        angle, scale = rng.uniform(-12, 12), rng.uniform(0.9, 1.1)
        shift = tuple(int(v) for v in rng.integers(-2, 3, 2))
        fill = int(images[parent].reshape(28, 28)[0, 0])  # the paper's colour: light or dark
        variant = image.rotate(angle, Image.Resampling.BILINEAR, translate=shift, fillcolor=fill)
        side = round(28 * scale)
        variant = variant.resize((side, side), Image.Resampling.BILINEAR)
        canvas = Image.new("L", (28, 28), fill)
        canvas.paste(variant, ((28 - side) // 2, (28 - side) // 2))
        path = f"{meta['label_name']}/{i:06d}.png"
        canvas.save(root / path)
        rows.append(f"{path},{meta['group']},{meta['split']}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")


# --- one size: dvc repro with every stage timed ------------------------------------------------


@dataclass
class SizeRun:
    images: int
    repro_wall: float
    stages: dict[str, dict] = field(default_factory=dict)

    @property
    def dvc_overhead(self) -> float:
        """The repro's wall less the stages' and the wrappers' (this benchmark's) starts."""
        return self.repro_wall - sum(stage["wall"] + stage["wrapper"] for stage in self.stages.values())


def wrap_commands(root: Path) -> None:
    """Put every stage command of the copy's dvc.yaml under the ``--time-stage`` wrapper."""
    import yaml

    path = root / "dvc.yaml"
    pipeline = yaml.safe_load(path.read_text())
    wrapper = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"
    for name, stage in pipeline["stages"].items():
        stage["cmd"] = f"{wrapper} --time-stage {name} -- {stage['cmd']}"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))


def run_size(workdir: Path, n: int, pool, seed: int) -> SizeRun:
    """A template copy over ``n`` generated images, reproduced once with every stage timed."""
    import yaml

    from benchmarks._common import set_params, template_copy

    root = template_copy(workdir / f"repo-{n}")
    write_source(root / "data" / "source", n, pool, seed)
    params = yaml.safe_load((root / "params.yaml").read_text())
    set_params(root / "params.yaml", ingest={"source": "data/source"},
               train={"patience": params["train"]["epochs"]})  # fmt: skip
    wrap_commands(root)
    log = workdir / f"stages-{n}.jsonl"
    started = time.perf_counter()
    done = subprocess.run(["dvc", "repro"], cwd=root, env={**ENV, LOG_ENV: str(log)},
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"dvc repro at {n} images failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    stages = {record["stage"]: record for record in map(json.loads, log.read_text().splitlines())}
    return SizeRun(n, wall, stages)


# --- the streaming case ------------------------------------------------------------------------


def write_stream_store(folder: Path, gib: float, seed: int) -> np.ndarray:
    """A pixel store of ``gib`` GiB of 64 px RGB images in 64 MiB segments, streamed chunk by
    chunk (never whole in memory): noise over a colour per class, learnable and incompressible.
    Each row's class."""
    import numpy as np

    from curate.data.store import StoreWriter, target_rows

    n = int(gib * 2**30 / (STREAM_SIDE**2 * STREAM_CHANNELS))
    shape = (STREAM_SIDE, STREAM_SIDE, STREAM_CHANNELS)
    writer = StoreWriter(folder, shape, target_rows(64, shape))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, STREAM_CLASSES, n)
    colours = rng.integers(0, 128, (STREAM_CLASSES, STREAM_CHANNELS), dtype=np.uint8)
    for first in range(0, n, CHUNK_IMAGES):
        chunk = rng.integers(0, 128, (min(CHUNK_IMAGES, n - first), *shape), dtype=np.uint8)
        chunk += colours[labels[first : first + len(chunk)], None, None]
        writer.append(chunk, [str(i) for i in range(first, first + len(chunk))])
    writer.close()
    return labels


def write_stream_set(root: Path, gib: float, seed: int) -> int:
    """A raw store of ``gib`` GiB of 64 px RGB images, streamed chunk by chunk into its segments,
    and the augment stage's table over it (every row train, weight 1, one copy)."""
    import numpy as np
    import pandas as pd

    from curate.data.image_rows import write_images

    (root / "data/raw").mkdir(parents=True)
    (root / "data/augmented").mkdir(parents=True)
    labels = write_stream_store(root / "data/raw/images", gib, seed)
    n = len(labels)
    write_images(
        root / "data/augmented/images", np.zeros((0, STREAM_SIDE, STREAM_SIDE, STREAM_CHANNELS), np.uint8)
    )
    ids = [f"{i:016x}" for i in range(n)]
    table = pd.DataFrame({
        "sample_id": ids, "path": [f"c{label}/{i}" for i, label in enumerate(labels)],
        "row": np.arange(n), "label": labels, "label_name": [f"c{label}" for label in labels],
        "group": np.where(np.arange(n) % 5 == 0, "b", "a"), "split": "train",
        "weight": 1.0, "copies": 1, "store": "raw", "parent_id": None,
    })  # fmt: skip
    table.to_parquet(root / "data/augmented/samples.parquet", index=False)
    return n


def train_fields() -> set[str]:
    from curate.params import TrainParams

    return set(TrainParams.model_fields)


def run_fit(root: Path, train: dict) -> dict:
    """The train stage in ``root`` with ``train`` params, timed by the wrapper; its run record too."""
    from benchmarks._common import set_params

    set_params(root / "params.yaml", train=train)
    log = root / "train.jsonl"
    log.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--time-stage", "train", "--",
               "python", "-m", "curate.stages.train"]  # fmt: skip
    done = subprocess.run(command, cwd=root, env={**ENV, LOG_ENV: str(log)}, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip() or done.stdout.strip()).splitlines()[-1]}
    record = json.loads(log.read_text().splitlines()[-1])
    return record | {"run": json.loads((root / "models/train.json").read_text())}


def stream_case(workdir: Path, gib: float, seed: int) -> dict:
    root = workdir / "stream"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    started = time.perf_counter()
    n = write_stream_set(root, gib, seed)
    written = time.perf_counter() - started
    train = {"epochs": 1, "val_fraction": 0.02, "patience": 1}
    missing = "data_on_device" not in train_fields()
    if not missing:
        train["data_on_device"] = "never"
    result = run_fit(root, train)
    shutil.rmtree(root / "data")  # gigabytes: gone as soon as measured
    return result | {"images": n, "gib": gib, "write_seconds": written, "no_data_on_device": missing}


# --- processes: 1 against 2 --------------------------------------------------------------------


def allreduce_seconds(n_params: int, repeats: int = 50) -> float:
    """Mean seconds of one all-reduce of ``n_params`` float32 between 2 gloo processes (loopback)."""
    import torch.multiprocessing as mp

    port = _free_port()
    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_allreduce_worker, args=(2, port, n_params, repeats, out), nprocs=2, join=True)
    return max(out.get() for _ in range(2))


def _allreduce_worker(rank: int, world: int, port: int, n_params: int, repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    grad = torch.ones(n_params)
    for _ in range(5):  # warm-up: connections, buffers
        dist.all_reduce(grad)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(grad)
    out.put((time.perf_counter() - started) / repeats)
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def model_parameters(root: Path) -> int:
    import torch

    state = torch.load(root / "models/model.pt", weights_only=True)
    state = state.get("state_dict", state)
    return sum(value.numel() for key, value in state.items() if value.is_floating_point()
               and not key.endswith(("running_mean", "running_var")))  # fmt: skip


def nproc_case(root: Path, epochs: int) -> dict:
    """The train stage on ``root``'s data with 1 and 2 processes, and the all-reduce's share."""
    import yaml

    if "nproc" not in train_fields():
        return {"skipped": "train.nproc is not in params yet"}
    runs = {n: run_fit(root, {"nproc": n, "epochs": epochs, "patience": epochs}) for n in (1, 2)}
    if any("error" in run for run in runs.values()):
        return {"runs": runs}
    params = yaml.safe_load((root / "params.yaml").read_text())
    n_params = model_parameters(root)
    reduce = allreduce_seconds(n_params)
    run = runs[2]["run"]
    steps = sum(math.ceil(stats["images"] / params["train"]["batch_size"]) for stats in run["history"])
    share = reduce * steps / run["summary"]["train_seconds"]
    return {"runs": runs, "allreduce": reduce, "params": n_params, "steps": steps, "share": share}


# --- the report --------------------------------------------------------------------------------


def exponent(small: float, big: float, ratio: float) -> float:
    return math.log(big / small) / math.log(ratio)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def print_sizes(runs: list[SizeRun]) -> list[str]:
    """The per-stage table; returns the target lines (exponents between the two largest sizes)."""
    pairs = list(zip(runs, runs[1:], strict=False))
    head = "".join(f"{f'{r.images:,} img: s':>16}{'MiB':>7}{'img/s':>9}" for r in runs)
    print(f"{'stage':<10}{head}" + "".join(f"{f'exp {a.images}->{b.images}':>18}" for a, b in pairs))
    targets = []
    for name in STAGES:
        walls = [r.stages[name]["wall"] for r in runs]
        cells = "".join(
            f"{wall:>16.1f}{mib(r.stages[name]['rss']):>7}{r.images / wall:>9,.0f}"
            for r, wall in zip(runs, walls, strict=True)
        )
        exps = [
            exponent(walls[i], walls[i + 1], runs[i + 1].images / runs[i].images) for i in range(len(pairs))
        ]
        print(f"{name:<10}{cells}" + "".join(f"{e:>18.2f}" for e in exps))
        if exps:
            small, big = pairs[-1]
            line = f"{name} cost exponent {small.images:,}->{big.images:,}: {exps[-1]:.2f}"
            targets.append(f"{line} (<= {MAX_EXPONENT}): {verdict(exps[-1] <= MAX_EXPONENT)}")
    for label, values in (
        ("stages", [sum(s["wall"] for s in r.stages.values()) for r in runs]),
        ("dvc repro", [r.repro_wall for r in runs]),
        ("dvc own", [r.dvc_overhead for r in runs]),
    ):
        print(f"{label:<10}" + "".join(f"{value:>16.1f}{'':>16}" for value in values))
    last = runs[-1]
    line = f"DVC overhead at {last.images:,} images: {last.dvc_overhead:.1f} s (<= {MAX_DVC_OVERHEAD:.0f} s)"
    return [*targets, f"{line}: {verdict(last.dvc_overhead <= MAX_DVC_OVERHEAD)}"]


def print_stream(result: dict) -> list[str]:
    print(f"\nstreaming: {result['images']:,} images of {STREAM_SIDE} px RGB ({result['gib']:g} GiB, "
          f"written in {result['write_seconds']:.0f} s), one epoch of the train stage")  # fmt: skip
    if result["no_data_on_device"]:
        print("  train.data_on_device is not in params yet: run without it (the images gathered in memory)")
    if "error" in result:
        print(f"  train failed: {result['error']}")
        return ["streaming train: FAIL (the stage failed)"]
    speed = result["run"]["summary"]["images_per_second"]
    print(f"  stage wall {result['wall']:.0f} s, training {speed:,.0f} images/s")
    print(f"  peak RSS {mib(result['rss'])} MiB (sampled: anonymous {mib(result['rss_anon'])} MiB, "
          f"file-backed {mib(result['rss_file'])} MiB: shared libraries, torch's some 0.5 GiB, and "
          "the pages of memory-mapped files, the image file's among them)")  # fmt: skip
    ok = result["rss"] <= MAX_STREAM_RSS
    return [
        f"streaming train, peak RSS {mib(result['rss'])} MiB (<= {mib(MAX_STREAM_RSS)} MiB): {verdict(ok)}"
    ]


def print_nproc(result: dict) -> None:
    print("\nprocesses (train stage on the largest size's data):")
    if "skipped" in result:
        print(f"  skipped: {result['skipped']}")
        return
    for n, run in result["runs"].items():
        if "error" in run:
            print(f"  nproc {n}: failed: {run['error']}")
            continue
        print(f"  nproc {n}: {run['run']['summary']['images_per_second']:,.0f} images/s, "
              f"stage wall {run['wall']:.1f} s, peak RSS {mib(run['rss'])} MiB")  # fmt: skip
    if "share" not in result:
        return
    reduce, share, params = result["allreduce"], result["share"], result["params"]
    one, two = (result["runs"][n]["run"]["summary"]["images_per_second"] for n in (1, 2))
    print(f"  2 processes / 1: {two / one:.2f}x the images/s")
    size = params * 4  # float32 gradients
    print(f"  gradient all-reduce alone, 2 gloo processes on loopback: {params:,} parameters "
          f"({size / 2**10:,.0f} KiB) in {reduce * 1e3:.2f} ms ({size / reduce / 1e6:,.0f} MB/s); "
          f"x {result['steps']} steps = {share:.0%} of the 2-process training time")  # fmt: skip
    print(
        "  Here both processes share 2 cores: 2 processes do the work of 1 (each on one core instead of\n"
        "  one process on two) plus the all-reduce and the wait for the slower rank. On a multi-GPU\n"
        "  machine each process has a device of its own, so the compute per step divides by the GPU\n"
        "  count, and the same gradient bytes go over NCCL (NVLink or PCIe, tens of GB/s), bucketed and\n"
        "  overlapped with the backward pass by DDP: images/s can then grow close to the GPU count as\n"
        "  long as a step's compute stays well above that transfer (a larger batch or model helps)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=1500, help="images at 1x (default 1500)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="multiples of --base")
    parser.add_argument("--stream-gb", type=float, default=4.0, help="GiB of the streaming set (0: skip)")
    parser.add_argument("--nproc-epochs", type=int, default=3, help="train epochs, 1 / 2 processes (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp folder, removed)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="curate-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        targets = []
        if args.sizes:
            pool, runs = demo_pool(args.seed), []
            for multiple in sorted(args.sizes):
                runs.append(run_size(workdir, args.base * multiple, pool, args.seed))
                print(f"  {runs[-1].images:,} images: dvc repro {runs[-1].repro_wall:.0f} s", file=sys.stderr)
            targets += print_sizes(runs)
        if args.stream_gb > 0:
            targets += print_stream(stream_case(workdir, args.stream_gb, args.seed))
        if args.sizes and args.nproc_epochs > 0:
            print_nproc(nproc_case(workdir / f"repo-{runs[-1].images}", args.nproc_epochs))
        print(f"\ntargets ({os.cpu_count()} CPUs, peak RSS of each process as ru_maxrss):")
        print("\n".join(f"  {line}" for line in targets))
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # benchmarks._common
    if len(sys.argv) > 3 and sys.argv[1] == "--time-stage" and sys.argv[3] == "--":
        sys.exit(time_stage(sys.argv[2], sys.argv[4:]))
    main()
