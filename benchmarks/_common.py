"""What the benchmarks and the tests share: a fresh copy of the template, its params edited in place
(one merge rule for both), the tiny profile, and ``curate review --serve`` run as people run it.

Not a benchmark itself. The benchmark scripts put the repository root on ``sys.path`` and import
``benchmarks._common``; the tests import it the same way (``tests/conftest.py`` re-exports the
params helpers and the tiny profile), so a benchmark never imports a test module.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=curate tests", "-c", "user.email=tests@curate.invalid"]
# The tiny profile: the whole DAG in about a minute on two cores, every stage with work to do.
TINY = {
    "ingest": {"demo": {"subsample": 0.08}},
    # min_steps 0: 2 epochs as asked (the default floor of 200 steps would make them 67 here).
    "folds": {"k": 2, "epochs": 2, "batch_size": 64, "min_steps": 0},
    # Its 2-epoch folds learn next to nothing (kappa 0.02 with the given labels, 85% of the rows
    # flagged): act on their flags anyway, by dropping, so every stage after clean has work to do.
    "clean": {"action": "drop", "min_fold_skill": 0.0},
    # The tiny demo's sklearn group has about 7 train rows: rebalance it anyway, as the full demo does.
    "rebalance": {"min_group_size": 2},
    "augment": {"copies": 1},
    "train": {"epochs": 1},
}
# Debian's headless Chromium, driven through Playwright (review-app tests and benchmark).
CHROMIUM = os.environ.get("CURATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
URL = re.compile(r"open (http://\S+)")


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
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "template"], cwd=destination, check=True)
    return destination


class Server:
    """``curate review --serve`` in a subprocess, in project ``root``, with more ``options`` (such as
    ``("--audit", "100")``); ``url`` carries the token."""

    def __init__(self, root: Path, reviewer: str = "ann", options: tuple[str, ...] = ()) -> None:
        import httpx  # the dev extra's HTTP client: only where a server is started

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
        command = [
            sys.executable,
            "-m",
            "curate.cli",
            "review",
            "--serve",
            "--port",
            "0",
            "--reviewer",
            reviewer,
            *options,
        ]
        self.process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        match = URL.search(line)
        assert match, f"no URL printed: {line!r}"
        self.url = match.group(1)
        self.base, self.token = self.url.split("/?token=")
        self.client = httpx.Client(base_url=self.base, headers={"X-Curate-Token": self.token}, timeout=10)
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', self._ready()).group(1)

    def _ready(self) -> str:
        import httpx

        for _ in range(100):
            try:
                return self.client.get("/").text
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the server never answered")

    def post(self, path: str, **body):
        """POST a JSON body with the page's CSRF token; the ``httpx.Response``."""
        return self.client.post(path, json=body, headers={"X-CSRF-Token": self.csrf})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=10)
        self.client.close()
