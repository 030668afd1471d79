from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temp project folder holding the template's params.yaml and dvc.yaml (the stages read the
    DAG from it); stages run inside it."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "data" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def set_params(path: Path, **sections) -> None:
    """Update params.yaml in place: ``set_params(p, ingest={"source": "x"})`` merges one level deep."""
    params = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = _merge(params[key], value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def parse_override(text: str) -> dict:
    """``train.epochs=8`` -> ``{"train": {"epochs": 8}}`` (the value parsed as YAML): a benchmark's
    ``-S`` override, in the form :func:`set_params` merges."""
    key, _, value = text.partition("=")
    nested: dict = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = yaml.safe_load(value)
    return nested


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


def template_copy(destination: Path) -> Path:
    """A fresh git repo holding the template's tracked files, as a user's clone would."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "user.name=curate tests", "-c", "user.email=tests@curate.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "template"], cwd=destination, check=True)
    return destination


def file_or_tree_bytes(path: Path) -> bytes:
    """A file's bytes; for a folder (a pixel store), every file's name and bytes in name order."""
    if not path.is_dir():
        return path.read_bytes()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return b"".join(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes() for p in files)
