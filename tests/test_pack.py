"""``curate pack``: deterministic WebDataset shards of an ImageFolder, in tarfile's own format;
a re-pack keeps unchanged shards byte for byte, so DVC stores only what a version changed."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from curate import cli
from curate.data.tars import member_header, write_tar
from curate.people.pack import pack
from tests.conftest import file_or_tree_bytes
from tests.test_shards import ingested, make_source, png

SHARD_MB = 0.004  # about 4 KB: a few samples a shard, so versions touch some shards and not others


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def names_in(shard: Path) -> list[str]:
    with tarfile.open(shard) as archive:
        return archive.getnames()


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_source(tmp_path / "photos")


@pytest.mark.parametrize(
    "name", ["cat/0.png", "a" * 100, "b" * 101 + ".png", "café/été.jpg", "x/" + "é" * 60]
)
def test_headers_are_tarfiles_own(name):
    info = tarfile.TarInfo(name)  # mode 0644, uid/gid 0, no user names, mtime 0 by default
    info.size = 1234
    assert member_header(name, 1234) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_an_archive_is_tarfiles_own():
    members = [("cat/0.png", png(1)), ("cat/0.json", b'{"label":"cat"}'), ("é" * 70 + ".png", png(2))]
    ours = io.BytesIO()
    write_tar(ours, iter(members))
    theirs = io.BytesIO()
    with tarfile.open(fileobj=theirs, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert ours.getvalue() == theirs.getvalue()


def test_pack_is_deterministic_and_keeps_the_original_bytes(photos, tmp_path):
    pack(photos, tmp_path / "a", SHARD_MB)
    pack(photos, tmp_path / "b", SHARD_MB)
    assert file_or_tree_bytes(tmp_path / "a") == file_or_tree_bytes(tmp_path / "b")
    members = {}
    for shard in sorted((tmp_path / "a").glob("*.tar")):
        with tarfile.open(shard) as archive:
            for info in archive:
                assert (info.mtime, info.uid, info.gid, info.uname, info.mode) == (0, 0, 0, "", 0o644)
                members[info.name] = archive.extractfile(info).read()
    assert members["cat/IMG.2024.JPG"] == (photos / "cat/IMG.2024.JPG").read_bytes()
    assert members["cat/broken.png"] == (photos / "cat/broken.png").read_bytes()  # ingest skips it
    assert "cat/notes.txt" not in members  # not an image: left out, as ingest leaves it out
    record = json.loads(members["cat/IMG.json"])
    assert record["label"] == "cat" and set(record) == {"label", "group", "split", "site"}
    assert json.loads(members["dog/3.json"])["group"] == ""  # unlisted in metadata.csv
    assert (tmp_path / "a" / "classes.txt").read_text() == "bird\ncat\ndog\n"


def test_versions_touch_only_the_shards_they_change(photos, tmp_path, workdir):
    shards = tmp_path / "shards"
    pack(photos, shards, SHARD_MB)
    first = shard_bytes(shards)
    assert len(first) > 4

    # Append: new files go into new shards, every old one keeps its bytes.
    for i in range(3):
        (photos / "cat" / f"new{i}.png").write_bytes(png(100 + i, (9, 9)))
    result = pack(photos, shards, SHARD_MB)
    after = shard_bytes(shards)
    assert {name: after[name] for name in first} == first
    assert result.new and not result.rewritten and not result.removed
    assert ingested(workdir, shards, workers=2) == ingested(workdir, photos)

    # A changed file, a deleted one, a relabel (moved to another class folder): the shards that
    # held them are rewritten in place (or removed when emptied), the moved file goes into a new
    # shard, every other shard keeps its bytes.
    touched = ("cat/1.png", "dog/2.png", "dog/5.png")
    holding = {shard.name for shard in shards.glob("*.tar") if set(names_in(shard)) & set(touched)}
    before = shard_bytes(shards)
    (photos / "cat" / "1.png").write_bytes(png(7, (10, 10)))
    (photos / "dog" / "2.png").unlink()
    shutil.move(photos / "dog" / "5.png", photos / "cat" / "5-moved.png")
    metadata = photos / "metadata.csv"
    lines = [
        line for line in metadata.read_text().splitlines() if not line.startswith(("dog/2.png", "dog/5.png"))
    ]
    metadata.write_text("\n".join([*lines, "cat/5-moved.png,indoor,,site0"]) + "\n")
    result = pack(photos, shards, SHARD_MB)
    after = shard_bytes(shards)
    assert set(result.rewritten) | set(result.removed) == holding
    assert set(result.kept) == set(before) - holding - {"classes.txt"}
    assert all(after[name] == before[name] for name in result.kept)
    assert len(result.new) == 1
    assert ingested(workdir, shards) == ingested(workdir, photos)


def test_pack_refusals_are_one_line(photos, tmp_path, capsys):
    def refused(*argv: str) -> str:
        assert cli.main(["pack", *argv]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "inside the folder it packs" in refused(str(photos), str(photos / "shards"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("mine")
    assert "holds notes.md, which curate pack did not write" in refused(str(photos), str(tmp_path / "other"))
    (photos / "cat" / "0.jpg").write_bytes(png(3))
    assert "cat/0.jpg and cat/0.png share the WebDataset key 'cat/0'" in refused(
        str(photos), str(tmp_path / "s")
    )
    (photos / "cat" / "0.jpg").unlink()
    (photos / "metadata.csv").write_text("path,label\ncat/0.png,dog\n")
    assert "column 'label' is a column curate writes itself" in refused(str(photos), str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_pack_command_says_what_it_did(photos, tmp_path, capsys):
    assert cli.main(["pack", str(photos), str(tmp_path / "s"), "--shard-mb", "1"]) == 0
    assert "curate pack: 21 images in 1 shards" in capsys.readouterr().out
    assert cli.main(["pack", str(photos), str(tmp_path / "s"), "--shard-mb", "1"]) == 0
    assert "(0 new, 0 rewritten, 1 unchanged, 0 removed)" in capsys.readouterr().out
