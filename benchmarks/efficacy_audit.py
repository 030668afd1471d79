"""Does the audit pay? ``python benchmarks/efficacy.py --audit``: a simulated reviewer audits a random
sample of clean's flags (as ``curate review --serve --audit N`` would ask), and clean acts only on
the bands whose audited precision clears ``clean.min_precision`` (``clean.act_when: audited``).

Cells: the demo with 10% class-conditional noise (``demo-cc10``), the demo with 30% uniform noise
(``demo-u30``), and ``hard-rgb``: an RGB ImageFolder of about 3,600 photos of the demo's digits in
random ink on random paper with grain (``benchmarks/_synthetic.py::hard_digits_folder``, drawn
anew for each seed, 20% class-conditional noise on the train split, true test labels, the truth
kept aside), where the from-scratch fold CNN is weak. Arms, each over the same seeds:

* ``naive``: no cleaning action, no rebalancing, no offline augmentation;
* ``keep_rebalance``: no cleaning action (``clean.action keep``), default rebalance and augment
  (hard-rgb only, as the two below: the demo cells compare the audited rule with the default);
* ``default``: params.yaml as it is, no audit (clean acts on every flag: today's default);
* ``audited50`` / ``audited100``: the default with an audit of 50 / 100 flags in the ledger;
* ``weighted100``: the soft alternative, ``clean.action: weight`` with the 100-flag audit: no
  flag dropped or relabelled, each weighted in the loss by the chance its label is right.

The reviewer answers from the true labels: a flip is relabelled to its true class, a correct label
kept; with ``--reviewer-error`` each answer is wrong (keep a flip, drop a correct label) at that
rate. Per band it prints the audited precision and its 95% interval against the band's actual
precision (the share of its flags that are true flips) and whether the interval covers it; per
arm the mean accuracy and worst-group accuracy with their standard errors over seeds and the
flags acted on (dropped or relabelled); then the issue's targets.

Run: ``python benchmarks/efficacy.py --audit [--cells hard-rgb demo-cc10 demo-u30] [--seeds 0 1 2 3 4]
[--audit-sizes 50 100] [--reviewer-error 0] [--min-precision 0.8] [--jobs 2]``; ``--min-precision``
sets ``clean.min_precision`` for the audited arms alone (the others are then fetched from ``--cache``).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._common import REPO
from benchmarks._synthetic import hard_digits_folder
from benchmarks.efficacy import _single_threaded, clean_train, run_pipeline
from curate.curation import audit
from curate.data import ledger
from curate.data.csvfile import csv_text
from curate.params import load_params

CELLS = {
    "demo-cc10": [{"ingest": {"demo": {"noise": "class_conditional", "label_noise": 0.1}}}],
    "demo-u30": [{"ingest": {"demo": {"noise": "uniform", "label_noise": 0.3}}}],
    "hard-rgb": [{"image": {"size": 28, "channels": 3}}],  # + its folder as ingest.source
}
ARMS = {
    "naive": {"clean": {"action": "keep"}, "rebalance": {"strategy": "none"}, "augment": {"copies": 0}},
    "keep_rebalance": {"clean": {"action": "keep"}},
    "default": {"clean": {"act_when": "always"}},
}
COVERAGE_MIN_AUDITED = 10  # (band, seed) cells with fewer audited flags are not judged for coverage


def run_cell_seed(job: tuple) -> dict:
    """Every arm of one (cell, seed): their figures, and per audit size the bands' estimates."""
    cell, seed, sizes, error, bar, root, cache, quiet = job
    root = root / f"{cell}-seed{seed}"
    common = [{"seed": seed}, *CELLS[cell]]
    truth = None
    if cell == "hard-rgb":
        source = cache / "sources" / f"hard-rgb-seed{seed}"  # a fixed path: ingest.source keys the cache
        if not (source / "metadata.csv").exists():
            truth_by_path = hard_digits_folder(source, seed=seed)
            (source.parent / f"hard-rgb-seed{seed}.json").write_text(json.dumps(truth_by_path))
        truth = json.loads((source.parent / f"hard-rgb-seed{seed}.json").read_text())
        common.append({"ingest": {"source": str(source.resolve())}})
    results: dict = {}
    for arm, override in ARMS.items():
        if cell != "hard-rgb" and arm == "keep_rebalance":
            continue  # the demo cells' targets compare the audited rule with the default only
        started = time.perf_counter()
        results[arm] = run_pipeline(root / arm, cache, [*common, override], quiet, truth)
        _say(cell, seed, arm, results[arm], started)
    flags = clean_train(root / "default", truth)
    for size in sizes:
        arm, started = f"audited{size}", time.perf_counter()
        decisions = f"data/review/audit-{size}-error{error:g}.csv"
        answers = simulate_reviewer(flags, seed, size, error)
        (root / arm / "data/review").mkdir(parents=True, exist_ok=True)
        (root / arm / decisions).write_text(csv_text(ledger.COLUMNS, answers))
        results[arm] = run_pipeline(
            root / arm, cache, [*common, {"clean": {"decisions": decisions, **bar}}], quiet, truth
        )
        results[arm]["bands"] = band_checks(root / arm, truth)
        _say(cell, seed, arm, results[arm], started)
    if cell != "hard-rgb":
        return results
    size, started = max(sizes), time.perf_counter()  # the soft alternative, on the largest audit
    arm, decisions = f"weighted{size}", f"data/review/audit-{size}-error{error:g}.csv"
    (root / arm / "data/review").mkdir(parents=True, exist_ok=True)
    (root / arm / decisions).write_text((root / f"audited{size}" / decisions).read_text())
    weighted = {"clean": {"decisions": decisions, "action": "weight"}}
    results[arm] = run_pipeline(root / arm, cache, [*common, weighted], quiet, truth)
    _say(cell, seed, arm, results[arm], started)
    return results


def simulate_reviewer(train: pd.DataFrame, seed: int, size: int, error: float) -> list[list[str]]:
    """The ledger lines of an audit of ``size`` of ``train``'s label flags, drawn as the review app
    draws them, answered from ``true_label``; each answer wrong at rate ``error``."""
    bands = load_params(REPO / "params.yaml").clean.audit_bands  # the template's, as every arm has it
    flags = train.loc[train["is_label_issue"], ["sample_id", "label_quality"]]
    chosen = audit.sample(audit.order(flags, seed, bands), size, bands)
    rng = np.random.default_rng([seed, size, 11])
    name_of = dict(zip(train["label"], train["label_name"], strict=False))
    rows = []
    by_id = train.set_index("sample_id")
    for sample_id, band in zip(chosen["sample_id"], chosen["band"], strict=True):
        given, true = by_id.at[sample_id, "given_label"], by_id.at[sample_id, "true_label"]
        mistaken = rng.random() < error
        if (given != true) != mistaken:  # the reviewer says the given label is wrong
            decision, label = ("relabel", name_of[true]) if given != true else ("drop", "")
        else:
            decision, label = "keep", ""
        rows.append([sample_id, "", decision, label, "simulated", "", ledger.band_label(int(band), bands)])
    return rows


def band_checks(folder: Path, truth: dict | None) -> list[dict]:
    """Per band: the audit's estimate (clean's details) against the band's actual precision."""
    details = json.loads((folder / "reports/details/clean.json").read_text())
    train = clean_train(folder, truth)
    checks = []
    for band in details["audit_bands"]:
        rows = train[train["audit_band"] == band["band"]]
        actual = float((rows["given_label"] != rows["true_label"]).mean()) if len(rows) else float("nan")
        checks.append(band | {"actual": actual})
    return checks


def _say(cell: str, seed: int, arm: str, figures: dict, started: float) -> None:
    print(
        f"{cell} seed {seed} {arm:<15} accuracy {figures['accuracy']:.4f}  worst group "
        f"{figures['worst_group_accuracy']:.4f}  acted on {figures['acted_on']}  "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (0 with one value)."""
    if len(values) < 2:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def report(cell: str, per_seed: list[dict], sizes: list[int]) -> None:
    """The cell's table: per arm the means with standard errors, per audited arm and band the
    estimate against the actual precision; then the issue's targets."""
    arms = list(per_seed[0])
    print(f"\n{cell}: mean ± standard error over {len(per_seed)} seeds")
    print(f"{'arm':<16}{'accuracy':>18}{'worst group':>18}{'acted on':>10}{'flagged':>9}{'detect P':>9}")
    mean = {}
    for arm in arms:
        acc = mean_se([r[arm]["accuracy"] for r in per_seed])
        worst = mean_se([r[arm]["worst_group_accuracy"] for r in per_seed])
        mean[arm] = (acc[0], worst[0])
        acted = statistics.fmean(r[arm]["acted_on"] for r in per_seed)
        flagged = statistics.fmean(r[arm]["flagged"] for r in per_seed)
        precision = statistics.fmean(r[arm]["detect_precision"] for r in per_seed)
        print(f"{arm:<16}{acc[0]:>10.4f} ± {acc[1]:.4f}{worst[0]:>10.4f} ± {worst[1]:.4f}{acted:>10.0f}"
              f"{flagged:>9.0f}{precision:>9.3f}")  # fmt: skip
    covered = judged = 0
    for size in sizes:
        print(f"\naudited{size}: per band, estimate [95% interval] vs actual precision, by seed")
        for seed_index, result in enumerate(per_seed):
            cells = []
            for band in result[f"audited{size}"]["bands"]:
                inside = band["low"] <= band["actual"] <= band["high"]
                if band["counted"] >= COVERAGE_MIN_AUDITED:
                    judged += 1
                    covered += inside
                interval = f"[{band['low']:.2f},{band['high']:.2f}]"
                cells.append(
                    f"b{band['band']} {band['confirmed']}/{band['counted']} {interval} "
                    f"vs {band['actual']:.2f}{'' if inside else ' MISS'}"
                )
            print(f"  seed #{seed_index}: " + "; ".join(cells))
    print()
    if judged:
        share = covered / judged
        verdict = "pass" if share >= 0.9 else "FAIL"
        print(f"{verdict}  {cell}: intervals cover the actual band precision in {covered}/{judged} = "
              f"{share:.0%} of (band, seed) cells with >= {COVERAGE_MIN_AUDITED} audited flags")  # fmt: skip
    for text, passed in targets(cell, mean):
        print(f"{'pass' if passed else 'FAIL'}  {cell}: {text}")


def targets(cell: str, mean: dict) -> list[tuple[str, bool]]:
    """The issue's targets on one cell's means (accuracy, worst group), in points."""
    if "audited100" not in mean:
        return []

    def gain(arm: str, over: str, key: int) -> float:  # judged at the precision printed
        return round(100 * (mean[arm][key] - mean[over][key]), 2)

    if cell == "hard-rgb":
        checks = [
            (f"audited100 accuracy >= keep_rebalance: {gain('audited100', 'keep_rebalance', 0):+.2f} points",
             gain("audited100", "keep_rebalance", 0) >= 0),
            (f"audited100 accuracy >= naive: {gain('audited100', 'naive', 0):+.2f} points",
             gain("audited100", "naive", 0) >= 0),
            (f"audited100 worst group >= naive + 2 points: {gain('audited100', 'naive', 1):+.2f}",
             gain("audited100", "naive", 1) >= 2),
        ]  # fmt: skip
        for arm in ("weighted100",):  # the soft alternative, against the same bars
            if arm in mean:
                checks.append((f"({arm}: accuracy {gain(arm, 'naive', 0):+.2f}, worst group "
                               f"{gain(arm, 'naive', 1):+.2f} points over naive)", True))  # fmt: skip
        return checks
    accuracy, worst = gain("audited100", "default", 0), gain("audited100", "default", 1)
    return [
        (f"audited100 no worse than default by more than 0.2 points: accuracy {accuracy:+.2f}, worst group "
         f"{worst:+.2f}", min(accuracy, worst) >= -0.2),
    ]  # fmt: skip


def main(args, root: Path, cache: Path) -> None:
    """Every (cell, seed), in parallel processes with ``--jobs`` > 1; each cell's table at the end."""
    bar = {} if args.min_precision is None else {"min_precision": args.min_precision}  # the audited arms'
    jobs = [
        (cell, seed, args.audit_sizes, args.reviewer_error, bar, root, cache, not args.verbose)
        for cell in args.cells
        for seed in args.seeds
    ]
    if args.jobs <= 1:
        results = [run_cell_seed(job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.jobs, initializer=_single_threaded) as pool:
            results = list(pool.map(run_cell_seed, jobs))
    for index, cell in enumerate(args.cells):
        report(cell, results[index * len(args.seeds) : (index + 1) * len(args.seeds)], args.audit_sizes)
