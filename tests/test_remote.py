"""A real DVC remote: ``dvc push`` from one clone and ``dvc pull`` into a fresh one, through an
S3-compatible server on loopback (moto in server mode, reached by dvc-s3 as any S3 endpoint).

The tiny profile is reproduced and committed in a template copy; the copy adds the remote as a
user would (the endpoint in ``.dvc/config``, in git; the keys in ``.dvc/config.local``, out of
git) and pushes. A ``git clone`` of it has no DVC cache: ``curate compare`` there reads the data
straight from the remote, ``dvc pull`` brings it into the workspace, ``dvc status`` has nothing to
do and every tracked file is the same bytes as in the first clone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import boto3
import dvc_s3  # noqa: F401  (the dvc push/pull plugin: pip install -e ".[s3]", in the dev extra)
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import ENV, GIT, run

pytestmark = [pytest.mark.slow, pytest.mark.full]  # 36 s: beside `pytest` in CI, with the other long runs

BUCKET = "curate-remote"
PREFIX = "curate"
# Dummy keys: moto accepts any. Real ones go the same ways (config.local or the environment).
KEY_ID, SECRET = "testing-key-id", "testing-secret-key"
SAMPLE_LEVEL = "Compared at the sample level"
NO_CHANGE = "0 added, 0 removed, 0 relabelled, 0 reweighted"


def s3_client(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )  # fmt: skip


@pytest.fixture
def tiny(tiny_copy):
    """The tiny profile reproduced and committed: this test's own copy of the session's run."""
    return tiny_copy


@pytest.fixture
def s3_endpoint():
    """An S3 server on a free loopback port holding one empty bucket; stopped after the test."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The tests' environment without any AWS setting of this machine (profiles, keys, region)."""
    env = {key: value for key, value in ENV.items() if not key.startswith("AWS_")}
    missing = str(tmp_path / "no-aws-config")
    return {**env, "AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing, **extra}


def tracked_outs(root: Path) -> dict[str, str]:
    """SHA-256 of every file DVC tracks with a cache (the data and models a pull must bring)."""
    listing = json.loads(run("dvc", "data", "status", "--granular", "--json", "--unchanged", cwd=root))
    names = [name for name in listing.get("unchanged", []) if (root / name).is_file()]
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in sorted(names)}


def test_push_then_pull_into_a_fresh_clone(tiny, s3_endpoint, tmp_path):
    env = isolated_env(tmp_path)
    run("dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/{PREFIX}", cwd=tiny, env=env)
    run("dvc", "remote", "modify", "storage", "endpointurl", s3_endpoint, cwd=tiny, env=env)
    run("dvc", "remote", "modify", "--local", "storage", "access_key_id", KEY_ID, cwd=tiny, env=env)
    run("dvc", "remote", "modify", "--local", "storage", "secret_access_key", SECRET, cwd=tiny, env=env)
    run(*GIT, "add", "-A", cwd=tiny)
    run(*GIT, "commit", "-q", "-m", "an S3 remote", cwd=tiny)
    # The keys stay out of git; the committed config names the bucket and endpoint, no local path.
    committed = run("git", "show", "HEAD:.dvc/config", cwd=tiny)
    assert f"s3://{BUCKET}/{PREFIX}" in committed and s3_endpoint in committed
    assert SECRET not in committed and KEY_ID not in committed and str(tiny) not in committed
    assert ".dvc/config.local" not in run("git", "ls-files", cwd=tiny)

    run("dvc", "push", cwd=tiny, env=env)
    assert json.loads(run("dvc", "status", "--cloud", "--json", cwd=tiny, env=env)) == {}
    outs = tracked_outs(tiny)
    assert {"data/raw/images/index.json", "data/balanced/samples.parquet", "models/model.pt"} <= set(outs)
    assert any(name.startswith("data/raw/images/") and name.endswith(".npy") for name in outs)  # segments
    stored = s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    assert stored["KeyCount"] >= len(outs)  # content-addressed objects in the bucket, one per file at least

    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(tiny), str(clone), cwd=tmp_path)
    assert not (clone / "data/raw/images").exists() and not (clone / ".dvc/cache").exists()
    # A user of the clone gives the keys through the environment (a CI job's secrets).
    keyed = isolated_env(tmp_path, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)

    # Before any pull, compare reads HEAD's sample table through DVC, from the remote.
    review = run("curate", "compare", "HEAD", "HEAD", cwd=clone, env=keyed)
    assert SAMPLE_LEVEL in review and NO_CHANGE in review

    run("dvc", "pull", cwd=clone, env=keyed)
    assert json.loads(run("dvc", "status", "--json", cwd=clone, env=keyed)) == {}
    assert tracked_outs(clone) == outs
    review = run("curate", "compare", cwd=clone, env=keyed)  # HEAD (the DVC cache) against the workspace
    assert SAMPLE_LEVEL in review and NO_CHANGE in review
    assert run("git", "status", "--porcelain", cwd=clone) == ""
