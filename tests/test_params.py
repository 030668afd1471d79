import subprocess
import sys

import pytest

from curate.errors import CurateError
from curate.params import Params, load_params
from tests.conftest import REPO


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def error_of(path) -> str:
    with pytest.raises(CurateError) as caught:
        load_params(path)
    return str(caught.value)


def test_template_params_validate():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.image.size == 28
    assert params.ingest.source == "data/demo"


def test_unknown_key_names_dotted_key_and_suggests(tmp_path):
    path = write(tmp_path, "ingest:\n  test_fracton: 0.2\n")
    assert error_of(path) == (
        f"{path}: ingest.test_fracton: unknown key (did you mean ingest.test_fraction?)"
    )


def test_unknown_nested_key_suggests_sibling(tmp_path):
    path = write(tmp_path, "ingest:\n  demo:\n    label_nose: 0.2\n")
    assert "ingest.demo.label_nose: unknown key (did you mean ingest.demo.label_noise?)" in error_of(path)


def test_unknown_top_level_key_without_close_match(tmp_path):
    path = write(tmp_path, "zzz: 1\n")
    assert error_of(path).endswith("zzz: unknown key")


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "image:\n  size: '28'\n")
    message = error_of(path)
    assert "image.size: '28'" in message
    assert "integer" in message


def test_out_of_range_names_key_and_range(tmp_path):
    path = write(tmp_path, "ingest:\n  test_fraction: 1.5\n")
    assert error_of(path).endswith("ingest.test_fraction: 1.5 is out of range (allowed: 0 < value < 1)")


def test_choice_lists_allowed_values(tmp_path):
    path = write(tmp_path, "ingest:\n  on_bad_image: ignore\n")
    assert error_of(path).endswith("ingest.on_bad_image: 'ignore' is not allowed (allowed: 'skip', 'fail')")


def test_channels_must_be_1_or_3(tmp_path):
    path = write(tmp_path, "image:\n  channels: 2\n")
    assert "image.channels: 2 is not allowed (allowed: 1, 3)" in error_of(path)


def test_several_errors_are_counted_on_one_line(tmp_path):
    path = write(tmp_path, "seed: -1\nimage:\n  size: 4\n")
    message = error_of(path)
    assert "\n" not in message
    assert message.endswith("(and 1 more)")


def test_invalid_yaml_and_missing_file(tmp_path):
    assert "invalid YAML at line 2" in error_of(write(tmp_path, "seed: 0\n  image: [\n"))
    assert error_of(tmp_path / "nope.yaml").endswith("nope.yaml: file not found")
    assert "expected a mapping" in error_of(write(tmp_path, "- 1\n"))


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    write(tmp_path, "ingest:\n  treshold: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "curate.cli", "ingest"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["curate: error: params.yaml: ingest.treshold: unknown key"]
    assert not (tmp_path / "data").exists()


def test_template_params_are_the_loader_defaults():
    # The data card lists params that differ from the defaults: the shipped file must be them.
    assert load_params(REPO / "params.yaml") == Params()


def test_one_threshold_per_metric(tmp_path):
    # The Frechet distance is judged by gates.max_frechet_distance only.
    assert error_of(write(tmp_path, "augment:\n  max_frechet: 0.3\n")).endswith(
        "augment.max_frechet: unknown key (moved to gates.max_frechet_distance)"
    )
    assert (
        load_params(write(tmp_path, "gates:\n  max_frechet_distance: null\n")).gates.max_frechet_distance
        is None
    )


@pytest.mark.parametrize(("old", "new"), [("folds", "k"), ("epochs", "epochs"), ("min_steps", "min_steps")])
def test_fold_keys_moved_from_clean_name_their_new_key(tmp_path, old, new):
    # The folds stage's keys left clean for a section of their own; an older file says where.
    assert error_of(write(tmp_path, f"clean:\n  {old}: 3\n")).endswith(
        f"clean.{old}: unknown key (moved to folds.{new})"
    )
    assert load_params(write(tmp_path, "folds:\n  k: 3\n")).folds.k == 3


@pytest.mark.parametrize("section", ["folds", "augment", "train", "evaluate"])
def test_every_model_stage_takes_a_device(tmp_path, section):
    params = load_params(write(tmp_path, f"{section}:\n  device: cpu\n"))
    assert getattr(params, section).device == "cpu" and getattr(Params(), section).device == "auto"
    message = error_of(write(tmp_path, f"{section}:\n  device: tpu\n"))
    assert message.endswith(f"{section}.device: 'tpu' is not allowed (allowed: 'auto', 'cpu', 'cuda', 'mps')")
