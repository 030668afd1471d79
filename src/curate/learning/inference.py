"""A trained network applied to images: class probabilities and embeddings, in one loop.

The images are read batch by batch (a background reader keeps the next ones ready), so a
memory-map or an :class:`curate.data.image_rows.ImageRows` is never copied whole; each batch is fed as
training fed it (:mod:`curate.learning.feeding`), in eval mode, bf16 autocast on CUDA.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curate.data.polarity import check_mode
from curate.learning import feeding
from curate.progress import progress_bar


def predict(
    model: nn.Module, images: feeding.Images, *, batch_size: int, device: torch.device, polarity: str
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N x K) and penultimate embeddings (N x D), float32, eval mode.

    ``polarity``: what the model was trained with (``FitConfig.polarity``; a checkpoint's meta).
    """
    probs, embeddings = _forward(model, images, batch_size, device, polarity, head=True, progress=None)
    return _stacked(probs, model.head.out_features), _stacked(embeddings, model.head.in_features)


def embed(
    model: nn.Module,
    images: feeding.Images,
    *,
    batch_size: int,
    device: torch.device,
    polarity: str,
    progress: str | None = None,
) -> np.ndarray:
    """``model.embed`` of every image, float32 N x D, without running the head; ``progress``
    names a bar counting images (None: no bar)."""
    _, embeddings = _forward(model, images, batch_size, device, polarity, head=False, progress=progress)
    return _stacked(embeddings, model.head.in_features)


@torch.no_grad()
def _forward(
    model: nn.Module,
    images: feeding.Images,
    batch_size: int,
    device: torch.device,
    polarity: str,
    *,
    head: bool,
    progress: str | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The one loop: per batch, the probabilities (none without ``head``) and the embeddings, on the CPU."""
    check_mode(polarity)
    model.to(device).eval()
    cuda = device.type == "cuda"
    probs, embeddings = [], []
    bar = progress_bar(len(images), progress)
    for batch in feeding.batches(images, len(images), batch_size, pin=cuda):
        x = feeding.standardise(feeding.to_unit(batch.to(device, non_blocking=True), polarity))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            features = model.embed(x)
            logits = model.head(features) if head else None
        if logits is not None:
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
        embeddings.append(features.float().cpu())
        bar.update(len(batch))
    bar.close()
    return probs, embeddings


def _stacked(chunks: list[torch.Tensor], width: int) -> np.ndarray:
    """The chunks as one float32 N x ``width`` array; none (no images): 0 x ``width``, so callers
    can still concatenate."""
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, width), np.float32)
