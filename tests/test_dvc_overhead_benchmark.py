"""benchmarks/dvc_overhead.py: how it splits a dvc repro's wall, and that its accounting wraps
the DVC functions it names (a DVC release that renames one must fail here, not print zeros)."""

import importlib
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "dvc_overhead", Path(__file__).resolve().parents[1] / "benchmarks" / "dvc_overhead.py"
)
dvc_overhead = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(dvc_overhead)


def test_parts_add_up_to_the_wall_and_the_round_trip_parse_is_not_counted_twice():
    record = {
        "wall": 30.0,
        "main": 29.4,
        "seconds": {
            "stage commands": 20.0,
            "tree builds": 3.0,
            "dvc.lock parsed for update": 2.0,
            "YAML parsed (the rest)": 2.5,  # includes the 2.0 of the round-trip parses
            "YAML dumped": 1.0,
            dvc_overhead.SOURCE_BUILDS: 2.5,  # inside the tree builds
        },
        "calls": {},
    }
    parts = dvc_overhead.breakdown(record)
    assert parts["DVC start (interpreter, imports)"] == pytest.approx(0.6)
    assert parts["YAML parsed (the rest)"] == pytest.approx(0.5)
    assert parts["the rest (index, locks, state, caching outs)"] == pytest.approx(2.9)
    assert sum(parts.values()) == pytest.approx(record["wall"])


@pytest.mark.parametrize(("label", "module", "name"), dvc_overhead.PARTS)
def test_each_accounted_function_exists_in_the_installed_dvc(label, module, name):
    assert callable(getattr(importlib.import_module(module), name)), label
