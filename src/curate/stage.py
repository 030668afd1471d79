"""What every stage shares: its argument parser, the error guard, the pipeline order.

A kit module: stages and the CLI import it, it imports no stage. Each stage module ends with
``if __name__ == "__main__": sys.exit(guarded(main))``, so ``python -m curate.stages.<stage>``
behaves as ``curate <stage>``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from curate.errors import CurateError

# The stages with a report and figures, in DAG order; ``gate`` closes the pipeline and reads them.
PIPELINE = ("ingest", "clean", "rebalance", "augment", "train_report", "evaluate")
# Every stage that records its lineage, in DAG order: also the two that only train (folds before
# clean, train before train_report), stages of their own so that a report's edit re-runs no training.
DAG = ("ingest", "folds", "clean", "rebalance", "augment", "train", "train_report", "evaluate")


def stage_parser(stage: str, description: str | None) -> argparse.ArgumentParser:
    """The options every stage takes."""
    parser = argparse.ArgumentParser(prog=f"curate {stage}", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def guarded(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a stage ``main``; turn a :class:`CurateError` into one line on stderr and exit code 2."""
    try:
        return main(argv)
    except CurateError as exc:
        print(f"curate: error: {exc}", file=sys.stderr)
        return exc.exit_code


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as one level of dotted keys (``by_group.mnist.accuracy``), as DVC shows them."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
