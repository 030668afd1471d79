"""Where each stage's data lives, and which stage writes a file.

Every stage writes into a folder of its own (``data/<stage>/``, ``models/``); which stage writes
what is read from ``dvc.yaml``'s outs (:func:`producer_of`), so a missing or broken file's message
names the stage to re-run, an added stage's too.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from curate import dag

RAW_DIR = Path("data/raw")
FOLDS_DIR = Path("data/folds")
CLEAN_DIR = Path("data/clean")
BALANCED_DIR = Path("data/balanced")
AUGMENTED_DIR = Path("data/augmented")
MODELS_DIR = Path("models")
RAW_SAMPLES = RAW_DIR / "samples.parquet"
RAW_IMAGES = RAW_DIR / "images"
REPORTS_DIR = Path("reports")
# What the folds stage writes for clean, augment and trace: the out-of-sample predictions (train
# rows in table order), each row's fold, the shared embedder and its embeddings, and what computed
# them.
PRED_PROBS = FOLDS_DIR / "pred_probs.npy"
FOLD_OF_ROW = FOLDS_DIR / "folds.npy"
EMBEDDINGS = FOLDS_DIR / "embeddings.npy"
EMBEDDER = FOLDS_DIR / "embedder.pt"
ENVIRONMENT = FOLDS_DIR / "environment.json"
# Where revisions from before data/folds/ kept the folds stage's files: beside clean's table.
# `curate trace --rev` of such a revision reads the predictions there; a param that names one
# (train.init_weights: data/clean/embedder.pt) is told where it went (moved_hint).
MOVED = {CLEAN_DIR / path.name: path for path in (PRED_PROBS, FOLD_OF_ROW, EMBEDDINGS, EMBEDDER, ENVIRONMENT)}
FORMER_PRED_PROBS = CLEAN_DIR / PRED_PROBS.name
# Which store a row's ``row`` points into: the ``store`` column names it;
# tables without the column point into the raw store.
IMAGE_STORES = {"raw": RAW_IMAGES, "augmented": AUGMENTED_DIR / "images"}
# What the train stage writes: the trained classifier and its run record (what train_report reports).
MODEL = MODELS_DIR / "model.pt"
RUN_RECORD = MODELS_DIR / "train.json"


def producer_of(path: str | Path) -> str:
    """The stage of ``dvc.yaml`` that writes ``path``: the one with the longest out that is
    ``path`` or a folder holding it (a path relative to the project root or an absolute one
    alike), for error messages; ``upstream`` where no stage's out holds it."""
    parts = Path(path).parts
    found, longest = "upstream", 0
    for stage in dag.stages() if dag.DVC_FILE.exists() else ():
        for out in stage.outs:
            out_parts = PurePosixPath(out).parts
            width = len(out_parts)
            if width > longest and any(parts[i : i + width] == out_parts for i in range(len(parts))):
                found, longest = stage.name, width
    return found


def moved_hint(path: str | Path) -> str:
    """`` (moved to data/folds/embedder.pt)`` for a path the folds stage wrote before
    data/folds/; '' for any other."""
    new = MOVED.get(Path(path))
    return f" (moved to {new})" if new is not None else ""
