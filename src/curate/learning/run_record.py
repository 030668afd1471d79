"""A training run's record, ``models/train.json``: what the train stage did, in one typed value.

The train stage writes it beside the model; the train_report stage reads it back and turns it into
its report, so that editing the report re-runs no training. One layout for both (:class:`RunRecord`):
a field added here is written and read alike. The file is JSON, keys sorted, two-space indent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from curate.data.atomic import write_text
from curate.data.inputs import read_json, require_columns


@dataclass(frozen=True)
class Summary:
    """The headline figures of a training run; the throughput ones are measured."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    device: str  # the device type: cpu, cuda or mps
    train_seconds: float  # training passes only, validation excluded
    images_per_second: float


@dataclass(frozen=True)
class RunRecord:
    """All the train_report stage shows about one training run, as plain JSON types."""

    history: list[dict[str, Any]]  # per epoch: epoch, train/val loss and accuracy, seconds, images
    summary: Summary
    group_rows: list[list]  # per group: originals, copies, share of the training weight, validation
    n_fit: int  # rows fitted on (copies included)
    n_val: int  # rows validated on
    digest: str = "n/a"  # SHA-256 of the train params that built the model ("n/a": an older record)
    environment: dict[str, Any] = field(default_factory=dict)  # what trained it

    # What a record must have; digest and environment came later and have defaults.
    REQUIRED: ClassVar[tuple[str, ...]] = ("history", "summary", "group_rows", "n_fit", "n_val")

    def write(self, target: str | Path) -> None:
        """Write the record as JSON (atomically): sorted keys, two-space indent, a final newline."""
        write_text(target, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, source: str | Path) -> RunRecord:
        """The record at ``source``; a missing file or key stops with one line naming the train stage."""
        record = read_json(source)
        require_columns(record, source, cls.REQUIRED, kind="key")
        require_columns(record["summary"], source, [f.name for f in fields(Summary)], kind="key")
        return cls(
            history=record["history"],
            summary=Summary(**{f.name: record["summary"][f.name] for f in fields(Summary)}),
            group_rows=record["group_rows"],
            n_fit=record["n_fit"],
            n_val=record["n_val"],
            digest=record.get("digest", "n/a"),
            environment=record.get("environment", {}),
        )
