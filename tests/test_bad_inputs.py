"""Awkward real-data inputs to ingest (issue 12): each is read faithfully, or skipped with its
reason in the report, or stops the run with one line naming the file, column or key (exit 2),
leaving the outputs of the previous good run byte for byte as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate import cli
from curate.data.image_rows import read_images
from curate.data.samples import read_samples
from curate.report.render import read_figures
from tests.conftest import file_or_tree_bytes, set_params
from tests.test_ingest import OUTPUTS

SIZE = 12  # the source images' own size: no resizing, so pixel values can be checked exactly


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def gray(value: int) -> Image.Image:
    """A SIZE x SIZE grayscale image with a small gradient, so no two images share bytes."""
    pixels = np.clip(value + np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 7, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_metadata(source: Path, lines: list[str]) -> None:
    (source / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def good(workdir: Path, capsys) -> Path:
    """A good ImageFolder (classes a and b, 6 PNGs each, two groups), ingested once."""
    source = workdir / "src"
    for label, base in (("a", 30), ("b", 150)):
        for i in range(6):
            save(source / label / f"{i}.png", gray(base + 10 * i))
    write_metadata(
        source, ["path,group"] + [f"{c}/{i}.png,{'g1' if i < 3 else 'g2'}" for c in "ab" for i in range(6)]
    )
    set_params(workdir / "params.yaml", image={"size": SIZE}, ingest={"source": "src"})
    assert cli.main(["ingest"]) == 0
    capsys.readouterr()
    return workdir


def snapshot(root: Path) -> dict[str, bytes]:
    return {name: file_or_tree_bytes(root / name) for name in OUTPUTS}


def ingest(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``curate ingest`` in-process; its exit code and stderr lines."""
    code = cli.main(["ingest", *argv])
    return code, capsys.readouterr().err.splitlines()


def metrics(root: Path) -> dict:
    return read_figures("ingest", root / "reports")


def markdown(root: Path) -> str:
    return (root / "reports/ingest.md").read_text()


def samples_by_path(root: Path):
    return read_samples(root / "data/raw/samples.parquet").set_index("path")


def pixels_of(root: Path, path: str) -> np.ndarray:
    samples = samples_by_path(root)
    return read_images(root / "data/raw/images")[samples.loc[path, "row"]][:, :, 0]


# --- stops: one line, exit 2, the previous outputs untouched ---------------------------


def _replace_params(text: str) -> Callable[[Path], list[str]]:
    def apply(root: Path) -> list[str]:
        (root / "bad.yaml").write_bytes(text.encode("latin-1"))
        return ["--params", "bad.yaml"]

    return apply


def _duplicated_section(root: Path) -> list[str]:
    text = (root / "params.yaml").read_text()
    (root / "bad.yaml").write_text(text + "ingest:\n  source: other\n")
    return ["--params", "bad.yaml"]


def _params_folder(root: Path) -> list[str]:
    (root / "bad.yaml").mkdir()
    return ["--params", "bad.yaml"]


def _empty_source(root: Path) -> list[str]:
    set_params(root / "params.yaml", ingest={"source": ""})
    return []


def _class_of(kind: str) -> Callable[[Path], list[str]]:
    """A third class folder c holding no readable image."""

    def apply(root: Path) -> list[str]:
        (root / "src/c").mkdir()
        if kind in ("not an image", "mixed"):
            (root / "src/c/notes.txt").write_text("not an image")
        if kind in ("unreadable", "mixed"):
            (root / "src/c/0.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
            (root / "src/c/1.JPG").write_bytes(b"")
        (root / "src/c/.DS_Store").write_bytes(b"hidden: ignored")
        return []

    return apply


def _metadata(*lines: str) -> Callable[[Path], list[str]]:
    def apply(root: Path) -> list[str]:
        write_metadata(root / "src", list(lines))
        return []

    return apply


def _listed(exclude: set[str] = frozenset(), empty_group: set[str] = frozenset()) -> list[str]:
    rows = [f"{c}/{i}.png" for c in "ab" for i in range(6)]
    return [f"{p},{'' if p in empty_group else 'g1'}" for p in rows if p not in exclude]


def _metadata_bytes(payload: bytes) -> Callable[[Path], list[str]]:
    def apply(root: Path) -> list[str]:
        (root / "src/metadata.csv").write_bytes(payload)
        return []

    return apply


def _one_class(root: Path) -> list[str]:
    for path in sorted((root / "src/b").iterdir()):
        path.unlink()
    (root / "src/b").rmdir()
    write_metadata(root / "src", ["path,group"] + [f"a/{i}.png,g1" for i in range(6)])
    return []


def _one_class_after_refusing_a_symlink(root: Path) -> list[str]:
    outside = root / "elsewhere"
    (root / "src/b").rename(outside)
    (root / "src/b").symlink_to(outside, target_is_directory=True)
    (root / "src/metadata.csv").unlink()
    return []


def _unreadable_with_fail(root: Path) -> list[str]:
    (root / "src/a/9.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    write_metadata(root / "src", ["path,group", *_listed(), "a/9.png,g1"])
    set_params(root / "params.yaml", ingest={"on_bad_image": "fail"})
    return []


STOPS = {
    # item 2: a class folder with no readable image
    "class folder of non-images": (
        _class_of("not an image"),
        "src/c: class folder with no readable image (1 not an image)",
    ),
    "class folder of unreadable files": (
        _class_of("mixed"),
        "src/c: class folder with no readable image (1 not an image, 2 unreadable)",
    ),
    "empty class folder": (_class_of("empty"), "src/c: class folder with no readable image (empty)"),
    # item 6: files not in metadata.csv, empty group values
    "unlisted files": (
        _metadata("path,group", *_listed(exclude={"a/1.png", "a/2.png", "b/5.png"})),
        "src/metadata.csv: 3 image(s) not listed (or with an empty group): a/1.png, a/2.png, b/5.png; "
        "list them, or set ingest.unlisted: default_group",
    ),
    "empty group values": (
        _metadata("path,group", *_listed(exclude={"a/0.png"}, empty_group={"a/3.png", "b/0.png", "b/1.png"})),
        "src/metadata.csv: 4 image(s) not listed (or with an empty group): a/0.png, a/3.png, b/0.png, ...; "
        "list them, or set ingest.unlisted: default_group",
    ),
    # item 7: columns, empty and header-only files
    "unknown column": (
        _metadata("path,grp", *_listed()),
        "src/metadata.csv: unknown column 'grp' (did you mean 'group'?); "
        "list it in ingest.extra_columns to keep it",
    ),
    "unknown column without a close match": (
        _metadata("path,group,camera", *(f"{row},x" for row in _listed())),
        "src/metadata.csv: unknown column 'camera' (known: path, group, split); "
        "list it in ingest.extra_columns to keep it",
    ),
    "extra column absent": (
        lambda root: set_params(root / "params.yaml", ingest={"extra_columns": ["site"]}) or [],
        "src/metadata.csv: column 'site' (listed in ingest.extra_columns) is missing",
    ),
    "extra column named like a stage column": (
        lambda root: set_params(root / "params.yaml", ingest={"extra_columns": ["weight"]}) or [],
        "ingest.extra_columns: 'weight' is a column curate writes itself",
    ),
    "column twice once stripped": (
        _metadata("path,group, group", *(f"{row},x" for row in _listed())),
        "src/metadata.csv: column 'group' appears twice",
    ),
    "0-byte metadata.csv": (
        _metadata_bytes(b""),
        "src/metadata.csv: empty file (expected a header line such as path,group,split)",
    ),
    "header-only metadata.csv": (
        _metadata("path,group"),
        "src/metadata.csv: a header and no rows (list one image per line, or delete the file)",
    ),
    # item 8: a metadata path that matches no file at all
    "metadata path without a file": (
        _metadata("path,group", *_listed(), "a/zzz.png,g1"),
        "src/metadata.csv line 14: path 'a/zzz.png' matches no file in the class folders",
    ),
    "unreadable file with on_bad_image fail": (
        _unreadable_with_fail,
        "src/a/9.png: unreadable image (not a recognised image format)",
    ),
    # item 9: at least two classes
    "one class": (_one_class, "src: one class only ('a'); a classifier needs at least two class folders"),
    "one class once a symlink is refused": (
        _one_class_after_refusing_a_symlink,
        "src: one class only ('a'); a classifier needs at least two class folders",
    ),
    # item 13: params that cannot lie (run with --params)
    "empty params file": (
        _replace_params(""),
        "bad.yaml: empty (expected the sections seed, image, ingest, folds, clean, rebalance, augment, "
        "train, evaluate, gates)",
    ),
    "duplicated section": (_duplicated_section, "bad.yaml line {lines}: key 'ingest' appears twice"),
    "empty ingest.source": (
        _empty_source,
        "params.yaml: ingest.source: is empty: an ImageFolder path, or data/demo for the embedded demo",
    ),
    "params file not UTF-8": (
        _replace_params("seed: 0\nimage:\n  size: 12 # \xe9\n"),
        "bad.yaml: not UTF-8 text (byte 0xe9 at offset 28)",
    ),
    "params file is a folder": (_params_folder, "bad.yaml: is a folder, not a params file"),
}


@pytest.mark.parametrize("case", list(STOPS))
def test_bad_input_stops_with_one_line(good, capsys, case):
    change, message = STOPS[case]
    before = snapshot(good)
    lines_before = len((good / "params.yaml").read_text().splitlines())
    argv = change(good)
    code, stderr = ingest(capsys, *argv)
    assert code == 2
    assert stderr == [f"curate: error: {message.format(lines=lines_before + 1)}"]
    assert snapshot(good) == before


def test_stop_is_one_line_from_the_console_script(good):
    """The real entry point, not a terminal: no progress bar and no traceback on stderr."""
    _class_of("unreadable")(good)
    before = snapshot(good)
    result = subprocess.run(
        [sys.executable, "-m", "curate.cli", "ingest"], cwd=good, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "curate: error: src/c: class folder with no readable image (2 unreadable)"
    ]
    assert snapshot(good) == before


# --- read faithfully -------------------------------------------------------------------


def _gradient16() -> np.ndarray:
    return np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)


@pytest.mark.parametrize(
    ("name", "pixels", "options", "rescale", "expected"),
    [
        ("png16.png", _gradient16(), {}, "dtype_range", np.round(_gradient16() / 257)),
        ("tif16.tif", _gradient16(), {}, "dtype_range", np.round(_gradient16() / 257)),
        ("tif16be.TIFF", _gradient16().astype(">u2"), {}, "dtype_range", np.round(_gradient16() / 257)),
        # 32-bit integer mode I with 16-bit values (what some decoders hand over)
        ("int32.tif", _gradient16().astype(np.int32), {}, "dtype_range", np.round(_gradient16() / 257)),
        (
            "dim.png",
            _gradient16() // 64 + 1000,
            {},
            "dtype_range",
            np.round((_gradient16() // 64 + 1000) / 257),
        ),
        (
            "dim.png",
            _gradient16() // 64 + 1000,
            {},
            "per_image",
            np.round((_gradient16() // 64) / 1023 * 255),
        ),
        ("flat.png", np.full((SIZE, SIZE), 40000, np.uint16), {}, "per_image", np.zeros((SIZE, SIZE))),
        (
            "unit.tif",
            _gradient16().astype(np.float32) / 65535,
            {},
            "dtype_range",
            np.round(_gradient16() / 257),
        ),
        (
            "wide.tif",
            _gradient16().astype(np.float32) * 3 - 7,
            {},
            "dtype_range",
            np.round(_gradient16() / 257),
        ),
    ],
)
def test_16bit_and_float_images_are_scaled_not_clipped(
    good, capsys, name, pixels, options, rescale, expected
):
    save(good / "src/a" / name, Image.fromarray(pixels), **options)
    set_params(good / "params.yaml", ingest={"rescale_16bit": rescale, "unlisted": "default_group"})
    assert ingest(capsys)[0] == 0
    got = pixels_of(good, f"a/{name}")
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
    assert got.max() < 255 or expected.max() == 255  # not saturated
    is_float = pixels.dtype.kind == "f"
    assert metrics(good)["n_16bit"] == (0 if is_float else 1)
    what = "float images scaled to 8 bits" if is_float else "16-bit images scaled to 8 bits"
    assert f"| {what} | 1 |" in markdown(good)


def test_32bit_values_beyond_16_bits_are_unreadable_not_wrapped(good, capsys):
    save(good / "src/a/big.tif", Image.fromarray(np.full((SIZE, SIZE), 70000, np.int32)))
    set_params(good / "params.yaml", ingest={"unlisted": "default_group"})
    assert ingest(capsys)[0] == 0
    assert "a/big.tif" not in samples_by_path(good).index
    assert (
        "| a/big.tif | unreadable | ValueError: I pixels from 70000 to 70000, "
        "outside the 16-bit range 0..65535 |" in markdown(good)
    )


def test_every_pillow_format_whatever_the_extension_case(good, capsys):
    """.tif/.TIFF/.gif/.webp/.bmp/.PNG/.JPG/.jpeg all ingested; other files listed, hidden ones ignored."""
    lossless = {"c/0.tif": {}, "c/1.TIFF": {}, "c/2.gif": {}, "c/3.webp": {"lossless": True}, "c/4.bmp": {}}
    lossless |= {"c/5.PNG": {}}
    for i, (path, options) in enumerate(lossless.items()):
        file_format = Image.registered_extensions()[Path(path).suffix.lower()]
        save(good / "src" / path, gray(60 + 20 * i), format=file_format, **options)
    save(good / "src/c/6.JPG", gray(200), format="JPEG")
    save(good / "src/c/sub/7.jpeg", gray(220), format="JPEG")
    (good / "src/c/readme.md").write_text("notes")
    (good / "src/c/.DS_Store").write_bytes(b"ignored")
    save(good / "src/c/.hidden/8.png", gray(1))
    (good / "src/top.png").write_bytes((good / "src/a/0.png").read_bytes())
    set_params(good / "params.yaml", ingest={"unlisted": "default_group"})
    assert ingest(capsys)[0] == 0
    samples = samples_by_path(good)
    assert sorted(p for p in samples.index if p.startswith("c/")) == sorted(
        [*lossless, "c/6.JPG", "c/sub/7.jpeg"]
    )
    for i, path in enumerate(lossless):
        np.testing.assert_array_equal(pixels_of(good, path), np.asarray(gray(60 + 20 * i)))
    assert metrics(good)["n_classes"] == 3 and metrics(good)["n_skipped"] == 2
    text = markdown(good)
    assert "| c/readme.md | not an image |  |" in text and "| top.png | not in a class folder |  |" in text
    assert ".DS_Store" not in text and ".hidden" not in text
    assert "- 1 file(s) in class folders are not images, skipped (see Details)" in text
    assert "- 1 file(s) outside any class folder ignored (see Details)" in text


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_multi_frame_files_give_their_first_frame(good, capsys, suffix):
    frames = [gray(10), gray(200), gray(100)]
    save(good / f"src/a/anim{suffix}", frames[0], save_all=True, append_images=frames[1:])
    set_params(good / "params.yaml", ingest={"unlisted": "default_group"})
    assert ingest(capsys)[0] == 0
    np.testing.assert_array_equal(pixels_of(good, f"a/anim{suffix}"), np.asarray(frames[0]))
    assert metrics(good)["n_multiframe"] == 1
    text = markdown(good)
    assert "| multi-frame files | 1 | first frame kept |" in text
    assert "- 1 multi-frame file(s): only the first frame is used" in text


def test_symlinks_outside_the_source_are_refused_unless_followed(good, capsys):
    outside = good / "outside"
    save(outside / "x.png", gray(90))
    for i in range(2):
        save(outside / "cls" / f"{i}.png", gray(120 + i))
    (good / "src/a/link.png").symlink_to(outside / "x.png")
    (good / "src/c").symlink_to(outside / "cls", target_is_directory=True)
    (good / "src/b/inside.png").symlink_to(good / "src/a/0.png")  # inside the source: read
    (good / "src/b/broken.png").symlink_to(good / "src/nowhere.png")
    set_params(good / "params.yaml", ingest={"unlisted": "default_group"})
    assert ingest(capsys)[0] == 0
    samples = samples_by_path(good)
    assert "a/link.png" not in samples.index and not samples.index.str.startswith("c/").any()
    assert samples.loc["b/inside.png", "label_name"] == "b"
    text = markdown(good)
    assert "| a/link.png | symlink outside the source folder | ingest.follow_symlinks: false |" in text
    assert "| c | symlink outside the source folder | ingest.follow_symlinks: false |" in text
    assert "| b/broken.png | unreadable | broken symlink |" in text
    assert "- 2 symlink(s) to outside the source folder refused (ingest.follow_symlinks: false)" in text
    assert metrics(good)["n_skipped"] == 3 and metrics(good)["n_bad_images"] == 1

    set_params(good / "params.yaml", ingest={"follow_symlinks": True})
    assert ingest(capsys)[0] == 0
    samples = samples_by_path(good)
    assert {"a/link.png", "c/0.png", "c/1.png"} <= set(samples.index)
    assert metrics(good)["n_classes"] == 3 and metrics(good)["n_skipped"] == 1


def test_a_symlink_loop_ends(good, capsys):
    (good / "src/a/loop").symlink_to(good / "src/a", target_is_directory=True)
    assert ingest(capsys)[0] == 0
    assert len(samples_by_path(good)) == 12


def test_unicode_names_compare_in_nfc(good, capsys):
    nfd = unicodedata.normalize("NFD", "café")
    (good / "src/b").rename(good / "src" / nfd)
    assert nfd in os.listdir(good / "src")
    write_metadata(
        good / "src", ["path,group"] + [f"{c}/{i}.png,g1" for c in ("a", "café") for i in range(6)]
    )
    assert ingest(capsys)[0] == 0
    samples = samples_by_path(good)
    assert "café/0.png" in samples.index and samples.loc["café/0.png", "label_name"] == "café"
    assert set(samples["label_name"]) == {"a", "café"}


def test_unlisted_files_go_to_the_default_group_when_asked(good, capsys):
    write_metadata(good / "src", ["path,group", *_listed(exclude={"a/1.png"}, empty_group={"b/2.png"})])
    set_params(good / "params.yaml", ingest={"unlisted": "default_group", "default_group": "unknown"})
    assert ingest(capsys)[0] == 0
    samples = samples_by_path(good)
    assert samples.loc[["a/1.png", "b/2.png"], "group"].tolist() == ["unknown", "unknown"]
    assert metrics(good)["n_unlisted"] == 2 and metrics(good)["n_groups"] == 2
    text = markdown(good)
    assert "- 2 image(s) not listed in metadata.csv (or with an empty group) put in group unknown" in text
    assert "| images in the default group | 2 | not listed in metadata.csv, or an empty group |" in text


def test_default_group_may_not_merge_into_a_real_group(good, capsys):
    write_metadata(good / "src", ["path,group", *_listed(exclude={"a/1.png"})])
    set_params(good / "params.yaml", ingest={"unlisted": "default_group", "default_group": "g1"})
    before = snapshot(good)
    code, stderr = ingest(capsys)
    assert code == 2
    assert stderr == [
        "curate: error: ingest.default_group: 'g1' is also a group in src/metadata.csv; choose another name"
    ]
    assert snapshot(good) == before


def test_metadata_without_group_column_keeps_group_all(good, capsys):
    write_metadata(good / "src", ["path,split", "a/0.png,test", "b/0.png,train"])
    assert ingest(capsys)[0] == 0
    samples = samples_by_path(good)
    assert set(samples["group"]) == {"all"} and metrics(good)["n_unlisted"] == 0
    assert samples.loc["a/0.png", "split"] == "test" and samples.loc["b/0.png", "split"] == "train"


def test_columns_stripped_and_extra_columns_kept(good, capsys):
    rows = [f"{row}, site{i % 2} " for i, row in enumerate(_listed())]
    write_metadata(good / "src", [" path , group ,site", *rows])
    set_params(good / "params.yaml", ingest={"extra_columns": ["site"]})
    assert ingest(capsys)[0] == 0
    samples = samples_by_path(good)
    assert samples.columns[-1] == "site"
    assert samples.loc["a/0.png", "site"] == " site0 " and samples.loc["a/1.png", "site"] == " site1 "
    assert set(samples["group"]) == {"g1"}


def test_unreadable_listed_file_is_skipped(good, capsys):
    (good / "src/a/9.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    write_metadata(good / "src", ["path,group", *_listed(), "a/9.png,g1"])
    assert ingest(capsys)[0] == 0
    assert "a/9.png" not in samples_by_path(good).index
    assert metrics(good)["n_bad_images"] == 1
    text = markdown(good)
    assert "| a/9.png | unreadable | not a recognised image format |" in text
    assert "- 1 unreadable file(s) skipped (see Details)" in text


# --- item 15: a killed run's temp files ------------------------------------------------


def test_stale_temp_file_is_removed_by_the_next_run(good, capsys):
    stale = [good / "data/raw/.samples.parquet.k1ll3d.tmp", good / "data/raw/images/.segment.k1ll3d.tmp"]
    stale[1].parent.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_bytes(b"half a file")
    assert ingest(capsys)[0] == 0
    assert not any(path.exists() for path in stale)
    assert not list((good / "data/raw").glob(".*.tmp"))
