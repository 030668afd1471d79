"""One sample followed through a revision's tables (:func:`trace`): a section of lines per stage,
its fate in one line, and its augmented copies. Pure: it formats what the tables recorded, no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel

from curate.data.paths import PRED_PROBS
from curate.params import RebalanceParams
from curate.people.trace_tables import CONFUSION, TABLES, Tables

DONE = {"drop": "dropped", "relabel": "relabelled", "keep": "kept", "none": "kept"}  # clean's actions
# Columns a table of another stage (one added to dvc.yaml) shows without being asked: the rest.
SHOWN_ELSEWHERE = {"sample_id", "path", "row", "store"}
TWIN_SUFFIX = re.compile(r"-\d+$")  # content_ids' suffix for the 2nd, 3rd, ... file of identical bytes


@dataclass
class Section:
    stage: str
    source: str  # the file the lines come from
    lines: list[str]


@dataclass
class Trace:
    sample_id: str
    path: str
    rev: str
    summary: str  # the sample's fate in one line
    notable: bool  # dropped, relabelled, flagged or mispredicted: the verdict warns
    sections: list[Section]
    children: pd.DataFrame  # its augmented copies (rows of data/augmented/samples.parquet)
    sample: pd.Series  # its data/raw row
    note: str = ""  # how the query was resolved, when not directly


def trace(tables: Tables, sample: pd.Series, note: str = "") -> Trace:
    """Follow ``sample`` (a raw row) through every stage's table; pure, no I/O."""
    names = tables.names
    sample_id = sample["sample_id"]
    clean, fate, decision = _clean(tables, _row(tables.frames["clean"], sample_id), names)
    sections = [_ingest(tables.frames["ingest"], sample, names), clean]
    for stage, build in (("rebalance", _rebalance), ("augment", _augment)):
        row = _row(tables.frames[stage], sample_id)
        sections.append(build(tables, row) if row is not None else _absent(tables, stage, fate))
    evaluated, right = _evaluate(tables, sample, fate)
    sections.append(evaluated)
    sections += [_listed(stage, path, frame, sample_id) for (stage, path), frame in tables.others.items()]
    children = _children(tables.frames["augment"], sample_id)
    if right is not None:
        summary = f"test sample: {evaluated.lines[0]}"
    else:
        summary = decision or _training_summary(tables, sample_id, len(children))
    return Trace(
        sample_id=sample_id,
        path=str(sample["path"]),
        rev=tables.rev,
        summary=summary,
        notable=decision is not None or right is False,
        sections=sections,
        children=children,
        note=note,
        sample=sample,
    )


def _listed(stage: str, path: str, frame: pd.DataFrame, sample_id: str) -> Section:
    """A table trace knows nothing of: the sample's row, each column as it is, or its absence."""
    row = _row(frame, sample_id)
    if row is None:
        return Section(stage, path, [f"not listed (of {len(frame):,} rows)"])
    shown = [f"{column}: {row[column]}" for column in frame.columns if column not in SHOWN_ELSEWHERE]
    return Section(stage, path, [f"listed: {', '.join(shown)}" if shown else "listed"])


def _row(frame: pd.DataFrame | None, sample_id: str) -> pd.Series | None:
    if frame is None:
        return None
    rows = frame[frame["sample_id"] == sample_id]
    return rows.iloc[0] if len(rows) else None


def _children(frame: pd.DataFrame | None, sample_id: str) -> pd.DataFrame:
    if frame is None:
        return pd.DataFrame(columns=["sample_id", "row", "recipe", "weight"])
    return frame[(frame["parent_id"] == sample_id).fillna(False).to_numpy(dtype=bool)]


def _absent(tables: Tables, stage: str, fate: str | None) -> Section:
    """The line for a stage whose table does not list the sample (or does not exist)."""
    path = str(TABLES[stage])
    if tables.frames[stage] is None:
        line = (
            f"{path} is not in {tables.rev} (not reproduced, or its data is in no cache: dvc repro, dvc pull)"
        )
    elif fate is not None:
        line = f"not in {path}: {fate}"
    else:
        line = f"not in {path}, for no reason the earlier tables record (stale outputs? dvc repro)"
    return Section(stage, path, [line])


def _ingest(raw: pd.DataFrame, sample: pd.Series, names: list[str]) -> Section:
    lines = [
        f"source file: {sample['path']}",
        f"label {sample['label_name']}, group {sample['group']}, split {sample['split']}",
    ]
    # Identical bytes share a content hash; ingest tells the files apart with -1, -2 suffixes.
    digest = TWIN_SUFFIX.sub("", sample["sample_id"])
    twins = raw[(raw["sample_id"].astype(str).str.replace(TWIN_SUFFIX, "", regex=True) == digest).to_numpy()]
    others = [
        f"{row['path']} ({row['sample_id']})"
        for _, row in twins.iterrows()
        if row["sample_id"] != sample["sample_id"]
    ]
    if others:
        lines.append(f"identical bytes: {', '.join(others)}")
    if "true_label" in sample.index and pd.notna(sample["true_label"]):
        true = int(sample["true_label"])
        if true != int(sample["label"]):
            lines.append(f"demo label noise: ingest flipped its label; the true class is {names[true]}")
    return Section("ingest", str(TABLES["ingest"]), lines)


def _clean(tables: Tables, row: pd.Series | None, names: list[str]) -> tuple[Section, str | None, str | None]:
    """The clean section, the sample's fate if clean removed it, and a summary if clean acted on it."""
    path = str(TABLES["clean"])
    if row is None:
        return _absent(tables, "clean", None), None, None
    if row["split"] != "train":
        return Section("clean", path, ["test sample: the test split is never cleaned"]), None, None
    given, predicted = int(row["given_label"]), int(row["predicted_label"])
    lines = [
        f"label quality {row['label_quality']:.3f} (cleanlab, low is suspicious); "
        f"flagged as a label issue: {'yes' if row['is_label_issue'] else 'no'}",
        f"predicted {names[predicted]} with probability {row['predicted_confidence']:.3f}",
        _given_probability(tables, row, names[given]),
    ]
    if row["duplicate_set"] >= 0:
        lines.append(
            f"near-duplicate set {int(row['duplicate_set'])} (cleanlab Datalab on the shared embeddings)"
        )
    if row["is_outlier"]:
        lines.append(f"outlier, score {row['outlier_score']:.3f}: listed, not removed")
    why = _recorded_reason(row)
    lines.append(f"action {row['action']}: {why}")
    fate = "dropped by clean" if row["action"] == "drop" else None
    decided = row["action"] != "none" or bool(row["is_label_issue"])
    decision = f"{DONE[row['action']]} by clean: {why}" if decided else None
    return Section("clean", path, lines), fate, decision


def _recorded_reason(row: pd.Series) -> str:
    """Why clean took its action, as clean recorded it (``action_reason``)."""
    if "action_reason" not in row.index or pd.isna(row["action_reason"]):
        return "not recorded (a clean stage from before action_reason: dvc repro)"
    return str(row["action_reason"])


def _given_probability(tables: Tables, row: pd.Series, given_name: str) -> str:
    """pred_probs[pred_row, given_label]: how likely a model that never saw the sample finds its label."""
    probs, index = tables.pred_probs, int(row["pred_row"])
    if probs is None:
        return f"out-of-fold probability of the given label: {PRED_PROBS} is not in {tables.rev}"
    if not 0 <= index < len(probs) or not 0 <= int(row["given_label"]) < probs.shape[1]:
        return (
            f"out-of-fold probability of the given label: {PRED_PROBS} does not match the table (dvc repro)"
        )
    value = float(probs[index, int(row["given_label"])])
    return f"out-of-fold probability of the given label {given_name}: {value:.3f} (fold {int(row['fold'])})"


def _param(tables: Tables, section: type[BaseModel], key: str) -> object:
    """A param at the traced revision; its default where that params.yaml leaves it out."""
    return tables.params.get(key, getattr(section(), key.split(".", 1)[1]))


def _rebalance(tables: Tables, row: pd.Series) -> Section:
    path = str(TABLES["rebalance"])
    if row["split"] != "train":
        return Section("rebalance", path, ["test sample: passed through (weight 1, copies 1)"])
    weight, copies = float(row["weight"]), int(row["copies"])
    strategy = _param(tables, RebalanceParams, "rebalance.strategy")
    lines = [f"weight {weight:.3f}, copies {copies} (rebalance.strategy {strategy}; weights have mean 1)"]
    if copies == 0:
        lines.append("under-sampled: copies 0, so it does not train")
    return Section("rebalance", path, lines)


def _augment(tables: Tables, row: pd.Series) -> Section:
    path = str(TABLES["augment"])
    if row["split"] != "train":
        return Section("augment", path, ["test sample: passed through, no copies"])
    children = _children(tables.frames["augment"], row["sample_id"])
    weight = float(row["weight"])
    if children.empty:
        return Section("augment", path, [f"no augmented copies; trains with weight {weight:.3f}"])
    ids = children["sample_id"].tolist()
    span = ids[0] if len(ids) == 1 else f"{ids[0]} to {ids[-1]}"
    copies = "copy" if len(ids) == 1 else "copies"
    lines = [f"{len(ids)} augmented {copies} ({span}); its weight is shared with them: {weight:.3f} each"]
    lines += [f"recipe: {_recipe(text)}" for text in dict.fromkeys(children["recipe"].astype(str))]
    return Section("augment", path, lines)


def _recipe(text: str) -> str:
    """The augment stage's JSON recipe as ``Name(arg=value, ...)`` steps; the raw text if not JSON."""
    try:
        steps = [(step["name"], sorted(step["args"].items())) for step in json.loads(text)]
    except (ValueError, TypeError, KeyError, AttributeError):
        return text
    return " then ".join(
        f"{name}({', '.join(f'{key}={_plain(value)}' for key, value in args)})" for name, args in steps
    )


def _plain(value: object) -> str:
    # Lists as tuples: square brackets would be escaped for Markdown and print as entities.
    return f"({', '.join(map(str, value))})" if isinstance(value, list) else str(value)


def _evaluate(tables: Tables, sample: pd.Series, fate: str | None) -> tuple[Section, bool | None]:
    """The test prediction, and whether it was right (None: not evaluated)."""
    path = str(CONFUSION)
    augmented = tables.frames["augment"]
    if sample["split"] != "test":
        reason = fate or "a train sample (evaluate scores the test split)"
        return Section("evaluate", path, [f"not evaluated: {reason}"]), None
    if tables.confusion is None or augmented is None:
        return Section("evaluate", path, [f"{path} is not in {tables.rev} (dvc repro, or dvc pull)"]), None
    # evaluate writes one {"actual", "predicted"} record per test row of data/augmented, in that
    # table's order (and nothing else identifies a record): the position is the link.
    test_ids = augmented.loc[augmented["split"] == "test", "sample_id"].tolist()
    if sample["sample_id"] not in test_ids or len(test_ids) != len(tables.confusion):
        stale = f"{path} has {len(tables.confusion)} records for {len(test_ids)} test rows: stale (dvc repro)"
        return Section("evaluate", path, [stale]), None
    record = tables.confusion[test_ids.index(sample["sample_id"])]
    if record.get("actual") != sample["label_name"]:
        mismatch = (
            f"{path} says actual {record.get('actual')}, the table {sample['label_name']}: stale (dvc repro)"
        )
        return Section("evaluate", path, [mismatch]), None
    right = record.get("predicted") == record["actual"]
    line = f"predicted {record.get('predicted')}, actual {record['actual']}: {'right' if right else 'wrong'}"
    return Section("evaluate", path, [line]), right


def _training_summary(tables: Tables, sample_id: str, n_children: int) -> str:
    row = _row(tables.frames["augment"], sample_id)
    if row is None:
        return "not in the final training table"
    weight = float(row["weight"]) * int(row["copies"])
    if weight == 0:
        return "does not train: rebalance gave it copies 0"
    return f"trains with weight {weight:.3f} and {n_children} augmented copies"
