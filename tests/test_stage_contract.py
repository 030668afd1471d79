"""Every stage module has the same shape: ``compute(...) -> Result``, ``metrics(result)``,
``report_context(params, result)`` and ``main(argv)``; the stages with a report hand it to the
one writer (``write_stage``), the trainings record their lineage, and no module keeps lineage
as state."""

import ast
import importlib
import inspect

import pytest

from curate import dag
from curate.data import atomic, image_rows, inputs, samples
from tests.conftest import REPO

STAGES = dag.names(REPO / "dvc.yaml")
NO_REPORT = {"folds", "train"}  # trainings: their record is what the next stage reports


def positional(function) -> list[str]:
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_module_has_the_four_functions(stage):
    module = importlib.import_module(f"curate.stages.{stage}")
    assert positional(module.main) == ["argv"]
    assert inspect.signature(module.main).parameters["argv"].default is None
    assert positional(module.metrics) == ["result"]
    assert positional(module.report_context) == ["params", "result"]
    returned = inspect.signature(module.compute).return_annotation
    assert returned is not inspect.Signature.empty, f"{stage}.compute names the Result it returns"
    # The type compute returns is the one metrics and report_context take.
    result_type = str(returned).removesuffix(" | None")
    assert inspect.signature(module.metrics).parameters["result"].annotation == result_type
    assert inspect.signature(module.report_context).parameters["result"].annotation == result_type


@pytest.mark.parametrize("stage", STAGES)
def test_main_hands_its_outputs_to_the_one_writer(stage):
    source = (REPO / "src/curate/stages" / f"{stage}.py").read_text()
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
    }
    if stage in NO_REPORT:
        assert "record" in calls and "write_stage" not in calls
    else:
        assert "write_stage" in calls and "record" not in calls
    assert "write_report" not in calls and "show_gates" not in calls


def test_no_module_keeps_lineage_as_state():
    for module in (atomic, image_rows, inputs, samples):  # the readers and writers
        for name in ("record_input", "take_lineage", "write_lineage", "_read", "_written"):
            assert not hasattr(module, name), f"{module.__name__}.{name}"
