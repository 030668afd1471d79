"""GPU check for the train stage's training loop: CUDA, bf16 autocast, data on the device.

Imports only what training needs (torch, numpy, and curate's training modules, which need
nothing else), because a GPU machine may lack the pipeline's other dependencies (dvc, cleanlab, fairlearn,
pydantic). Data: the demo's raw images and labels when ``data/raw`` is there (pandas and
pyarrow read the table), else scikit-learn's digits upscaled to 28 x 28 and tiled to the
demo's size (about 10,500 training and 1,700 test images), so the figures are comparable.
Trains the default model with the default train params, asserts that the model ran on CUDA
with bf16 activations and the data set sat on the GPU (or, with ``--data-on-device never``, was
streamed in pinned batches), and prints images/s and wall time. Under torchrun (the shell script
starts it with one process per GPU where there are several) it trains with DDP over NCCL, each
rank on ``cuda:LOCAL_RANK``, and rank 0 prints.

Run: ``scripts/gpu_check.sh [--epochs 10] [--compile]`` (exit 0: all asserted; under 3 minutes).
``--smoke``: a few steps on the CPU over a few hundred images, the CUDA assertions skipped: the test
suite runs it, so a change to the modules it calls breaks a test here, not the check on a lent GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from curate.learning import devices, feeding, inference, networks, training

DEMO_TRAIN, DEMO_TEST = 10_455, 1_700  # rows the default train stage sees on the demo
SMOKE_TRAIN, SMOKE_TEST, SMOKE_EPOCHS, SMOKE_BATCH = 256, 128, 2, 64  # --smoke: 8 steps


def demo_arrays(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """``n_train`` train and ``n_test`` test images with their labels, and where they came from."""
    raw = Path("data/raw")
    if (raw / "images").exists() and (raw / "samples.parquet").exists():
        import pandas as pd

        samples = pd.read_parquet(raw / "samples.parquet")
        from curate.data.store import Store

        images = np.asarray(Store(raw / "images", "ingest"))
        train, test = samples[samples["split"] == "train"], samples[samples["split"] == "test"]
        # Tile the train rows to the size the stage trains on (originals plus augmented copies).
        rows = np.resize(train["row"].to_numpy(), n_train)
        labels = np.resize(train["label"].to_numpy(), n_train)
        test = test[:n_test]
        return images[rows], labels, images[test["row"].to_numpy()], test["label"].to_numpy(), "data/raw"
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1)  # N x 1 x 8 x 8, values 0..16
    big = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    images = (big / 16 * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    test, train = order[:400], order[400:]
    train_rows, test_rows = np.resize(train, n_train), np.resize(test, n_test)
    return (
        images[train_rows],
        digits.target[train_rows],
        images[test_rows],
        digits.target[test_rows],
        "sklearn digits (tiled)",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the model")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few steps on the CPU, to test the script itself (no GPU asserted)",
    )
    parser.add_argument("--data-on-device", default="auto", choices=("auto", "always", "never"))
    return parser.parse_args()


def check_device(smoke: bool) -> torch.device:
    if smoke:  # exercises this script where there is no GPU; asserts nothing about one
        return torch.device("cpu")
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    device = devices.pick_device("auto")
    assert device.type == "cuda", f"pick_device('auto') chose {device}, not cuda"
    return device


def join_ranks(device: torch.device) -> tuple[torch.device, int, int]:
    """Under torchrun: join the process group (NCCL on CUDA), take this rank's GPU; (device, rank, world)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device, 0, 1
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cuda":
        assert world <= torch.cuda.device_count(), f"{world} ranks for {torch.cuda.device_count()} GPUs"
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device, rank, world


def watch_first_conv(net: torch.nn.Module) -> tuple[dict[str, object], torch.utils.hooks.RemovableHandle]:
    """What autocast actually ran the first conv in: filled by a forward hook (remove it after)."""
    seen: dict[str, object] = {}

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen["dtype"], seen["device"] = output.dtype, output.device
        seen["channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)

    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    return seen, conv.register_forward_hook(record)


def assert_on_device(
    seen: dict[str, object], x_train: np.ndarray, config: training.FitConfig, smoke: bool
) -> None:
    """The model ran where asked, channels_last; on CUDA (not with ``smoke``) in bf16, the data set
    on the GPU (or streamed in pinned batches)."""
    device = config.device.type
    assert seen["device"].type == device, f"conv ran on {seen['device']}, not {device}"
    assert seen["channels_last"], "conv input was not channels_last"
    if not smoke:
        assert seen["dtype"] == torch.bfloat16, f"conv output was {seen['dtype']}, not bf16 (autocast off?)"
    if config.data_on_device == "never":
        assert smoke or seen["streamed"], (
            "data_on_device never, but no batch was read by the background reader"
        )
        return
    # The train stage's placement rule: the uint8 data set on the GPU when it fits in half the free memory.
    assert training.keeps_in_memory(x_train, config), f"the data set would not be kept on the {device}"
    placed = feeding.place(x_train, config.device).device.type
    assert placed == device, f"the data set would be on the {placed}, not the {device}"


def watch_reader(seen: dict[str, object]) -> None:
    """Note in ``seen["streamed"]`` whether training read batches through the background reader (pinned)."""
    seen["streamed"] = False
    prefetched = feeding.prefetched

    def spy(images: np.ndarray, batches: list, pin: bool) -> object:
        seen["streamed"] = seen["streamed"] or (pin and len(batches) > 0)
        return prefetched(images, batches, pin)

    feeding.prefetched = spy


def print_figures(
    history: list[dict], accuracy: float, seen: dict[str, object], device: torch.device
) -> None:
    images = sum(s["images"] for s in history)
    seconds = sum(s["seconds"] for s in history)
    steady = max(s["images"] / s["seconds"] for s in history[1:]) if len(history) > 1 else images / seconds
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run, not a GPU check)"
    print(f"device {name}; first conv ran in {seen['dtype']}, channels_last {seen['channels_last']}")
    print(
        f"{len(history)} epochs, {images:,} images in {seconds:.2f} s of training: "
        f"{images / seconds:,.0f} images/s"
    )
    print(f"steady epoch {steady:,.0f} images/s; test accuracy {accuracy:.4f}")


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    device, rank, world = join_ranks(check_device(args.smoke))
    sizes = (SMOKE_TRAIN, SMOKE_TEST) if args.smoke else (DEMO_TRAIN, DEMO_TEST)
    x_train, y_train, x_test, y_test, source = demo_arrays(*sizes)
    if rank == 0:
        print(f"data: {source}, {len(x_train):,} train / {len(x_test):,} test images of {x_train.shape[1:]}")
        if world > 1:
            print(f"processes: {world} (DDP over {'NCCL' if device.type == 'cuda' else 'gloo'})")

    torch.manual_seed(0)
    net = networks.build_model("cnn", 10, x_train.shape[3], x_train.shape[1])
    seen, hook = watch_first_conv(net)
    watch_reader(seen)
    config = training.FitConfig(
        epochs=SMOKE_EPOCHS if args.smoke else args.epochs,
        batch_size=SMOKE_BATCH if args.smoke else args.batch_size,
        lr=0.01,
        seed=0,
        device=device,
        polarity="auto",  # the template's default image.normalize_polarity
        patience=4,
        compile=args.compile,
        data_on_device=args.data_on_device,
        distributed=world > 1,
    )
    validation = (x_test[:500], y_test[:500], None)
    history = training.fit(net, x_train, y_train, config, validation=validation, progress="gpu check")
    hook.remove()
    assert_on_device(seen, x_train, config, args.smoke)
    if rank == 0:
        probs, _ = inference.predict(net, x_test, batch_size=1024, device=device, polarity=config.polarity)
        print_figures(history, float((probs.argmax(1) == y_test).mean()), seen, device)
        print(f"wall time {time.perf_counter() - started:.1f} s (data, training, test; imports excluded)")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
