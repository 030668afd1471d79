"""scripts/gpu_check.py runs only on a lent GPU, whose minutes are few: its ``--smoke`` mode runs the
same code on the CPU here, so a change to the modules it calls breaks this test, not the GPU check."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_smoke_runs_on_the_cpu(tmp_path):
    # In an empty folder: no data/raw, so the script takes scikit-learn's digits, as on a bare GPU box.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/gpu_check.py"), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "data: sklearn digits (tiled), 256 train / 128 test images" in result.stdout
    assert "cpu (smoke run, not a GPU check)" in result.stdout
    assert "2 epochs" in result.stdout
