"""The audit: how often cleanlab's label flags are right, measured on a random sample people decide.

A queue sorted most suspicious first shows people the flags the machine is surest of, so the
share they confirm there (``review_precision``) overstates the flags' precision. An audit asks
about a *random* sample instead, stratified by label quality, and so measures it without bias,
band by band; clean then acts only on the bands whose precision clears ``clean.min_precision``,
and trains on the other flags weighted by the chance their label is right (:func:`holds`).

**Bands.** The train rows cleanlab flagged as label issues, ranked by label quality (lowest, most
suspicious, first; ties by sample_id), cut into ``clean.audit_bands`` bands of equal count: band
1 the most suspicious quarter (with 4 bands), band 4 the least.

**Order.** Each flag has a fixed random priority, a hash of the run's ``seed`` and its sample_id:
the same for every reviewer and every run, and unchanged for the flags already there when data
is added. An audit of N flags asks, in each band, about its first ``ceil(N / bands)`` flags by
priority, taking the bands in turn. A flag already decided (in queue order, say) counts where it
falls and is not asked again. A random prefix of a random order is a simple random sample of the
band, so its share of confirmed flags estimates the band's precision without bias.

**Audit lines.** A decision made in an audit carries its band in the ledger's ``audit`` column
(``2 of 4``). A band's audit reaches as far as its last audit line in priority order (a band
whose sampled flags were all decided before the audit has no audit line, so it reads as not
audited: the ledger does not say such a band was ever sampled); it counts
the decided flags from the start of the order up to there, and stops early at a flag without a
decision (a card skipped, or a flag new since): the lines past it wait. An audit line goes stale
when its flag is no longer flagged or now falls in another band (the predictions changed); stale
lines are set aside and counted, and past ``clean.audit_max_stale`` of the audit lines the report
asks for a new audit.

**Estimate.** Confirmed: the person dropped the flag or relabelled it to another class (they
agree the given label is wrong). Per band: confirmed / counted, with the Wilson score interval at
95%. The overall ``audited_precision`` weighs each band's share by its count of flags (bands are
equal in count, so it is near the pooled share).

Pure numpy and pandas: clean (:mod:`curate.stages.clean`), the review app and the efficacy
benchmark all read the same functions.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from curate.data.ledger import Review, parse_band
from curate.params import CleanParams

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def priorities(sample_ids: pd.Series | list[str], seed: int) -> np.ndarray:
    """Each sample's audit priority: the first 8 bytes of BLAKE2b(seed, sample_id), as uint64."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=8).digest(), "big")
            for sid in sample_ids
        ],
        dtype=np.uint64,
    )


def order(flags: pd.DataFrame, seed: int, bands: int) -> pd.DataFrame:
    """The label flags in audit order: ``flags`` (``sample_id``, ``label_quality``; any index)
    with ``band`` (1 = lowest label quality) and ``rank`` (0-based place in its band's priority
    order), sorted by band, then rank."""
    if flags.empty:
        return flags.assign(band=pd.Series(dtype=np.int64), rank=pd.Series(dtype=np.int64))
    by_quality = flags.sort_values(["label_quality", "sample_id"], kind="stable")
    band = 1 + (np.arange(len(by_quality)) * bands) // len(by_quality)
    ordered = by_quality.assign(band=band, priority=priorities(by_quality["sample_id"], seed))
    ordered = ordered.sort_values(["band", "priority", "sample_id"], kind="stable")
    ordered["rank"] = ordered.groupby("band").cumcount()
    return ordered.drop(columns="priority")


def sample(ordered: pd.DataFrame, size: int, bands: int) -> pd.DataFrame:
    """The audit of ``size`` flags: each band's first flags of ``ordered`` (:func:`order`), the
    bands in turn (band 1's first, band 2's first, ..., band 1's second), the first ``size`` of
    that (at most ``ceil(size / bands)`` of a band)."""
    per_band = math.ceil(size / bands)
    chosen = ordered[ordered["rank"] < per_band]
    return chosen.sort_values(["rank", "band"], kind="stable").head(size)


def wilson(confirmed: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``confirmed / n``; (0, 1) when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    share = confirmed / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Band:
    """One band's estimate: its flags, the label-quality range they span, the audited flags
    counted and confirmed, and the interval (``precision`` NaN when none is counted)."""

    band: int
    flags: int
    quality_low: float
    quality_high: float
    counted: int
    confirmed: int
    waiting: int  # audit lines past a flag without a decision: not counted yet

    @property
    def precision(self) -> float:
        return self.confirmed / self.counted if self.counted else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.confirmed, self.counted)

    def trusted(self, min_precision: float) -> bool:
        """Whether the interval's lower bound reaches ``min_precision`` (never, unaudited)."""
        return self.counted > 0 and self.interval[0] >= min_precision

    def words(self) -> str:
        low, high = self.interval
        return (
            f"{self.confirmed} of {self.counted} audited flags confirmed, 95% interval {low:.2f}-{high:.2f}"
        )


@dataclass(frozen=True)
class Estimate:
    """What the audit measured: per band (:class:`Band`), and the audit lines set aside."""

    bands: list[Band]
    audit_lines: int  # standing decisions with a band in the ledger's audit column
    stale: int  # of them, on a flag no longer flagged or now in another band

    @property
    def counted(self) -> int:
        return sum(band.counted for band in self.bands)

    @property
    def stale_share(self) -> float:
        return self.stale / self.audit_lines if self.audit_lines else 0.0

    @property
    def precision(self) -> float:
        """The flags' precision over all bands: each band's share weighed by its flags."""
        audited = [band for band in self.bands if band.counted]
        if not audited:
            return float("nan")
        flags = sum(band.flags for band in audited)
        return sum(band.precision * band.flags for band in audited) / flags

    @property
    def interval(self) -> tuple[float, float]:
        """The Wilson interval of the pooled share (bands hold equal counts of flags)."""
        return wilson(sum(band.confirmed for band in self.bands), self.counted)

    def figures(self) -> dict:
        low, high = self.interval
        return {
            "audited_precision": self.precision,
            "audited": self.counted,
            "audited_low": low if self.counted else float("nan"),
            "audited_high": high if self.counted else float("nan"),
            "audit_lines": self.audit_lines,
            "audit_stale": self.stale,
            "audit_stale_share": self.stale_share,
        }


def estimate(ordered: pd.DataFrame, decisions: pd.DataFrame, bands: int) -> Estimate:
    """Each band's precision from the standing ``decisions`` on the flags of ``ordered``.

    ``ordered``: :func:`order`'s table (``sample_id``, ``label_quality``, ``band``, ``rank``, and
    ``given`` the given class name). ``decisions``: one standing decision per sample, by sample_id:
    ``decision``, ``label`` (the class name a relabel chose, else empty) and ``audit`` (the
    ledger's cell). A decision on a sample that is not a flag counts only when it is an audit
    line (then stale).
    """
    decided = ordered["sample_id"].isin(decisions.index).to_numpy()
    rows = decisions.astype(object).reindex(ordered["sample_id"]).fillna("")
    marked = rows["audit"].map(parse_band)
    fresh = np.array(
        [mark == (band, bands) for mark, band in zip(marked, ordered["band"], strict=True)], dtype=bool
    )
    moved = marked.notna().to_numpy() & ~fresh  # an audit line whose flag is now in another band
    confirms = (rows["decision"] == "drop") | (
        (rows["decision"] == "relabel") & (rows["label"] != ordered["given"].to_numpy())
    )
    is_audit_line = decisions["audit"].map(parse_band).notna()
    gone = int((is_audit_line & ~decisions.index.isin(ordered["sample_id"])).sum())
    counts = []
    for band in range(1, bands + 1):
        in_band = (ordered["band"] == band).to_numpy()
        quality = ordered.loc[in_band, "label_quality"]
        reach = np.flatnonzero(fresh[in_band])
        reach = int(reach[-1]) + 1 if len(reach) else 0
        usable = (decided & ~moved)[in_band][:reach]  # a moved line is set aside: a gap in its new band
        counted = int(np.argmin(usable)) if not usable.all() else reach
        counts.append(
            Band(
                band=band,
                flags=int(in_band.sum()),
                quality_low=float(quality.min()) if len(quality) else float("nan"),
                quality_high=float(quality.max()) if len(quality) else float("nan"),
                counted=counted,
                confirmed=int(confirms.to_numpy()[in_band][:counted].sum()),
                waiting=int(fresh[in_band][counted:reach].sum()),
            )
        )
    return Estimate(counts, int(is_audit_line.sum()), gone + int(moved.sum()))


def measure(
    train: pd.DataFrame, review: Review, class_names: list[str], settings: CleanParams, seed: int
) -> Estimate:
    """The audit's estimate per band (:func:`curate.curation.audit.estimate`) from the ledger's
    standing decisions on the train rows; adds ``audit_band`` to ``train`` (0: not a label flag)."""
    flags = train.loc[train["is_label_issue"], ["sample_id", "label_quality"]]
    ordered = order(flags, seed, settings.audit_bands)
    ordered["given"] = [class_names[label] for label in train.loc[ordered.index, "given_label"]]
    train["audit_band"] = 0
    train.loc[ordered.index, "audit_band"] = ordered["band"]
    decided = review.decisions
    standing = pd.DataFrame(
        {
            "decision": decided["decision"].to_numpy(),
            "label": [class_names[label] if label >= 0 else "" for label in decided["label"]],
            "audit": decided["audit"].to_numpy(),
        },
        index=train.loc[decided.index, "sample_id"].to_numpy(),
    )
    return estimate(ordered, standing, settings.audit_bands)


def holds(train: pd.DataFrame, measured: Estimate, settings: CleanParams, action: str) -> pd.Series:
    """The label flags the audit rule holds (``clean.act_when: audited``): those of the bands whose
    interval's lower bound is under ``clean.min_precision``. A held flag keeps its label and
    weighs in the loss the chance it is right (:func:`label_weights`): kept at full weight, the
    hard folder's held flags cost 3.1 points of accuracy and 2.6 of worst-group accuracy against
    that (``benchmarks/efficacy.py --audit``, 5 seeds; docs/curation.md). None without a fresh audit line (no
    audit, or one whose flags all changed since: then clean acts as ``always``), nor when clean acts
    on no flag anyway (``action`` keep), nor under ``action`` weight, where the audit sets each
    flag's weight instead (:func:`label_weights`)."""
    fresh = measured.audit_lines - measured.stale
    if settings.act_when != "audited" or not fresh or action in ("keep", "weight"):
        return pd.Series(False, index=train.index)
    trusted = [band.band for band in measured.bands if band.trusted(settings.min_precision)]
    return train["is_label_issue"] & ~train["audit_band"].isin(trusted)


def held_reasons(held: pd.DataFrame, measured: Estimate, settings: CleanParams) -> list[str]:
    """Why each held flag is kept, and how much it weighs in the loss: its band's audit, in words.
    ``held`` needs ``audit_band``, ``label_weight`` and ``weight_basis``."""
    bands = {band.band: band for band in measured.bands}
    reasons = []
    for band, weight, basis in zip(
        held["audit_band"], held["label_weight"], held["weight_basis"], strict=True
    ):
        of = f"band {band} of {settings.audit_bands}"
        why = (
            f"low audited precision ({of}: {bands[band].words()}, whose lower bound is under "
            f"clean.min_precision {settings.min_precision:g})"
            if bands[band].counted
            else f"{of} is not audited yet (only audited bands that clear clean.min_precision are acted on)"
        )
        reasons.append(
            f"flagged by cleanlab, held: {why}; trained on with loss weight {weight:.3f}, the chance its "
            f"label is right: {basis} (clean.act_when audited)"
        )
    return reasons


def label_weights(
    train: pd.DataFrame, measured: Estimate, given_probability: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``clean.action: weight``: each train row's loss weight, the chance its given label is right,
    and in words whence it came.

    A label flag in an audited band: 1 - the band's audited precision (the share of its audited
    flags people found wrong is the chance this one is); in a band not audited (or with no audit):
    the fold models' probability of its given label (``given_probability``). Other rows: 1.
    """
    bands = train["audit_band"].to_numpy(dtype=np.int64)
    right = np.full(max(len(measured.bands), int(bands.max(initial=0))) + 1, np.nan)
    for band in measured.bands:
        if band.counted:
            right[band.band] = 1 - band.precision
    flagged = train["is_label_issue"].to_numpy(dtype=bool)
    audited = right[bands]
    weights = np.where(flagged, np.where(np.isnan(audited), given_probability, audited), 1.0)
    basis = np.where(
        np.isnan(audited),
        "the fold models' probability of its label",
        np.char.add(np.char.add("1 - band ", bands.astype(str)), "'s audited precision"),
    ).astype(object)
    basis[~flagged] = ""
    return weights, basis
