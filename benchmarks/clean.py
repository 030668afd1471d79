"""Benchmark of label-issue detection (the folds and clean stages) under three noise models.

* ``uniform``: the default demo, 10% of train labels flipped to any other class;
* ``class_conditional``: the demo with ``ingest.demo.noise: class_conditional``, look-alike
  digits filed under each other (4>9 25%, 9>4 20%, 3>5 20%, 5>3 15%, 7>1 15%, 1>7 10%,
  2>7 10%), none elsewhere: what annotators do;
* ``rgb``: a bring-your-own ImageFolder of colour photos at 32 px (``benchmarks/_synthetic.py``:
  drawn shapes on coloured, textured backgrounds, groups ``studio`` 80% / ``field`` 20%), with
  ``--rgb-per-class`` images of each of 4 classes (default 400) and 20% of ``disc`` and
  ``stripes_h`` filed under their look-alike (``ring``, ``stripes_v``), none elsewhere.

For each it runs ingest, then times folds + clean (the stages' ``main()``s, in a temp folder),
and prints precision, recall, F1 and recall per group against the known flips, the wall
time, and beside it the baseline a user would try first: cleanlab ``find_label_issues`` on
logistic-regression ``pred_probs`` (``cross_val_predict`` on raw pixels, same folds and
``filter_by``). ``--levers`` also scores, on the same out-of-fold ``pred_probs``, every
``filter_by`` x calibration (none, per-fold temperature) x kNN evidence weight x thresholds
(pooled, per group): the levers that cost no training. Levers that do (``folds.epochs``, ``folds.ensemble``,
``folds.augment``) are measured by running again with ``-S folds.ensemble=2`` etc.

Targets (issue 14): class_conditional F1 >= 0.90, rgb F1 >= 0.88, uniform F1 >= 0.95,
folds + clean on the default demo <= 40 s, recall of every group within 10 points.

    python benchmarks/clean.py [--noise uniform class_conditional rgb] [--levers] [-S folds.epochs=12]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/: the synthetic RGB folder and the params helper
from benchmarks._common import parse_override, set_params  # noqa: E402
from benchmarks._synthetic import make_folder  # noqa: E402
from curate.curation import label_issues  # noqa: E402
from curate.data.image_rows import read_images  # noqa: E402
from curate.params import load_params  # noqa: E402
from curate.stages import clean, folds, ingest  # noqa: E402

NOISE_MODELS = ("uniform", "class_conditional", "rgb")
TARGET_F1 = {"uniform": 0.95, "class_conditional": 0.90, "rgb": 0.88}
TARGET_SECONDS = 40.0  # folds + clean on the default demo
TARGET_GROUP_GAP = 0.10  # recall, best group minus worst group
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
CALIBRATIONS = ("none", "temperature")
KNN_WEIGHTS = (0.0, 0.5)
THRESHOLDS = ("pooled", "per_group")


def prepare(noise: str, folder: Path, overrides: list[dict], per_class: int) -> dict[str, str]:
    """params.yaml and the source data for ``noise`` in ``folder`` (the cwd), then ingest; the
    true class of each source path of the RGB folder (the demo has a ``true_label`` column)."""
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    truth: dict[str, str] = {}
    if noise == "rgb":
        made = make_folder(folder / "data" / "source", per_class, seed=0, noise=0.2, sizes=(32,))
        truth = {path: facts["true_label"] for path, facts in made.items()}
        set_params(
            folder / "params.yaml", image={"size": 32, "channels": 3}, ingest={"source": "data/source"}
        )
    else:
        (folder / "data" / "demo").mkdir(parents=True)
        set_params(folder / "params.yaml", ingest={"demo": {"noise": noise}})
    for override in overrides:
        set_params(folder / "params.yaml", **override)
    ingest.main([])
    return truth


def scores(flagged: np.ndarray, noisy: np.ndarray, groups: np.ndarray) -> dict:
    """Precision, recall, F1, and recall per group (flips caught / flips)."""
    figures = label_issues.detection_scores(flagged, noisy)
    figures["recall_by_group"] = {
        str(g): float((flagged & noisy & (groups == g)).sum() / max((noisy & (groups == g)).sum(), 1))
        for g in sorted(set(groups))
    }
    figures["flagged"] = int(flagged.sum())
    return figures


def baseline(train: pd.DataFrame, labels: np.ndarray, filter_by: str, n_folds: int, seed: int) -> np.ndarray:
    """cleanlab on logistic-regression out-of-fold pred_probs from the raw pixels."""
    pixels = np.asarray(read_images("data/raw/images")[train["row"].to_numpy()], dtype=np.float32)
    pixels = pixels.reshape(len(train), -1) / 255.0
    strata = (train["group"] + ":" + train["label_name"]).to_numpy()
    splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(pixels, strata)
    probs = cross_val_predict(
        LogisticRegression(max_iter=200), pixels, labels, cv=splits, method="predict_proba"
    )
    return find_label_issues(labels, probs, filter_by=filter_by)


def lever_grid(labels: np.ndarray, noisy: np.ndarray, groups: np.ndarray, knn_k: int) -> dict:
    """Every filter_by x calibration x kNN weight x thresholds, scored on the folds stage's outputs."""
    pred_probs = np.load("data/folds/pred_probs.npy")
    fold_of = np.load("data/folds/folds.npy")
    embeddings = np.load("data/folds/embeddings.npy")
    grid = {}
    for calibrate in CALIBRATIONS:
        for weight in KNN_WEIGHTS:
            probs = label_issues.evidence(
                pred_probs, labels, fold_of, embeddings, calibrate=calibrate, knn_weight=weight, knn_k=knn_k
            )
            for filter_by in FILTERS:
                for thresholds in THRESHOLDS:
                    flagged, _ = label_issues.find_issues(
                        labels, probs, filter_by=filter_by, frac_noise=1.0, min_examples_per_class=1,
                        rank_by="self_confidence", groups=groups if thresholds == "per_group" else None,
                    )  # fmt: skip
                    name = f"{filter_by} / {calibrate} / knn {weight} / {thresholds}"
                    grid[name] = scores(flagged, noisy, groups)
    return grid


def run(noise: str, overrides: list[dict], per_class: int, levers: bool, keep: Path | None) -> dict:
    """One noise model in a temp folder: the stages' figures, the baseline's, the lever grid."""
    with tempfile.TemporaryDirectory() as tmp:
        previous = Path.cwd()
        os.chdir(tmp)
        try:
            truth = prepare(noise, Path(tmp), overrides, per_class)
            started = time.perf_counter()
            folds.main([])
            clean.main([])
            seconds = time.perf_counter() - started
            params = load_params()
            samples = pd.read_parquet("data/clean/samples.parquet")
            train = samples[samples["split"] == "train"]
            labels = train["given_label"].to_numpy()
            if truth:
                noisy = (train["label_name"] != train["path"].map(truth)).to_numpy()
            else:
                noisy = (train["given_label"] != train["true_label"]).to_numpy()
            groups = train["group"].to_numpy()
            result = {"noise": noise, "n_train": len(train), "n_noisy": int(noisy.sum()), "seconds": seconds}
            result["stage"] = scores(train["is_label_issue"].to_numpy(), noisy, groups)
            started = time.perf_counter()
            flags = baseline(train, labels, params.clean.filter_by, params.folds.k, params.seed)
            result["baseline"] = scores(flags, noisy, groups) | {"seconds": time.perf_counter() - started}
            if levers:
                result["levers"] = lever_grid(labels, noisy, groups, params.clean.knn_k)
            if keep is not None:  # the data and the stages' outputs, to score other levers on later
                shutil.copytree(Path(tmp), keep / noise, dirs_exist_ok=True)
                (keep / noise / "noisy.npy").write_bytes(_npy(noisy))
            return result
        finally:
            os.chdir(previous)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def line(name: str, figures: dict, seconds: float | None) -> str:
    """One detector's row: name, wall time, precision, recall, F1, recall per group."""
    wall = f"{seconds:6.1f}" if seconds is not None else "     -"
    by_group = "  ".join(f"{g} {r:.3f}" for g, r in figures["recall_by_group"].items())
    return (f"{name:62s} {wall}  {figures['precision']:.3f}  {figures['recall']:.3f}  "
            f"{figures['f1']:.3f}  {by_group}")  # fmt: skip


def report(result: dict) -> None:
    noise = result["noise"]
    print(f"\n{noise}: {result['n_train']:,} train images, {result['n_noisy']} flipped labels")
    print(f"{'detector':62s} {'wall s':>6s}  {'prec':5s}  {'rec':5s}  {'F1':5s}  recall by group")
    print(line("folds + clean stages", result["stage"], result["seconds"]))
    print(line("baseline: logistic regression + cleanlab", result["baseline"], result["baseline"]["seconds"]))
    for name, figures in result.get("levers", {}).items():
        print(line(f"  {name}", figures, None))
    f1, base = result["stage"]["f1"], result["baseline"]["f1"]
    recalls = list(result["stage"]["recall_by_group"].values())
    gap = max(recalls) - min(recalls)
    target = TARGET_F1[noise]
    print(f"target F1 >= {target}: {f1:.3f} (ratio {f1 / target:.3f}, baseline {base:.3f}, "
          f"{f1 / base:.2f}x baseline): {'PASS' if f1 >= target else 'FAIL'}")  # fmt: skip
    print(f"target group recall gap <= {TARGET_GROUP_GAP:.2f}: {gap:.3f}: "
          f"{'PASS' if gap <= TARGET_GROUP_GAP else 'FAIL'}")  # fmt: skip
    if noise == "uniform":
        seconds = result["seconds"]
        verdict = "PASS" if seconds <= TARGET_SECONDS else "FAIL"
        print(f"target folds + clean <= {TARGET_SECONDS:.0f} s: {seconds:.1f} s "
              f"(ratio {seconds / TARGET_SECONDS:.2f}): {verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noise", nargs="+", default=list(NOISE_MODELS), choices=NOISE_MODELS)
    parser.add_argument("--rgb-per-class", type=int, default=400, help="images per class of the RGB folder")
    parser.add_argument("--levers", action="store_true", help="also score the no-training levers")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value for every run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", type=Path, help="keep each run's folder here, as <DIR>/<noise>")
    args = parser.parse_args()
    overrides = [parse_override(text) for text in args.overrides]
    results = []
    for noise in args.noise:
        results.append(run(noise, overrides, args.rgb_per_class, args.levers, args.keep))
        report(results[-1])
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "results": results}, indent=1))


if __name__ == "__main__":
    main()
