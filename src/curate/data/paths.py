"""Where each stage's data lives, and which stage writes each folder.

Every stage writes into a folder of its own (``data/<stage>/``, ``models/``): a missing or broken
file's message names the stage to re-run by asking :func:`producer_of`.
"""

from __future__ import annotations

from pathlib import Path

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
# Where revisions from before data/folds/ kept the predictions: beside clean's table (what
# `curate trace --rev` of such a revision reads instead).
FORMER_PRED_PROBS = CLEAN_DIR / "pred_probs.npy"
# Which store a row's ``row`` points into: the ``store`` column names it;
# tables without the column point into the raw store.
IMAGE_STORES = {"raw": RAW_IMAGES, "augmented": AUGMENTED_DIR / "images"}
# What the train stage writes: the trained classifier and its run record (what train_report reports).
MODEL = MODELS_DIR / "model.pt"
RUN_RECORD = MODELS_DIR / "train.json"
# The folder each stage writes its data into: what a missing or broken file's message says to run.
PRODUCERS = {
    RAW_DIR: "ingest",
    FOLDS_DIR: "folds",
    CLEAN_DIR: "clean",
    BALANCED_DIR: "rebalance",
    AUGMENTED_DIR: "augment",
    MODELS_DIR: "train",
}


def producer_of(path: str | Path) -> str:
    """The stage whose folder in :data:`PRODUCERS` holds ``path`` (the nearest such folder; a path
    relative to the project root or an absolute one alike), for error messages."""
    for folder in Path(path).parents:
        for written, stage in PRODUCERS.items():
            if folder.parts[-len(written.parts) :] == written.parts:
                return stage
    return "upstream"
