from __future__ import annotations

import os
import shutil
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

# Shared with the benchmarks (one merge rule, one tiny profile); other tests import them from here.
from benchmarks._common import GIT, TINY, set_params, template_copy  # noqa: F401
from tests.browser import browser  # noqa: F401  (a fixture for every test module)

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist workers train side by side, each stage on PyTorch's OpenMP threads, more threads than
    # cores. OpenMP's default lets a thread that waits for its team spin on its core: two 2-thread
    # trainings of the CNN on 2 cores took 16 to 52 s each, and 8 to 11 s with waiting threads
    # asleep (PASSIVE). Set before PyTorch loads, and inherited by dvc and the stages it runs; the
    # thread count and so every figure stay as they are.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}
STAGES = ("ingest", "folds", "clean", "rebalance", "augment", "train", "train_report", "evaluate", "gate")


def pytest_collection_modifyitems(config, items):
    """Longest work first, so that under xdist the quick tests fill the workers around the
    end-to-end runs rather than one worker running a dvc repro alone at the end (pyproject.toml:
    --no-loadscope-reorder keeps this order): the tests on the full demo run (the longest chain:
    the shared run, then more), then one test on the tiny project (its worker builds the project,
    a minute), then the other end-to-end tests (which the other worker runs meanwhile, rather than
    wait for the build), then the rest of the tiny project's, then the rest; files' order within
    each."""
    items.sort(key=_start_order)
    by_order = {order: [item for item in items if _start_order(item) == order] for order in range(4)}
    demo, tiny, other_end_to_end, rest = by_order.values()
    items[:] = demo + tiny[:1] + other_end_to_end + tiny[1:] + rest


def _start_order(item: pytest.Item) -> int:
    if item.get_closest_marker("slow") is None:
        return 3
    needs = set(getattr(item, "fixturenames", ()))
    return 0 if "demo_built" in needs else 1 if "tiny_built" in needs else 2


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temp project folder holding the template's params.yaml and dvc.yaml (the stages read the
    DAG from it); stages run inside it."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "data" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def file_or_tree_bytes(path: Path) -> bytes:
    """A file's bytes; for a folder (a pixel store), every file's name and bytes in name order."""
    if not path.is_dir():
        return path.read_bytes()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return b"".join(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes() for p in files)


def run(*args, cwd, env=ENV) -> str:
    """A command's stdout; its output in the failure message when it fails."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ran(output: str) -> set[str]:
    """The template's stages a ``dvc repro`` output says it ran."""
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def tiny_project(destination: Path) -> Path:
    """A clone of the template at ``destination`` on the tiny profile, reproduced and committed."""
    root = template_copy(destination)
    set_params(root / "params.yaml", **TINY)
    assert ran(run("dvc", "repro", cwd=root)) == set(STAGES)
    run(*GIT, "add", "-A", cwd=root)
    run(*GIT, "commit", "-q", "-m", "tiny profile", cwd=root)
    return root


def demo_project(destination: Path) -> Path:
    """A clone of the template at ``destination`` after one ``dvc repro`` of the default params
    (the full demo, uncommitted: its dvc.lock and reports are compared with the committed ones)."""
    root = template_copy(destination)
    run("dvc", "repro", cwd=root)
    return root


# --- end-to-end projects built once per test session -------------------------------------------
#
# A `dvc repro` of the template is the expensive part of an end-to-end test: each test that only
# needs "the template, reproduced" starts from a copy of one run instead of running it again. The
# run happens once per `pytest` session, whichever xdist worker asks first (a file lock in the
# folder all workers share); the others wait for it and copy it. The built folder itself is never
# handed to a test: every test gets its own copy (git history, DVC cache and workspace), so tests
# may edit params, add stages, run `dvc repro` or `dvc exp run` in it, in parallel, without seeing
# each other. A new end-to-end test on the tiny profile takes `tiny_copy` (one copy per test) or
# copies `tiny_built` into a module-scoped fixture of its own (one copy per module).


def session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp folder of this whole run: under xdist each worker's base temp is a subfolder of it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """``build(folder)`` run once per session across xdist workers; the folder, to copy, never to edit.
    A failed build fails every test that needs it, with the first failure's traceback, once."""
    folder = session_folder(tmp_path_factory) / f"built-{name}"
    done, failed = folder.with_name(folder.name + ".done"), folder.with_name(folder.name + ".failed")
    with FileLock(str(folder.with_name(folder.name + ".lock"))):
        if not done.exists() and not failed.exists():
            try:
                folder.mkdir()
                build(folder)
            except BaseException:
                failed.write_text(traceback.format_exc())
                raise
            done.touch()
    if failed.exists():
        raise RuntimeError(f"building the shared {name} project failed:\n{failed.read_text()}")
    return folder


def copy_project(source: Path, destination: Path) -> Path:
    """A writable copy of a built project: its git history, DVC cache and workspace (not the DVC
    command scratch in .dvc/tmp: locks and the like belong to the folder they were taken in)."""

    def scratch(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder) == source / ".dvc" else []

    shutil.copytree(source, destination, symlinks=True, ignore=scratch, dirs_exist_ok=True)
    return destination


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory) -> Path:
    """The template on the tiny profile (:data:`TINY`), reproduced and committed, built once per
    session. Read-only: copy it (:func:`copy_project`, or the ``tiny_copy`` fixture) to use it."""
    return built_once(tmp_path_factory, "tiny", tiny_project)


@pytest.fixture
def tiny_copy(tiny_built, tmp_path) -> Path:
    """This test's own copy of the tiny project: reproduced and committed, ``git status`` and
    ``dvc status`` clean; edit params, add a stage, ``dvc repro``: only what changed runs."""
    return copy_project(tiny_built, tmp_path / "project")


@pytest.fixture(scope="session")
def demo_built(tmp_path_factory) -> Path:
    """The template after one ``dvc repro`` of its default params (the full demo), built once per
    session. Read-only: copy it to use it."""
    return built_once(tmp_path_factory, "demo", demo_project)
