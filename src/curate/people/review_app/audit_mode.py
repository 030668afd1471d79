"""The review app's audit mode (``curate review --serve --audit N``).

The queue is the audit sample of the label flags (:func:`curate.curation.audit.sample`), in the
order people are asked; the filters do not apply (a filtered sample would no longer be the one
clean measures). A decision on a sampled flag is an audit line: the ledger's ``audit`` cell names
its band (``2 of 4``). Each answer carries the estimate as the clean stage will compute it from
the same ledger (:func:`curate.curation.audit.estimate`), band by band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from curate.curation import audit
from curate.data import ledger
from curate.errors import CurateError

DECIDED = ["decision", "label", "audit"]  # the columns estimate reads of a decision


@dataclass(frozen=True)
class Plan:
    """What ``--audit N`` asks for: ``size`` flags, under ``params.seed`` and ``clean.audit_bands``."""

    size: int
    seed: int
    bands: int


class Audit:
    """The audit of a flag table (:func:`curate.people.flags.flag_table`) and its estimate."""

    def __init__(self, flags: pd.DataFrame, plan: Plan) -> None:
        labels = flags.loc[flags["is_label"].to_numpy(), ["sample_id", "label_quality", "given_name"]]
        if labels.empty:
            raise CurateError("--audit: clean's table has no label flags to audit")
        labels = labels.astype({"sample_id": str}).rename(columns={"given_name": "given"})
        self.plan = plan
        self.ordered = ordered = audit.order(labels, plan.seed, plan.bands)  # once: a hash per flag
        chosen = audit.sample(ordered, plan.size, plan.bands)
        self.queue = flags.loc[chosen.index].reset_index(drop=True)  # the sample, in asking order
        self.band_of = dict(zip(chosen["sample_id"], chosen["band"], strict=True))
        self.sampled = chosen["band"].value_counts()
        columns = (ordered[name].tolist() for name in ("sample_id", "band", "rank"))  # lists: fast to zip
        self.place = {sid: (band, rank) for sid, band, rank in zip(*columns, strict=True)}
        extent = ordered.groupby("band")["label_quality"].agg(["size", "min", "max"])
        self.extent = extent.reindex(range(1, plan.bands + 1))  # a band without flags: NaN

    def cell(self, sample_id: str) -> str:
        """The ledger's audit cell of a decision on ``sample_id``: its band if sampled, else empty."""
        band = self.band_of.get(sample_id)
        return "" if band is None else ledger.band_label(band, self.plan.bands)

    def measure(self, standing: dict[str, dict]) -> audit.Estimate:
        """The estimate from ``standing`` (the journal's decisions), as over every flag, but cheap.

        estimate() reads a band's flags in priority order up to its last fresh audit line and
        none past it, so it is given per band only the flags up to this audit's share of the band,
        or up to the furthest fresh audit line (a larger earlier audit's) when that is further:
        the same figures, over a few hundred rows instead of every flag. The audit lines it is not
        given are stale ones (their flag gone or now in another band), counted here.
        """
        bands = self.plan.bands
        reach = np.full(bands + 1, math.ceil(self.plan.size / bands))
        lines = stale = 0
        for sample_id, record in standing.items():
            mark = ledger.parse_band(record["audit"]) if record["audit"] else None
            if mark is None:
                continue
            lines += 1
            band, rank = self.place.get(sample_id, (0, 0))
            if mark == (band, bands):
                reach[band] = max(reach[band], rank + 1)
            else:
                stale += 1
        ordered = self.ordered
        rows = ordered[ordered["rank"].to_numpy() < reach[ordered["band"].to_numpy()]]
        known = [sample_id for sample_id in rows["sample_id"] if sample_id in standing]
        decisions = pd.DataFrame([standing[sid] for sid in known], index=known, columns=DECIDED)
        measured = audit.estimate(rows, decisions, bands).bands
        whole = [  # each band's count of flags and label-quality range: of every flag, not the rows
            replace(band, flags=int(np.nan_to_num(size)), quality_low=low, quality_high=high)
            for band, (size, low, high) in zip(measured, self.extent.itertuples(index=False), strict=True)
        ]
        return audit.Estimate(whole, lines, stale)

    def progress(self, standing: dict[str, dict]) -> dict:
        """The estimate as the page shows it (null for what is not measured yet)."""
        measured = self.measure(standing)
        return {
            "size": self.plan.size,
            "bands": [self._band(band) for band in measured.bands],
            "precision": _number(measured.precision),
            **_interval(measured.interval, measured.counted),
            "counted": measured.counted,
            "lines": measured.audit_lines,
            "stale": measured.stale,
        }

    def _band(self, band: audit.Band) -> dict:
        return {
            "band": band.band,
            "flags": band.flags,
            "sampled": int(self.sampled.get(band.band, 0)),
            "quality_low": _number(band.quality_low),
            "quality_high": _number(band.quality_high),
            "counted": band.counted,
            "confirmed": band.confirmed,
            "precision": _number(band.precision),
            **_interval(band.interval, band.counted),
            "waiting": band.waiting,
        }


def _interval(interval: tuple[float, float], counted: int) -> dict:
    low, high = interval
    return {"low": low, "high": high} if counted else {"low": None, "high": None}


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
