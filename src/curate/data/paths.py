"""Where each stage's data lives, and which stage writes each folder.

Every stage writes into a folder of its own (``data/<stage>/``, ``models/``): a missing or broken
file's message names the stage to re-run by asking :func:`producer_of`.
"""

from __future__ import annotations

from pathlib import Path

RAW_DIR = Path("data/raw")
CLEAN_DIR = Path("data/clean")
BALANCED_DIR = Path("data/balanced")
AUGMENTED_DIR = Path("data/augmented")
MODELS_DIR = Path("models")
RAW_SAMPLES = RAW_DIR / "samples.parquet"
RAW_IMAGES = RAW_DIR / "images"
REPORTS_DIR = Path("reports")
# What the folds stage leaves beside clean's table for clean, augment and trace: the out-of-sample
# predictions (train rows in table order), each row's fold, the shared embedder and its embeddings,
# and what computed them.
PRED_PROBS = CLEAN_DIR / "pred_probs.npy"
FOLD_OF_ROW = CLEAN_DIR / "folds.npy"
EMBEDDINGS = CLEAN_DIR / "embeddings.npy"
EMBEDDER = CLEAN_DIR / "embedder.pt"
ENVIRONMENT = CLEAN_DIR / "environment.json"
# Which store a row's ``row`` points into: the ``store`` column names it;
# tables without the column point into the raw store.
IMAGE_STORES = {"raw": RAW_IMAGES, "augmented": AUGMENTED_DIR / "images"}
# What the train stage writes: the trained classifier and its run record (what train_report reports).
MODEL = MODELS_DIR / "model.pt"
RUN_RECORD = MODELS_DIR / "train.json"
# The stage that writes each data file or folder: what a missing or broken file's message says
# to run. A file named here wins over its folder (folds writes beside clean's table).
PRODUCERS = {
    RAW_DIR: "ingest",
    **dict.fromkeys((PRED_PROBS, FOLD_OF_ROW, EMBEDDINGS, EMBEDDER, ENVIRONMENT), "folds"),
    CLEAN_DIR: "clean",
    BALANCED_DIR: "rebalance",
    AUGMENTED_DIR: "augment",
    **dict.fromkeys((MODEL, RUN_RECORD), "train"),
}


def producer_of(path: str | Path) -> str:
    """The stage that writes ``path`` (a file named in :data:`PRODUCERS`, else by its folder), for
    error messages; a relative or absolute path under the project root alike."""
    path = Path(path)
    for candidate in (path.as_posix(), path.parent.as_posix()):
        for written, stage in PRODUCERS.items():
            if candidate == written.as_posix() or candidate.endswith(f"/{written.as_posix()}"):
                return stage
    return "upstream"
