"""Augmented 28 x 28 images per second for the default transforms, against the 2,000/s target.

Compares the stage's path (batched kernels with per-sample parameters) with the naive
per-sample v2 baseline (one ``Compose`` call per image, CPU generator seeded per image).
Run: ``python benchmarks/augment.py [--threads 2] [--n 20000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torchvision.transforms import v2

from curate.curation.augmentation import augment, batched_kernel, build_transform, sample_keys
from curate.params import Params

TARGET = 2_000  # images per second on 2 CPU cores (issue 5)


def digits(n: int, seed: int = 0) -> np.ndarray:
    """Digit-like 28 x 28 x 1 uint8 images: a bright stroke box on black, with noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, 28, 28, 1), dtype=np.uint8)
    images[:, 6:22, 10:18] = rng.integers(150, 256, (n, 16, 8, 1), dtype=np.uint8)
    return images


def rate(fn, n: int, repeats: int = 3) -> float:
    """Best of ``repeats`` (the machine may be shared): images per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def naive(images: np.ndarray, pipeline: list[v2.Transform]) -> None:
    compose = v2.Compose(pipeline)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.random.fork_rng(devices=[]):
        for i in range(len(x)):
            torch.default_generator.manual_seed(i)
            compose(x[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = Params()
    pipeline = [build_transform(s.name, s.args, params.image.size) for s in params.augment.transforms]
    images = digits(args.n)
    keys = sample_keys(0, [f"{i:016x}" for i in range(args.n)], [1] * args.n)
    print(
        f"default transforms: {', '.join(spec.name for spec in params.augment.transforms)} "
        f"({sum(batched_kernel(t) is not None for t in pipeline)}/{len(pipeline)} batched); "
        f"{args.threads} threads, {args.n:,} images"
    )
    fast = rate(lambda: augment(images, keys, pipeline), args.n)
    n_naive = min(args.n, 3_000)
    slow = rate(lambda: naive(images[:n_naive], pipeline), n_naive)
    print(
        f"  stage path (batched, per-sample params): {fast:>9,.0f} images/s  = {fast / TARGET:5.1f}x target"
    )
    print(
        f"  naive per-sample v2 calls:               {slow:>9,.0f} images/s  = {slow / TARGET:5.1f}x target"
    )
    strong = [v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)), v2.RandomErasing(p=0.5)]
    fast = rate(lambda: augment(images, keys, strong), args.n)
    slow = rate(lambda: naive(images[:n_naive], strong), n_naive)
    print("RandomAffine + RandomErasing:")
    print(
        f"  stage path (batched, per-sample params): {fast:>9,.0f} images/s  = {fast / TARGET:5.1f}x target"
    )
    print(
        f"  naive per-sample v2 calls:               {slow:>9,.0f} images/s  = {slow / TARGET:5.1f}x target"
    )


if __name__ == "__main__":
    main()
