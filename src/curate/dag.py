"""The DAG as ``dvc.yaml`` declares it: the stages in order, what each writes and which params it reads.

``dvc.yaml`` is the one hand-kept list of stages (DVC runs it; people read and edit it), so every
list of stages in the code derives from it instead of repeating it: the stages whose figures
the gate stage checks, the stages that record a lineage, the stage that writes a file (what a
missing file's message says to run), the params sections and gates an added stage brings.
What a stage is beyond that (its headline metrics, its gates, its params section) is declared
once in its own module (:class:`curate.stage.Stage`) and recorded by each run in its lineage
file, where the gate stage reads it.

Read with PyYAML's C loader where present: a few milliseconds, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import yaml

from curate.errors import CurateError

DVC_FILE = Path("dvc.yaml")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class DeclaredStage:
    """One stage of ``dvc.yaml``, as far as the code needs it."""

    name: str
    outs: tuple[str, ...]  # every out, metrics and plain outs alike, as written (templated paths kept)
    params: tuple[str, ...]  # the params keys it reads, dotted (``gates.min_accuracy``, ``clean``)
    module: str | None  # the module its ``python -m`` command runs

    @property
    def reports(self) -> bool:
        """Whether it writes figures (``reports/metrics/<name>.json``): the gate stage checks those."""
        return f"reports/metrics/{self.name}.json" in self.outs

    @property
    def records_lineage(self) -> bool:
        return f"reports/lineage/{self.name}.json" in self.outs


def stages(dvc_file: str | Path = DVC_FILE) -> tuple[DeclaredStage, ...]:
    """Every stage of ``dvc_file``, in its order (the order the DAG runs, as people write it)."""
    return _stages(Path(dvc_file).resolve())


@cache
def _stages(dvc_file: Path) -> tuple[DeclaredStage, ...]:
    try:
        document = yaml.load(dvc_file.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except FileNotFoundError:
        raise CurateError(f"{DVC_FILE}: not found (run curate from the project's root)") from None
    except yaml.YAMLError as exc:
        raise CurateError(f"{DVC_FILE}: invalid YAML ({str(exc).splitlines()[0]})") from None
    declared = []
    for name, stage in (document.get("stages") or {}).items():
        command = str(stage.get("cmd", "")).split()
        module = command[2] if command[:2] == ["python", "-m"] and len(command) > 2 else None
        outs = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
        declared.append(DeclaredStage(
            name=name,
            outs=tuple(_path_of(out) for out in outs),
            params=tuple(_path_of(key) for key in stage.get("params", [])),
            module=module,
        ))  # fmt: skip
    return tuple(declared)


def _path_of(entry: str | dict) -> str:
    """An out or params entry: a plain string, or a one-key mapping of it to its options."""
    return str(next(iter(entry))) if isinstance(entry, dict) else str(entry)


def names(dvc_file: str | Path = DVC_FILE) -> tuple[str, ...]:
    return tuple(stage.name for stage in stages(dvc_file))


def reporting(dvc_file: str | Path = DVC_FILE) -> tuple[str, ...]:
    """The stages with figures, in DAG order, the gate stage left out (it reads the others)."""
    return tuple(s.name for s in stages(dvc_file) if s.reports and s.name != "gate")


def lineage_stages(dvc_file: str | Path = DVC_FILE) -> tuple[str, ...]:
    """The stages that record what they read and wrote, in DAG order."""
    return tuple(s.name for s in stages(dvc_file) if s.records_lineage)


def after(stage: str, dvc_file: str | Path = DVC_FILE) -> tuple[str, ...]:
    """``stage`` and every stage after it, in DAG order: what ``dvc repro`` re-runs after its input
    changes."""
    order = names(dvc_file)
    return order[order.index(stage) :] if stage in order else ()


def producer_of(path: str | Path, dvc_file: str | Path = DVC_FILE) -> str | None:
    """The stage whose out is ``path`` or a folder holding it (None: no stage writes it)."""
    target = PurePosixPath(Path(path).as_posix())
    for stage in stages(dvc_file):
        for out in stage.outs:
            written = PurePosixPath(out)
            if target == written or written in target.parents:
                return stage.name
    return None


def declared_params(dvc_file: str | Path = DVC_FILE) -> dict[str, str]:
    """Each params key a stage of ``dvc_file`` reads -> that stage (the first, where several do)."""
    found: dict[str, str] = {}
    for stage in stages(dvc_file):
        for key in stage.params:
            found.setdefault(key, stage.name)
    return found
