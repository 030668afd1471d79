"""Training throughput of the train stage against a bare PyTorch loop, and the stage's wall time.

Needs the default pipeline's data (``dvc repro augment`` first). Both loops train the same
model (``train.model``) on the same rows (the stage's training rows after the validation
split, expanded by ``copies``) with the same batch size and, when ``train.online_augment``
is on, the same per-batch augmentation call. The bare loop has nothing else: images
converted to float once up front, a shuffled index, forward, loss, backward, AdamW; no
weights, LR schedule, validation, early stopping, logging or progress bar. The stage's figure
is what it reports in ``reports/details/train_report.json``: images per second over the training
passes. Then the whole stage (``curate train``, imports and report included) runs in a temp
copy of the data, timed against the 60 s target.

Run: ``python benchmarks/train.py [--epochs 4] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from curate.data.image_rows import image_rows
from curate.data.paths import AUGMENTED_DIR, RAW_DIR
from curate.data.samples import read_samples
from curate.learning import feeding, networks, training
from curate.params import Params, load_params
from curate.stages.train import INPUT, fit_config, split_validation

TARGET_RATIO = 0.95
TARGET_STAGE_SECONDS = 60.0


def bare_loop(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    augment: bool,
    seed: int,
    polarity: str,
) -> float:
    """Images per second of the plainest loop over the same data; the first epoch is warm-up."""
    torch.manual_seed(seed)
    net = networks.build_model(name, int(labels.max()) + 1, images.shape[3], images.shape[1])
    net.to(memory_format=torch.channels_last).train()
    x_all = feeding.to_tensor(images, "cpu", polarity=polarity)
    y_all = torch.as_tensor(np.array(labels), dtype=torch.long)  # a copy: pandas hands out read-only views
    optimiser = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=training.WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(seed)
    seconds = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(len(y_all), generator=generator)
        for first in range(0, len(order), batch_size):
            index = order[first : first + batch_size]
            x = x_all[index]
            if augment:
                x = feeding.augment(x, generator)
            loss = F.cross_entropy(net(x), y_all[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        seconds.append(time.perf_counter() - start)
    return len(y_all) / min(seconds[1:])


def stage_loop(
    images: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray, None],
    *,
    params: Params,
    epochs: int,
) -> float:
    """Images per second of ``curate.learning.training.fit`` as the stage calls it (best epoch after the
    first)."""
    torch.manual_seed(params.seed)
    net = networks.build_model(params.train.model, int(labels.max()) + 1, images.shape[3], images.shape[1])
    config = replace(fit_config(params, torch.device("cpu")), epochs=epochs + 1)
    history = training.fit(
        net,
        images,
        labels,
        config,
        sample_weights=weights,
        validation=validation,
        progress="stage loop",
    )
    return max(stats["images"] / stats["seconds"] for stats in history[1:])


def whole_stage(params_file: Path) -> tuple[float, str]:
    """Wall time of ``curate train`` in a temp folder holding the stage's inputs, and its last line."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path in (params_file, RAW_DIR / "images", AUGMENTED_DIR / "images", INPUT):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if path.is_dir() else shutil.copy)(path, root / path)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "curate.stages.train", "--params", str(params_file)],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        return time.perf_counter() - start, done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per loop (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    settings = params.train
    fit_rows, val_rows = split_validation(read_samples(INPUT), settings.val_fraction, params.seed)
    images, labels = image_rows(fit_rows).read(), fit_rows["label"].to_numpy()
    validation = (image_rows(val_rows).read(), val_rows["label"].to_numpy(), None)
    weights = fit_rows["weight"].to_numpy(dtype=np.float64)
    print(
        f"{len(labels):,} training images {images.shape[1:]}, batch {settings.batch_size}, "
        f"model {settings.model}, online_augment {settings.online_augment}, {args.threads} threads"
    )
    stage = stage_loop(images, labels, weights, validation, params=params, epochs=args.epochs)
    bare = bare_loop(
        settings.model,
        images,
        labels,
        epochs=args.epochs,
        batch_size=settings.batch_size,
        augment=settings.online_augment,
        seed=params.seed,
        polarity=params.image.normalize_polarity,
    )
    ratio = stage / bare
    verdict = "pass" if ratio >= TARGET_RATIO else "FAIL"
    print(f"train stage loop  {stage:8,.0f} images/s")
    print(f"bare PyTorch loop {bare:8,.0f} images/s")
    print(f"ratio {ratio:.3f} (target >= {TARGET_RATIO}): {verdict}")
    seconds, line = whole_stage(args.params)
    verdict = "pass" if seconds <= TARGET_STAGE_SECONDS else "FAIL"
    print(f"whole train stage: {seconds:.1f} s wall (target <= {TARGET_STAGE_SECONDS:.0f} s): {verdict}")
    print(f"  {line}")


if __name__ == "__main__":
    main()
