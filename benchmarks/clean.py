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

**At scale** (``--rows N ...``): the clean stage alone (``python -m curate.stages.clean``, its wall
time and peak RSS from ``wait4``) on N made-up train rows (``benchmarks/_synthetic.py``
``clean_project``: 64-d embeddings of 10 classes, 10% flipped labels, 1% near-duplicates, 0.2%
exact copies, 0.2% outliers; 8 px images) and N / 20 test rows. ``--agreement`` then builds the
kNN graph both ways on the same rows (``clean.neighbour_search`` exact and approximate) and
prints how far the approximate one moves what clean finds: near-duplicate pairs (two rows in one
set) and outliers the exact graph finds that the approximate one finds too (recall), those only it
finds, and with ``clean.knn_weight`` 0.3 the label issues that change. Targets: clean <= 60 s at
96,000 rows; <= 10 min and <= 6 GiB at 1,000,000; recall of pairs and outliers >= 0.98.

    python benchmarks/clean.py [--noise uniform class_conditional rgb] [--levers] [-S folds.epochs=12]
    python benchmarks/clean.py --rows 96000 --agreement
    nohup python benchmarks/clean.py --rows 1000000 > clean-1m.log 2>&1 &
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
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
from benchmarks._synthetic import clean_project, make_folder  # noqa: E402
from curate.curation import label_issues, neighbours  # noqa: E402
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
SCALE_TARGETS = {96_000: (60.0, None), 1_000_000: (600.0, 6 * 2**30)}  # rows: (seconds, peak RSS)
TARGET_RECALL = 0.98  # exact graph's near-duplicate pairs and outliers the approximate one finds
MOVED_KNN_WEIGHT = 0.3


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
    graph = neighbours.build(np.load("data/folds/embeddings.npy"), knn_k)
    grid = {}
    for calibrate in CALIBRATIONS:
        for weight in KNN_WEIGHTS:
            probs = label_issues.evidence(
                pred_probs, labels, fold_of, graph, calibrate=calibrate, knn_weight=weight, knn_k=knn_k
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


def run_stage(folder: Path) -> dict:
    """``python -m curate.stages.clean`` in ``folder``: its wall and CPU time, peak RSS and report size."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "curate.stages.clean"], cwd=folder)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the clean stage failed in {folder}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # a loaded machine stretches the wall, not this
        "peak_rss": usage.ru_maxrss * 1024,
        "html": (folder / "reports/clean.html").stat().st_size,
    }


def agreement(made: dict[str, np.ndarray], params_file: Path) -> dict:
    """The approximate graph against the exact one on the same rows: near-duplicate pairs and
    outliers (recall, and those only the approximate graph finds), and the label issues that
    change with ``clean.knn_weight`` :data:`MOVED_KNN_WEIGHT`."""
    settings = load_params(params_file).clean
    labels, k = made["given"], max(neighbours.DATALAB_K, settings.knn_k)
    found = {}
    for search in ("exact", "approximate"):
        started = time.perf_counter()
        graph = neighbours.build(made["embeddings"], k, search)
        seconds = time.perf_counter() - started
        checks = label_issues.duplicates_and_outliers(graph)
        probs = label_issues.evidence(
            made["pred_probs"], labels, made["folds"], graph, calibrate=settings.calibrate,
            knn_weight=MOVED_KNN_WEIGHT, knn_k=settings.knn_k,
        )  # fmt: skip
        flagged, _ = label_issues.find_issues(
            labels, probs, filter_by=settings.filter_by, frac_noise=settings.frac_noise,
            min_examples_per_class=settings.min_examples_per_class, rank_by=settings.rank_by,
        )  # fmt: skip
        found[search] = {"seconds": seconds, "checks": checks, "flagged": flagged, "graph": graph}
    exact, approximate = found["exact"], found["approximate"]
    pairs = _pairs(
        exact["checks"]["duplicate_set"].to_numpy(), approximate["checks"]["duplicate_set"].to_numpy()
    )
    outliers = exact["checks"]["is_outlier"].to_numpy(), approximate["checks"]["is_outlier"].to_numpy()
    moved = exact["flagged"] != approximate["flagged"]
    same_rows = (exact["graph"].rows(k) == approximate["graph"].rows(k)).all(axis=1)
    return {
        "rows": len(labels),
        "k": k,
        "exact_seconds": exact["seconds"],
        "approximate_seconds": approximate["seconds"],
        "same_neighbours": float(same_rows.mean()),
        "pairs": pairs,
        "outliers": _recall(*outliers),
        "knn_weight": MOVED_KNN_WEIGHT,
        "flagged_exact": int(exact["flagged"].sum()),
        "flags_changed": int(moved.sum()),
        "flags_changed_share": float(moved.sum() / max(exact["flagged"].sum(), 1)),
    }


def _pairs(exact: np.ndarray, approximate: np.ndarray) -> dict:
    """Pairs of rows in one near-duplicate set by the exact graph, how many of them are in one
    set by the approximate graph too, and the pairs only the approximate graph puts together."""
    table = pd.DataFrame({"exact": exact, "approximate": approximate})

    def pairs(columns: list[str], frame: pd.DataFrame) -> int:
        sizes = frame.groupby(columns).size().to_numpy()
        return int((sizes * (sizes - 1) // 2).sum())

    found = pairs(["exact"], table[table["exact"] >= 0])
    both = pairs(["exact", "approximate"], table[(table["exact"] >= 0) & (table["approximate"] >= 0)])
    only = pairs(["approximate"], table[table["approximate"] >= 0]) - both
    return {"exact": found, "both": both, "recall": both / found if found else 1.0, "approximate_only": only}


def _recall(exact: np.ndarray, approximate: np.ndarray) -> dict:
    both = int((exact & approximate).sum())
    return {"exact": int(exact.sum()), "both": both, "recall": both / exact.sum() if exact.sum() else 1.0,
            "approximate_only": int((approximate & ~exact).sum())}  # fmt: skip


def scale(rows: int, overrides: list[dict], with_agreement: bool) -> dict:
    """The clean stage on ``rows`` made-up train rows in a temp folder, then (``with_agreement``)
    the approximate graph against the exact one."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        made = clean_project(Path(tmp), rows, overrides)
        print(f"\n{rows:,} train rows made up in {time.perf_counter() - started:.0f} s", flush=True)
        result = {"rows": rows, "stage": run_stage(Path(tmp))}
        details = json.loads((Path(tmp) / "reports/details/clean.json").read_text())
        result["search"] = f"{details['neighbour_search']}, k {details['neighbour_k']}"
        report_scale(result)
        if with_agreement:
            result["agreement"] = agreement(made, Path(tmp) / "params.yaml")
            report_agreement(result["agreement"])
        return result


def report_scale(result: dict) -> None:
    rows, stage = result["rows"], result["stage"]
    rss, html, cpu = stage["peak_rss"] / 2**30, stage["html"], stage["cpu_seconds"]
    print(f"clean stage at {rows:,} train rows ({result['search']}): {stage['seconds']:.1f} s "
          f"({cpu:.1f} s CPU), peak RSS {rss:.2f} GiB, reports/clean.html {html:,} bytes")  # fmt: skip
    seconds, rss = SCALE_TARGETS.get(rows, (None, None))
    if seconds is not None:
        verdict = "PASS" if stage["seconds"] <= seconds else "FAIL"
        print(f"target <= {seconds:.0f} s: ratio {stage['seconds'] / seconds:.2f}: {verdict}")
    if rss is not None:
        verdict = "PASS" if stage["peak_rss"] <= rss else "FAIL"
        print(f"target <= {rss / 2**30:.0f} GiB: ratio {stage['peak_rss'] / rss:.2f}: {verdict}")


def report_agreement(figures: dict) -> None:
    print(f"\nexact against approximate kNN graph, {figures['rows']:,} rows, k {figures['k']}: "
          f"exact {figures['exact_seconds']:.1f} s, approximate {figures['approximate_seconds']:.1f} s, "
          f"the same {figures['k']} neighbours for {figures['same_neighbours']:.2%} of the rows")  # fmt: skip
    print(f"{'':28s} {'exact':>8s} {'both':>8s} {'recall':>7s} {'approx only':>12s}")
    for name, key in (("near-duplicate pairs", "pairs"), ("outliers", "outliers")):
        row = figures[key]
        verdict = "PASS" if row["recall"] >= TARGET_RECALL else "FAIL"
        counts = f"{row['exact']:8,d} {row['both']:8,d} {row['recall']:7.4f} {row['approximate_only']:12,d}"
        print(f"{name:28s} {counts}  target >= {TARGET_RECALL}: {verdict}")
    changed, flagged = figures["flags_changed"], figures["flagged_exact"]
    print(f"label issues with knn_weight {figures['knn_weight']}: {flagged:,} flagged on the exact graph, "
          f"{changed:,} change on the approximate one ({figures['flags_changed_share']:.2%} of the flagged, "
          f"{changed / figures['rows']:.3%} of the rows)")  # fmt: skip


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
    parser.add_argument(
        "--rows", type=int, nargs="+", help="the clean stage alone on this many made-up train rows"
    )
    parser.add_argument(
        "--agreement", action="store_true", help="with --rows: exact against approximate search"
    )
    args = parser.parse_args()
    overrides = [parse_override(text) for text in args.overrides]
    results = []
    if args.rows:
        results = [scale(rows, overrides, args.agreement) for rows in args.rows]
        if args.json:
            args.json.write_text(json.dumps({"overrides": args.overrides, "results": results}, indent=1))
        return
    for noise in args.noise:
        results.append(run(noise, overrides, args.rgb_per_class, args.levers, args.keep))
        report(results[-1])
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "results": results}, indent=1))


if __name__ == "__main__":
    main()
