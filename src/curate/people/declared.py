"""Every stage's declaration (:class:`curate.stage.Stage`), for the tools that look across stages.

The stages are those of ``dvc.yaml`` whose command runs a module of ``curate.stages`` (or any
module: an added stage may live elsewhere); each module's ``STAGE`` is its declaration. This
imports every stage module, and with them torch: the stages themselves never use it (a stage
imports no other stage), the gate stage reads what each run recorded instead.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from curate import dag
from curate.stage import Stage


def declarations(dvc_file: str | Path = dag.DVC_FILE) -> dict[str, Stage]:
    """Stage name -> its declaration, in DAG order; stages without a ``STAGE`` are left out."""
    found = {}
    for stage in dag.stages(dvc_file):
        if stage.module is None:
            continue
        declared = getattr(importlib.import_module(stage.module), "STAGE", None)
        if isinstance(declared, Stage):
            found[stage.name] = declared
    return found
