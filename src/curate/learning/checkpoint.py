"""Model checkpoints: ``{"state_dict", "meta"}`` in one ``.pt`` file, loaded without pickle.

``meta`` holds plain types only (``name``, ``n_classes``, ``channels``, ``size``,
``class_names``, ``normalize_polarity``, ...), enough to rebuild the network with
:func:`curate.learning.networks.build_model` and to feed it images as it was trained, so
``torch.load(weights_only=True)`` can read the file: loading never runs code from the
file. :func:`checkpoint_meta` builds the meta the training stages save. :func:`load_initial_weights`
reads any local state_dict (or such a file) the same way, to start a training run from it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.data.atomic import write_bytes
from curate.data.paths import moved_hint, producer_of
from curate.data.polarity import MODES
from curate.errors import CurateError
from curate.learning.networks import build_model

REQUIRED_META = ("name", "n_classes", "channels", "size")
# The image.normalize_polarity the model was trained with; checkpoints written before the
# param existed lack it and were trained as "auto" does.
POLARITY_KEY = "normalize_polarity"
LEGACY_POLARITY = "auto"
# The order of each stage's meta keys: torch.save keeps a dict's order, so the order is part of the
# file's bytes (and of its DVC hash). The folds and train stages have always written theirs apart.
_FIRST = ("name", "weights", "input_size", "n_classes")
EMBEDDER_META = (*_FIRST, "class_names", POLARITY_KEY, "channels", "size")
MODEL_META = (*_FIRST, "channels", "size", "class_names", POLARITY_KEY, "params_digest")


def polarity_of(meta: Mapping[str, Any]) -> str:
    """The ``image.normalize_polarity`` a checkpoint's model was trained with (absent: ``auto``)."""
    return str(meta.get(POLARITY_KEY, LEGACY_POLARITY))


def checkpoint_meta(
    network: Mapping[str, Any],
    class_names: Sequence[str],
    shape: tuple[int, ...],
    polarity: str,
    order: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """The meta a training stage saves beside its model, keys in ``order`` (:data:`EMBEDDER_META`,
    :data:`MODEL_META`): ``network`` (:meth:`curate.learning.model_choice.Backbone.meta`), the classes, the
    images' channels and size (``shape``: N x H x W x C), the ``image.normalize_polarity`` trained
    with, and ``extra``."""
    values = dict(network) | {
        "n_classes": len(class_names),
        "class_names": list(class_names),
        POLARITY_KEY: polarity,
        "channels": int(shape[3]),
        "size": int(shape[1]),
    }
    values |= extra
    if sorted(values) != sorted(order):
        raise ValueError(f"checkpoint meta {sorted(values)} does not match the order {sorted(order)}")
    return {key: values[key] for key in order}


def save_checkpoint(path: str | Path, model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Write ``model``'s weights (moved to the CPU) and ``meta`` atomically to ``path``.

    Same weights and meta, same bytes (DVC sees no change when nothing changed).
    """
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    # Through a buffer: saved to a path, torch names the archive's records after the file,
    # and the atomic writer's temp name is random, so the bytes would differ on every save.
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "meta": dict(meta)}, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model (on the CPU, in eval mode) and the meta saved by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.exists():
        raise CurateError(f"{path}: not found (run the {producer_of(path)} stage first: dvc repro)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = dict(payload["meta"])
        # input_size: the side a torchvision backbone is fed at (curate.learning.backbones); absent: none.
        model = build_model(
            meta["name"], meta["n_classes"], meta["channels"], meta["size"], input_size=meta.get("input_size")
        )
        model.load_state_dict(payload["state_dict"])
        if polarity_of(meta) not in MODES:
            raise ValueError(f"meta {POLARITY_KEY} is {meta[POLARITY_KEY]!r}, expected one of {MODES}")
    except Exception as exc:  # noqa: BLE001  (unpickling, missing keys, shape mismatch: all "not a checkpoint")
        reason = " ".join(str(exc).split())[:200]
        raise CurateError(f"{path}: not a curate checkpoint ({type(exc).__name__}: {reason})") from None
    return model.eval(), meta


def load_initial_weights(net: nn.Module, path: Path, key: str = "init_weights") -> int:
    """Start ``net`` from a local state_dict (or a curate checkpoint): tensors whose name and shape match.

    A head for another number of classes is left at its random init, so weights trained
    elsewhere can seed a new label set (so can a torchvision backbone's body alone). Nothing is
    downloaded; loading never runs code. Returns the number of tensors loaded.
    ``key`` names the param in the errors (``train.init_weights: x.pt: file not found``).
    """
    if not path.is_file():
        raise CurateError(f"{key}: {path}: file not found{moved_hint(path)}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds for a bad file)
        raise CurateError(f"{key}: {path}: not a state_dict ({type(exc).__name__})") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    # A torchvision backbone also takes a plain torchvision file (its keys mapped onto body/head).
    adapt = getattr(net, "adapt_state_dict", None)
    if state and adapt is not None:
        state = adapt(state)
    own = net.state_dict()
    matched = {
        name: value
        for name, value in (state or {}).items()
        if isinstance(value, torch.Tensor) and name in own and own[name].shape == value.shape
    }
    if not matched:
        raise CurateError(f"{key}: {path}: no tensor matches the {type(net).__name__} model")
    net.load_state_dict(matched, strict=False)
    return len(matched)
