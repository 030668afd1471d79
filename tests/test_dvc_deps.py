"""Each stage's code deps in dvc.yaml are exactly the code it runs, so no edit leaves a stale cache.

The closure is :mod:`curate.people.deps`'s (``curate deps`` prints it, ``--write`` fixes dvc.yaml):
its module, every ``curate`` module it imports (at the top or inside a function, followed
through each imported module), the packages' ``__init__.py`` on the way, and the report
templates it renders (with what they extend, import or include).
"""

from pathlib import Path

import yaml

from curate.people.deps import closure, rewrite
from tests.conftest import REPO

TEMPLATES = Path("src/curate/report/templates")


def stage_closure(module: str) -> set[Path]:
    return {path.relative_to(REPO) for path in closure(module)}


def test_each_stage_depends_on_exactly_the_code_it_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage["cmd"].split()
        assert command[:2] == ["python", "-m"], (
            f"{name}: cmd {stage['cmd']!r} (python -m <module>: no CLI in between)"
        )
        deps = {Path(dep) for dep in stage.get("deps", []) if str(dep).startswith("src/")}
        expected = stage_closure(command[2])
        assert deps == expected, (
            f"dvc.yaml stage {name}: deps to add {sorted(map(str, expected - deps))}, "
            f"to remove {sorted(map(str, deps - expected))}"
        )


def test_closure_follows_imports_inside_functions_and_templates():
    files = stage_closure("curate.stages.gate")
    assert Path("src/curate/__init__.py") in files
    assert Path("src/curate/params.py") in files
    assert TEMPLATES / "index.html" in files and TEMPLATES / "base.html" in files
    assert Path("src/curate/learning/training.py") not in files  # gate trains nothing


def test_lock_records_only_the_stages_of_dvc_yaml():
    # DVC keeps a renamed or removed stage's entry in dvc.lock for ever, and re-parses the whole
    # lock with ruamel's pure-Python round-trip parser once per stage run (benchmarks/README.md:
    # DVC's YAML): a stale entry costs every `dvc repro` time and says something false about the DAG.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert sorted(locked) == sorted(stages), f"dvc.lock: stale stages {sorted(set(locked) - set(stages))}"


def test_rewrite_fills_a_new_stage_and_keeps_other_lines():
    text = (
        "stages:\n  a:\n    cmd: x\n    deps:\n      # why\n      - src/old.py\n      - data/in\n"
        "  b:\n    deps:\n      - data/b\n"
    )
    wanted = {"a": ["src/x.py"], "b": ["src/y.py", "src/z.py"]}
    assert rewrite(text, wanted) == (
        "stages:\n  a:\n    cmd: x\n    deps:\n      - src/x.py\n      # why\n      - data/in\n"
        "  b:\n    deps:\n      - src/y.py\n      - src/z.py\n      - data/b\n"
    )
