"""NetAdapt against uniform width multipliers and MACs-driven NetAdapt, on fixed regimes.

The paper's comparison (Yang et al. 2018, Fig. 6 / Table 1) at sizes a 2-core CPU can run. A
*regime* fixes the network, data, pretraining and every fine-tune budget before any NetAdapt run
(see REGIMES); its multiplier curve is run alone first (``--stage uniform``) and committed to
``bench/results/tradeoff-uniform.json``, and NetAdapt runs only on committed regimes. Every
network of a regime is measured in one interleaved session (A B C ... rounds, ONNX Runtime, one
thread) and compared by the minimum of its runs.

Usage:
  python bench/tradeoff.py --stage uniform --regime NAME [--seeds 0 1 2]   # the curve alone
  python bench/tradeoff.py --regime NAME --seeds 0 1 2                     # NetAdapt + curve
  python bench/tradeoff.py --split tuning --seeds 100 101 ...              # ablations (no test set)
  python bench/tradeoff.py ... --levers recommended[,setting=value...]      # with the levers
  python bench/tradeoff.py --report [FILE]    # recompute the summary from FILE's raw rows

``--levers`` turns on training levers beyond the paper (batch-norm re-estimation, distillation
from the original, channel floors) for NetAdapt and the multiplier curve alike; a regime run with
them is a regime of its own (``NAME+setting=value,...``) with its own curve to commit first.
``--variant`` changes only how NetAdapt chooses channels (channel step, selection rule, schedule)
and is placed against its regime's curve (``NAME[setting=value,...]``).

Everything resumes: finished networks are saved as they finish and NetAdapt runs checkpoint
after every iteration, so rerunning the same command continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tradeoff_summary import METHODS, goal_holds, placements, ran_with, summarise  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UNIFORM_RESULTS = RESULTS / "tradeoff-uniform.json"
FULL_RESULTS = RESULTS / "tradeoff.json"
#: Committed starting networks: pretraining is not bitwise reproducible from host to host, and
#: a network pretrained again moved a tuning cell by 0.2x (1.11x -> 1.29x), as much as any lever.
PRETRAINED = ROOT / "bench" / "pretrained"
#: The validation split carved from the training images for ablations (never the test set).
TUNING_VALIDATION = 10_000
FASHION_MNIST_TRAIN = 60_000
#: Splits are drawn once (seed 0) for every run, so seeds vary training only.
DATA_SEED = 0


@dataclass(frozen=True)
class Regime:
    """One benchmark setting, fixed before NetAdapt runs on it."""

    name: str
    arch: str
    width: float
    resolution: int
    limit_train: int | None    # training images (after carving holdout and tuning validation)
    pretrain_epochs: float
    holdout: int               # images that pick proposals (carved from training data)
    short_term_steps: int
    long_term_epochs: float
    max_iterations: int
    budget: float              # NetAdapt's target, fraction of the original's latency or MACs
    initial_reduction: float
    decay: float
    ratios: tuple[float, ...]  # multiplier curve; widened until every method lies inside it
    note: str
    #: Pixels of detail: images are downsampled to ``detail`` px and upsampled again to
    #: ``resolution`` (None: loaded at ``resolution`` directly).
    detail: int | None = None
    #: The training levers beyond the paper, as (setting, value) pairs over the "paper" preset
    #: (None: the paper's plain recipe, as every regime defined before the levers ran). NetAdapt
    #: (both metrics) and the multiplier curve get the same ones.
    levers: tuple[tuple[str, float], ...] | None = None

    def lever_settings(self) -> dict:
        """Every lever's value in this regime's fine-tunes."""
        from adaptation.netadapt.config import preset_settings

        return {**preset_settings("paper"), **dict(self.levers or ())}

    @property
    def uniform_steps(self) -> int:
        """The multipliers' fine-tune before the long-term one: the most short-term steps any
        NetAdapt lineage can get (max_iterations x short_term_steps), fixed in advance."""
        return self.max_iterations * self.short_term_steps

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        for optional in ("detail", "levers"):  # regimes defined before keep their saved form
            if fields[optional] is None:
                del fields[optional]
        if "levers" in fields:
            fields["levers"] = dict(self.levers)
        return {**fields, "uniform_steps": self.uniform_steps}


RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
REGIMES = {r.name: r for r in [
    Regime("mbv1-0.5-fmnist28", "mobilenet_v1", 0.5, 28, None, 5, 2000, 15, 0.5, 10, 0.5, 0.1, 0.9,
           RATIOS, "the first benchmark's setup: MobileNetV1-0.5, stride-1 stem, all training "
           "images; the multiplier curve lost only 2.4 points from x1 to x0.5 there"),
    Regime("mbv1-0.25-fmnist28-12k", "mobilenet_v1", 0.25, 28, 12_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "a narrower MobileNetV1 on 12k training images, where each channel "
           "should count for more"),
    Regime("mbv1-0.125-fmnist28-12k", "mobilenet_v1", 0.125, 28, 12_000, 10, 2000, 15, 0.5, 10,
           0.5, 0.1, 0.9, RATIOS, "narrower still: width 0.25 lost 2.5 points from x1 to x0.5 but "
           "6 at x0.25, so halving a width-0.125 network should cost more"),
    Regime("mbv1-0.25-fmnist14-12k", "mobilenet_v1", 0.25, 14, 12_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "width 0.25 on Fashion-MNIST downsampled to 14 px: less detail, so "
           "fewer channels may have less to spare"),
    Regime("mbv1-0.5-fmnist14up84-12k", "mobilenet_v1", 0.5, 84, 12_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "14-px detail (which made width matter most) upsampled to 84 px, so "
           "build_model gives the ImageNet stem at stride 2 (inputs above 64 px): 42x42 maps after "
           "the stem, 2.25x the 28-px regimes' arithmetic, so arithmetic, not per-call overhead, "
           "should dominate latency", detail=14),
    Regime("mbv2-0.5-fmnist32-12k", "mobilenet_v2", 0.5, 32, 12_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "torchvision's MobileNetV2 (width_mult 0.5, stem at stride 1 for small "
           "inputs) at 32 px: inverted residuals, the paper's second network"),
    Regime("mbv2-0.35-fmnist32-12k", "mobilenet_v2", 0.35, 32, 12_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "MobileNetV2 narrower still (width_mult 0.35): width 0.5 at 32 px lost "
           "4.4 points from x1 to x0.5 on its screening seed, just short of the 5 the goal needs"),
    Regime("mbv2-0.5-fmnist14up32-12k", "mobilenet_v2", 0.5, 32, 12_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "MobileNetV2-0.5 at 32 px on 14-px detail (downsampled, upsampled "
           "again): less detail made width matter more for MobileNetV1 (3.75 against 2.8 points)",
           detail=14),
    Regime("mbv2-0.5-fmnist32-3k", "mobilenet_v2", 0.5, 32, 3_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "MobileNetV2-0.5 at 32 px on a quarter of the training images: on 12k "
           "it lost 4.4 points from x1 to x0.5; with less data to recover from, a halved network's "
           "fine-tune should win back less of what pruning took"),
    Regime("mbv2-0.5-fmnist10up32-12k", "mobilenet_v2", 0.5, 32, 12_000, 10, 2000, 15, 0.5, 10, 0.5,
           0.1, 0.9, RATIOS, "MobileNetV2-0.5 at 32 px on 10-px detail: 14-px detail lost 4.94 "
           "points from x1 to x0.5 against 4.40 at full detail, so less detail still should cross 5",
           detail=10),
    Regime("mbv2-0.5-fmnist14up32-12k-ft5", "mobilenet_v2", 0.5, 32, 12_000, 10, 2000, 5, 0.25, 10,
           0.5, 0.1, 0.9, RATIOS, "the 14-px-detail MobileNetV2-0.5 (4.94 points) with a third of "
           "the fine-tune, fixed in advance: 5 short-term steps a proposal (50 for a multiplier) and "
           "a quarter epoch long-term; the drop is what fine-tuning does not win back", detail=14),
]}


# --------------------------------------------------------------------------- data and models


def regime_data(regime: Regime, split: str, *, limit_train: int | None = None):
    """Train / holdout / evaluation splits: the evaluation split is the official test set
    (``split="test"``) or ``TUNING_VALIDATION`` images carved from the training data
    (``"tuning"``). The carved images are left out of training in both cases, so the pretrained
    network and the fine-tunes never see them."""
    data, order = _loaded(regime)
    carved, rest = order[:TUNING_VALIDATION], order[TUNING_VALIDATION:]
    limit = limit_train if limit_train is not None else regime.limit_train
    if limit is not None:
        rest = rest[:limit]
    train = data.train.subset(rest)  # uint8 images with the train split's normalisation
    evaluation = data.train.subset(carved) if split == "tuning" else data.validation
    data = dataclasses.replace(data, train=train, validation=evaluation)
    if regime.detail is not None and regime.detail != regime.resolution:
        data = upsampled(data, regime.resolution)
    return data


@functools.lru_cache(maxsize=2)
def _loaded(regime: Regime):
    """Fashion-MNIST at the regime's detail, its holdout carved, and the fixed order in which
    the rest of the training images are carved (tuning split, then training images). Cached:
    every NetAdapt run of a holdout variant needs it again; nothing changes what it returns."""
    from adaptation.netadapt.data import load_dataset

    data = load_dataset("fashion_mnist", holdout_size=regime.holdout, seed=DATA_SEED,
                        resolution=regime.detail or regime.resolution)
    return data, torch.from_numpy(np.random.default_rng([DATA_SEED, 7]).permutation(len(data.train)))


def unused_images(regime: Regime) -> int:
    """Training images no run of ``regime`` trains on or is scored on (0 when it trains on all)."""
    if regime.limit_train is None:
        return 0
    return max(FASHION_MNIST_TRAIN - regime.holdout - TUNING_VALIDATION - regime.limit_train, 0)


def with_holdout(regime: Regime, data, size: int):
    """``data`` (``regime_data``'s) whose holdout, the images that pick NetAdapt's proposals, holds
    ``size`` images (within ``variant_config``'s range): the regime's own, then training images
    no run of the regime uses. The training data, and so every network's training, stay exactly
    as they were."""
    from adaptation.netadapt.data import TensorSplit

    extra = size - len(data.holdout)
    if extra <= 0:
        return data
    full, order = _loaded(regime)
    pool = order[TUNING_VALIDATION + regime.limit_train:]
    more = full.train.subset(pool[:extra])
    if regime.detail is not None and regime.detail != regime.resolution:
        more = _resized(more, regime.resolution)
    holdout = TensorSplit(torch.cat([data.holdout.batch(torch.arange(len(data.holdout))),
                                     more.batch(torch.arange(len(more)))]),
                          torch.cat([data.holdout.labels, more.labels]))
    return dataclasses.replace(data, holdout=holdout)


def _resized(split, resolution: int):
    """``split``'s normalised images resized bilinearly to ``resolution`` (float32)."""
    from adaptation.netadapt.data import TensorSplit

    if not len(split):
        return split
    images = torch.cat([torch.nn.functional.interpolate(
        split.batch(chunk), size=(resolution, resolution), mode="bilinear", align_corners=False)
        for chunk in torch.arange(len(split)).split(2048)])
    return TensorSplit(images.contiguous(), split.labels)


def upsampled(data, resolution: int):
    """``data`` with every split's normalised images resized bilinearly to ``resolution``: the
    detail stays what it was, only the network's input (and so its arithmetic) grows. Only the
    splits a run uses are resized (after carving), since 60k images at 84 px would not fit
    comfortably in memory; the result is normalised float32."""
    return dataclasses.replace(data, train=_resized(data.train, resolution),
                               holdout=_resized(data.holdout, resolution),
                               validation=_resized(data.validation, resolution), resolution=resolution)


def spec_of(regime: Regime):
    from adaptation.netadapt.spec import ArchitectureSpec

    return ArchitectureSpec(regime.arch, 10, 1, regime.width, regime.resolution)


def pretrained_name(regime: Regime, train_images: int) -> str:
    """File name of the regime's starting network (the levers change fine-tunes, not it)."""
    return f"{regime.name.split('+')[0]}-e{regime.pretrain_epochs:g}-n{train_images}.pt"


def pretrained(regime: Regime, data, cache: Path, device: torch.device | str = "cpu"
               ) -> torch.nn.Module:
    """The regime's starting network: the committed one in ``PRETRAINED`` when there is one,
    else trained once (seed 0, on ``device``) and cached in ``cache``."""
    from adaptation.netadapt.export import export_pytorch, load_pytorch
    from adaptation.netadapt.training import accuracy, steps_for_epochs, train_steps

    name = pretrained_name(regime, len(data.train))
    for path in (PRETRAINED / name, cache / name):
        if path.exists():
            print(f"[{regime.name}] starting network: {path.relative_to(path.parents[1])}", flush=True)
            return load_pytorch(path)
    path = cache / name
    torch.manual_seed(0)
    model = spec_of(regime).build()
    steps = steps_for_epochs(data.train, regime.pretrain_epochs, 128)
    print(f"[{regime.name}] pretraining {regime.pretrain_epochs:g} epochs ({steps} steps)...", flush=True)
    train_steps(model, data.train, steps, lr=0.1, batch_size=128, seed=0, cosine=True, device=device)
    cache.mkdir(parents=True, exist_ok=True)
    export_pytorch(model, spec_of(regime), {}, path)
    print(f"[{regime.name}] pretrained: holdout accuracy "
          f"{accuracy(model, data.holdout, device=device):.4f}", flush=True)
    return model


def adapt_config(regime: Regime, metric: str, seed: int):
    """The engine configuration of one run: the same levers for NetAdapt and the multipliers."""
    from adaptation.netadapt.config import AdaptConfig

    return AdaptConfig(metric=metric, budget=regime.budget, short_term_steps=regime.short_term_steps,
                       long_term_epochs=regime.long_term_epochs, max_iterations=regime.max_iterations,
                       initial_reduction=regime.initial_reduction, decay=regime.decay, seed=seed,
                       **regime.lever_settings())


def setting_value(name: str, value: str) -> int | float:
    """``value`` read as engine setting ``name`` and held to its range (ArgumentTypeError)."""
    from adaptation.netadapt.config import SETTING_RANGES, range_problem

    try:
        number = int(value) if SETTING_RANGES[name].integer else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a value of {name}") from None
    if problem := range_problem(name, number):
        raise argparse.ArgumentTypeError(problem)
    return number


#: Levers of the "recommended" preset that only change how NetAdapt chooses channels: a regime's
#: runs take the paper's value (its "base") and ``--variant`` gives another.
CHOOSING_LEVERS = ("min_proposals",)


def parse_levers(text: str) -> tuple[tuple[str, float], ...] | None:
    """``--levers``: a preset ("paper", "recommended") and/or ``setting=value`` pairs over it,
    comma separated ("recommended,floor_minimum=16", "distillation_alpha=0.5"); None for the
    paper's plain recipe. Values are held to ``SETTING_RANGES``. A lever of how NetAdapt chooses
    channels that cannot change the multiplier curve (``CHOOSING_LEVERS``) is left to ``--variant``,
    so that it costs no curve of its own: a preset leaves it at the paper's value."""
    from adaptation.netadapt.config import LEVER_SETTINGS, PRESETS, preset_settings

    names = (*(n for n in LEVER_SETTINGS if n not in CHOOSING_LEVERS), "distillation_temperature")
    chosen = {k: v for k, v in preset_settings("paper").items() if k in names}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part in PRESETS:
            chosen.update({k: v for k, v in preset_settings(part).items() if k in names})
            continue
        name, equals, value = part.partition("=")
        if equals and name in CHOOSING_LEVERS:
            raise argparse.ArgumentTypeError(
                f"'{part}' changes how NetAdapt chooses channels, not the curve: give it with "
                f"--variant")
        if not equals or name not in names:
            raise argparse.ArgumentTypeError(
                f"'{part}' is neither a preset ({', '.join(PRESETS)}) nor setting=value with a "
                f"setting among {', '.join(names)}")
        chosen[name] = setting_value(name, value)
    paper = preset_settings("paper")
    changed = tuple((k, v) for k, v in chosen.items() if paper.get(k) != v)
    return changed or None


def with_levers(regime: Regime, levers: tuple[tuple[str, float], ...] | None) -> Regime:
    """``regime`` run with ``levers``: a regime of its own (named after them), so its runs,
    progress and multiplier curve never mix with the plain recipe's."""
    if levers is None:
        return regime
    label = ",".join(f"{k}={v:g}" for k, v in levers)
    return dataclasses.replace(regime, name=f"{regime.name}+{label}", levers=levers)


#: Settings of how NetAdapt chooses channels, not of how any network is trained: a *variant*
#: (``--variant``) changes them for NetAdapt alone and is placed against its regime's own
#: multiplier curve, measured in the same session, so a variant costs no curve of its own.
#: ``short_term_steps`` is one of them because the multipliers' fine-tune is fixed by the regime
#: (``uniform_steps``); a variant may not give a NetAdapt lineage more steps than that. The floors
#: are too: no multiplier of the curve goes below a quarter of any group's channels, so a floor up
#: to that fraction leaves the curve as it is (``variant_config`` refuses a higher one).
VARIANT_SETTINGS = ("channel_step", "selection", "initial_reduction", "decay", "max_iterations",
                    "min_proposals", "keep_pace", "short_term_steps", "floor_minimum",
                    "floor_fraction", "holdout")
#: Variant settings that are on or off (written 1 or 0).
SWITCH_VARIANTS = ("keep_pace",)
#: Variant settings of the data NetAdapt chooses with rather than of the engine: ``holdout`` is
#: how many images score the proposals, the regime's own plus training images no run uses
#: (``with_holdout``); no network trains on them, so the multiplier curve stays the same.
DATA_VARIANTS = ("holdout",)


def parse_variant(text: str) -> tuple[tuple[str, object], ...] | None:
    """``--variant``: ``setting=value`` pairs over ``VARIANT_SETTINGS``, comma separated
    ("channel_step=16,selection=loss_per_resource"), values held to the engine's ranges; "base"
    (None) is the regime's own settings."""
    from adaptation.netadapt.config import SELECTION_RULES

    if text.strip() == "base":
        return None
    chosen: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, equals, value = part.partition("=")
        if not equals or name not in VARIANT_SETTINGS:
            raise argparse.ArgumentTypeError(
                f"'{part}' is not setting=value with a setting among {', '.join(VARIANT_SETTINGS)}")
        if name == "selection":
            if value not in SELECTION_RULES:
                raise argparse.ArgumentTypeError(
                    f"selection must be one of {', '.join(SELECTION_RULES)}, not '{value}'")
            chosen[name] = value
            continue
        if name in SWITCH_VARIANTS:
            if value not in ("0", "1"):
                raise argparse.ArgumentTypeError(f"{name} must be 1 (on) or 0 (off), not '{value}'")
            chosen[name] = value == "1"
            continue
        if name in DATA_VARIANTS:
            if not value.isdigit() or not 0 < int(value) <= FASHION_MNIST_TRAIN:
                raise argparse.ArgumentTypeError(
                    f"{name} must be a whole number of images from 1 to {FASHION_MNIST_TRAIN:,}")
            chosen[name] = int(value)
            continue
        chosen[name] = setting_value(name, value)
    return tuple(chosen.items()) or None


def variant_label(variant: tuple[tuple[str, object], ...] | None) -> str:
    """``"[channel_step=16,...]"``, the suffix of a variant's run and regime names ("" for none)."""
    if not variant:
        return ""
    return "[" + ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                          for k, v in variant) + "]"


def variant_config(regime: Regime, metric: str, seed: int,
                   variant: tuple[tuple[str, object], ...] | None):
    """A NetAdapt run's configuration: the regime's, with the variant's settings over it.
    ValueError when the variant would fine-tune a lineage longer than the multipliers."""
    engine = {k: v for k, v in (variant or ()) if k not in DATA_VARIANTS}
    config = dataclasses.replace(adapt_config(regime, metric, seed), **engine)
    holdout = dict(variant or ()).get("holdout")
    if holdout is not None and not regime.holdout <= holdout <= regime.holdout + unused_images(regime):
        raise ValueError(f"holdout must be from the regime's {regime.holdout} to "
                         f"{regime.holdout + unused_images(regime)} images (its own plus the "
                         f"{unused_images(regime)} training images no run uses)")
    if dict(variant or ()).get("floor_fraction", 0) > min(regime.ratios):  # levers' floors apply to all
        raise ValueError(f"a floor of {config.floor_fraction:g} of each group's channels would "
                         f"change the multiplier curve (its narrowest is x{min(regime.ratios):g})")
    lineage = config.max_iterations * config.short_term_steps
    if lineage > regime.uniform_steps:
        raise ValueError(f"{variant_label(variant)} gives a NetAdapt lineage up to {lineage} "
                         f"short-term steps, more than the multipliers' {regime.uniform_steps}")
    return config


# --------------------------------------------------------------------------- progress


class Progress:
    """A regime's finished networks (rows + weights) and its look-up table, saved as they finish,
    plus each NetAdapt run's checkpoint after every iteration."""

    def __init__(self, folder: Path, regime: Regime, measurer) -> None:
        from adaptation.netadapt.export import load_pytorch
        from adaptation.netadapt.lut import MemoryLatencyTable

        self.folder, self.regime = folder, regime
        self.path, self.models_dir = folder / "progress.json", folder / "models"
        self.table_path = folder / "lut.json"
        self.rows: dict[str, dict] = {}
        self.models: dict[str, torch.nn.Module] = {}
        self.table = MemoryLatencyTable({"runtime": measurer.runtime_name, "threads": 1})
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved["regime"] != json.loads(json.dumps(regime.to_dict())):  # tuples come back as lists
                raise SystemExit(f"{folder} holds runs of a different definition of "
                                 f"{regime.name}; use another --out")
            self.rows = saved["rows"]
            self.models = {name: load_pytorch(self.models_dir / f"{name}.pt") for name in self.rows}
            print(f"[{regime.name}] resuming: {len(self.rows)} finished networks", flush=True)
        if self.table_path.exists():
            self.table = MemoryLatencyTable.load(self.table_path)

    def checkpoint(self, name: str) -> Path:
        return self.folder / "checkpoints" / f"{name}.pt"

    def done(self, name: str, model: torch.nn.Module, channels: dict, row: dict) -> None:
        from adaptation.netadapt.export import export_pytorch

        self.models_dir.mkdir(parents=True, exist_ok=True)
        export_pytorch(model, spec_of(self.regime), channels, self.models_dir / f"{name}.pt")
        self.models[name], self.rows[name] = model, {**row, "channels": dict(channels)}
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.table.save(self.table_path)
        self.path.write_text(json.dumps({"regime": self.regime.to_dict(), "rows": self.rows}, indent=1))


# --------------------------------------------------------------------------- runs


def run_netadapt(regime: Regime, metric: str, seed: int, original, data, analysis, progress: Progress,
                 measurer, device: torch.device | str = "cpu",
                 variant: tuple[tuple[str, object], ...] | None = None) -> None:
    """One NetAdapt run (fine-tunes on ``device``), resumed from its last finished iteration when
    interrupted (on any device); a variant's run is named and filed after its settings."""
    from adaptation.netadapt.loop import AdaptState, FinishRecord, IterationRecord, NetAdapt, run_with
    from adaptation.netadapt.resources import LatencyTableModel, MacsModel

    label = variant_label(variant)
    name = f"netadapt-{metric}{label} s{seed}"
    if name in progress.rows:
        return
    config = variant_config(regime, metric, seed, variant)
    if "holdout" in dict(variant or ()):
        data = with_holdout(regime, data, dict(variant)["holdout"])
    checkpoint = progress.checkpoint(name)
    state = AdaptState.load(checkpoint) if checkpoint.exists() else None
    spent = state.start.get("bench_minutes", 0.0) if state else 0.0
    resource = LatencyTableModel(progress.table) if metric == "latency" else MacsModel()
    engine = NetAdapt(original, spec_of(regime).example_input(), data, config, resource,
                      state=state, analysis=analysis, train_device=device)
    tick = time.perf_counter()
    finish = None
    for record in run_with(engine, measurer, progress.table):
        if isinstance(record, IterationRecord):
            print(f"  [{regime.name} {name}] iteration {record.iteration}: {record.chosen_group} -> "
                  f"{record.channels[record.chosen_group]} ch, {record.resource.value:.4g}, "
                  f"holdout {record.holdout_accuracy:.4f}", flush=True)
            for note in record.notes:
                print(f"  [{regime.name} {name}] {note}", flush=True)
            engine.state.start["bench_minutes"] = spent + (time.perf_counter() - tick) / 60
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            engine.state.save(checkpoint)
            progress.save()  # the table grew
        elif isinstance(record, FinishRecord):
            finish = record
    iterations = engine.state.records
    placement = {"regime": regime.name + label, "curve": regime.name, "variant": dict(variant)} \
        if variant else {"regime": regime.name}
    progress.done(name, finish.model, finish.channels, {
        **placement, "kind": f"netadapt-{metric}", "seed": seed,
        "config": config.to_dict(), "accuracy": finish.validation_accuracy,
        "holdout_accuracy": finish.holdout_accuracy, "budget_met": finish.budget_met,
        "measured_ratio": finish.measured_ratio,
        "iterations": finish.iterations, "macs": iterations[-1]["macs"] if iterations else None,
        "minutes": spent + (time.perf_counter() - tick) / 60,
        "predicted_ms": [_prediction(r) for r in iterations],
        # the first iteration measured whole once the table had parted (netadapt.table_check)
        "whole_since": engine.state.whole_since,
        "train_device": engine.train_device.type})


def _prediction(record: dict) -> dict | None:
    """The chosen network's latency as the calibrated table predicted it before measuring it
    (None when it was not measured, or was estimated by measuring it whole)."""
    from adaptation.netadapt.table_check import predictions

    found = predictions([record])
    if not found:
        return None
    return {"predicted_ms": found[0].predicted_ms, "measured_min_ms": found[0].measured_ms}


def run_uniform(regime: Regime, ratio: float, seed: int, original, data, analysis,
                progress: Progress, device: torch.device | str = "cpu") -> None:
    from adaptation.netadapt.baselines import uniform_baseline
    from adaptation.netadapt.training import resolve_device

    name = f"uniform x{ratio:g} s{seed}"
    if name in progress.rows:
        return
    config = adapt_config(regime, "latency", seed)
    tick = time.perf_counter()
    result = uniform_baseline(original, spec_of(regime).example_input(), analysis, data, config,
                              ratio, regime.uniform_steps, device=device)
    progress.done(name, result.model, result.channels, {
        "regime": regime.name, "kind": "uniform", "seed": seed, "ratio": ratio,
        "config": config.to_dict(), "accuracy": result.validation_accuracy,
        "holdout_accuracy": result.holdout_accuracy, "macs": result.macs,
        "minutes": (time.perf_counter() - tick) / 60, "train_device": resolve_device(device).type})
    print(f"  [{regime.name} uniform s{seed}] x{ratio:g}: accuracy {result.validation_accuracy:.4f}",
          flush=True)


#: The global allocation's targets, fractions of the original's table estimate: a curve of its
#: own across the multipliers' latencies (``--allocation``).
ALLOCATION_FRACTIONS = (0.4, 0.5, 0.6, 0.7)


def fill_table(progress: Progress, measurer, signatures) -> None:
    """Measure into the regime's table the layers (and the call overhead) it lacks."""
    from adaptation.netadapt.resources import LatencyTableModel

    missing = LatencyTableModel(progress.table).missing(signatures)
    if missing:
        progress.table.add(measurer.measure_signatures(missing))


def table_latency(progress: Progress, analysis, measurer):
    """``latency_of(config)``: the look-up table's overhead-corrected sum for a channel
    configuration, the layers the table lacks measured first."""
    from adaptation.netadapt.resources import LatencyTableModel

    model = LatencyTableModel(progress.table)

    def latency_of(config) -> float:
        signatures = analysis.signatures(dict(config))
        fill_table(progress, measurer, signatures)
        return model.raw_ms(signatures)

    return latency_of


def run_allocation(regime: Regime, fraction: float, seed: int, original, data, analysis,
                   progress: Progress, measurer, device: torch.device | str = "cpu") -> None:
    """The global allocation at ``fraction`` of the original's table estimate, fine-tuned as the
    multipliers are (same steps, same levers): a second latency-driven algorithm on the chart."""
    from adaptation.netadapt.baselines import allocation_baseline
    from adaptation.netadapt.steps import plan_signatures
    from adaptation.netadapt.training import resolve_device

    name = f"allocation-latency t{fraction:g} s{seed}"
    if name in progress.rows:
        return
    config = adapt_config(regime, "latency", seed)
    tick = time.perf_counter()
    # Every single-group change of the original (the allocation's costs), in one batch.
    fill_table(progress, measurer, plan_signatures(analysis, analysis.original_config(),
                                                   config.channel_step))
    latency_of = table_latency(progress, analysis, measurer)
    result = allocation_baseline(original, spec_of(regime).example_input(), analysis, data, config,
                                 latency_of, fraction, regime.uniform_steps, device=device)
    progress.done(name, result.model, result.channels, {
        "regime": regime.name, "kind": "allocation-latency", "seed": seed, "fraction": fraction,
        "config": config.to_dict(), "accuracy": result.validation_accuracy,
        "holdout_accuracy": result.holdout_accuracy, "macs": result.macs,
        "table_ms": latency_of(result.channels),
        "minutes": (time.perf_counter() - tick) / 60, "train_device": resolve_device(device).type})
    print(f"  [{regime.name} allocation s{seed}] t{fraction:g}: accuracy "
          f"{result.validation_accuracy:.4f}", flush=True)


def measure_all(regime: Regime, progress: Progress, original) -> None:
    """Every network of the regime (and the original) timed in one interleaved session."""
    from devices.measure import MeasureProtocol
    from devices.measure.local import LocalMeasurer

    names = ["original", *progress.rows]
    models = [original, *(progress.models[n] for n in progress.rows)]
    print(f"[{regime.name}] measuring {len(models)} networks interleaved...", flush=True)
    protocol = MeasureProtocol(threads=1, warmup=20, rounds=10, runs_per_round=50)
    stats = LocalMeasurer("onnxruntime", protocol).measure_models(models, spec_of(regime).example_input())
    progress.original_latency = stats[0].to_dict()
    for name, measured in zip(names[1:], stats[1:]):
        progress.rows[name]["latency"] = measured.to_dict()
    progress.save()


# --------------------------------------------------------------------------- results


def machine() -> dict:
    """What the latencies depend on: CPU model and vector extensions, runtime and threads."""
    import onnxruntime

    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "vector": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "neon"}),
            "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "threads": 1}


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(path: Path, rows: list[dict], regimes: list[Regime], split: str) -> dict:
    """Raw rows plus the summary recomputable from them (``--report``)."""
    existing = json.loads(path.read_text()) if path.exists() else {"rows": [], "regimes": {}}
    if any(r.get("split") != split for r in existing["rows"]):
        raise SystemExit(f"{path} holds another split's rows: one split per results file")
    # This run's (regime, seed) pairs replace their earlier rows; other seeds' rows stay (each
    # seed is placed against its own curve, measured in its own session: see each row's stamp).
    stamp = {"measured_on": {"cpu": machine()["cpu"], "commit": commit(),
                             "date": time.strftime("%Y-%m-%d")}}
    rows = [{**stamp, **row} for row in rows]
    ran = {(r["regime"], r["seed"]) for r in rows}
    kept = [r for r in existing["rows"] if (r["regime"], r["seed"]) not in ran]
    all_rows = kept + rows
    defined = {r.name: r.to_dict() for r in regimes}
    variants = {row["regime"]: {**defined[row["curve"]], "curve": row["curve"],
                                "variant": row["variant"]}
                for row in rows if row.get("curve") in defined}
    document = {"machine": machine(), "commit": commit(),
                "regimes": {**existing.get("regimes", {}), **defined, **variants},
                "rows": all_rows, "summary": summarise(all_rows), "placements": placements(all_rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return document


def print_report(document: dict) -> None:
    print(f"\n{'regime':<24}{'model':<22}{'min ms':>9}{'spread':>8}{'acc %':>8}{'min':>7}")
    for row in document["rows"]:
        latency = row.get("latency") or {}
        spread = ((latency["p90_ms"] - latency["p10_ms"]) / latency["median_ms"]
                  if latency else float("nan"))
        name = (row["kind"] + (f" x{row['ratio']:g}" if "ratio" in row else "")
                + (f" t{row['fraction']:g}" if "fraction" in row else ""))
        minutes = row.get("minutes")
        print(f"{row['regime']:<24}{name + ' s' + str(row['seed']):<22}"
              f"{latency.get('min_ms', float('nan')):>9.4f}{spread:>8.1%}"
              f"{100 * row['accuracy']:>8.2f}{(minutes if minutes is not None else float('nan')):>7.1f}")
    for regime in document["summary"]["regimes"]:
        drop = regime["uniform_drop_x1_to_x05_pts"]
        print(f"\n{regime['name']}: multiplier curve x1 -> x0.5 loses "
              f"{'n/a' if drop is None else f'{drop:.2f}'} points")
        for s in regime["seeds"]:
            macs = s["macs_vs_uniform"]
            print(f"  seed {s['seed']}: latency-driven {s['latency_vs_uniform']:.2f}x"
                  f"{' (' + s['bound'] + ' bound)' if s['bound'] else ''}, MACs-driven "
                  f"{'n/a' if macs is None else f'{macs:.2f}x'}, gain at equal latency "
                  f"{s['latency_acc_gain_pts']:+.2f} pts")
        if regime["seeds"]:
            print(f"  mean (bounds left out): {json.dumps(regime['mean'])}")
    for other in document.get("placements", []):
        print(f"{other['regime']} {other['name']}: {other['speedup']:.2f}x at equal accuracy"
              f"{' (' + other['bound'] + ' bound)' if other['bound'] else ''}, "
              f"{other['acc_gain_pts']:+.2f} pts at equal latency")
    if not any(r["kind"] in METHODS for r in document["rows"]):
        return  # a curve alone: nothing to judge
    judged = product_entries(document["rows"])
    verdict = "holds" if goal_holds(document["summary"], judged) else "does not hold"
    print(f"\nissue 8's goal, judged on the product's defaults ({', '.join(sorted(judged)) or 'none ran'};"
          f" every other entry is an ablation): {verdict}")


def product_entries(rows: list[dict]) -> set[str]:
    """The entries whose NetAdapt runs chose channels as the product does by default (the
    "recommended" preset of the CLI, the job form and the API, and the engine's channel step,
    selection rule and pace rule, on the regime's own holdout): the ones issue 8's goal is judged
    on. The regime fixes the rest (budgets); a row from before the pace rule ran without it."""
    from adaptation.netadapt.config import AdaptConfig, preset_settings

    defaults = AdaptConfig()
    choosing = {"channel_step": defaults.channel_step, "selection": defaults.selection,
                "keep_pace": defaults.keep_pace}
    own_data = [r for r in rows if not set(r.get("variant") or ()) & set(DATA_VARIANTS)]
    return ran_with(own_data, {**preset_settings("recommended"), **choosing},
                    {**preset_settings("paper"), **choosing, "keep_pace": False})


def report(path: Path) -> int:
    """Recompute the summary from ``path``'s raw rows; 1 if it differs from the stored one."""
    document = json.loads(path.read_text())
    recomputed = summarise(document["rows"])
    others = placements(document["rows"])
    print_report({**document, "summary": recomputed, "placements": others})
    if json.dumps(recomputed, sort_keys=True) != json.dumps(document["summary"], sort_keys=True) \
            or ("placements" in document and document["placements"] != others):
        print(f"\nthe summary stored in {path} differs from the one its rows give", file=sys.stderr)
        return 1
    return 0


def committed_uniform_regimes() -> set[str]:
    if not UNIFORM_RESULTS.exists():
        return set()
    return set(json.loads(UNIFORM_RESULTS.read_text()).get("regimes", {}))


def network_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter and buffer: names the starting network a curve and a
    NetAdapt run stood on, however it was stored (committed, cached, pretrained just now)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def committed_start(regime_name: str, path: Path = UNIFORM_RESULTS) -> str | None:
    """The starting network's fingerprint of the regime's committed curve (None: the curve was
    committed before fingerprints were recorded, or there is none)."""
    if not path.exists():
        return None
    return next((row.get("start") for row in json.loads(path.read_text())["rows"]
                 if row["regime"] == regime_name and row["kind"] == "original"), None)


def check_same_start(regime_name: str, start: str, path: Path = UNIFORM_RESULTS) -> None:
    """NetAdapt is placed on a curve that stood on the same starting network, or not at all:
    a curve from another network (pretrained on another host) moves the figure by 0.2x."""
    committed = committed_start(regime_name, path)
    if committed != start:
        raise SystemExit(
            f"{regime_name}'s committed multiplier curve stood on "
            f"{'an unrecorded starting network' if committed is None else 'starting network ' + committed}"
            f", this run starts from {start}: run --stage uniform again and commit "
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} first")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", nargs="+", choices=sorted(REGIMES), default=sorted(REGIMES))
    parser.add_argument("--stage", choices=("uniform", "all"), default="all",
                        help="uniform: the multiplier curve alone (commit it before NetAdapt runs)")
    parser.add_argument("--split", choices=("test", "tuning"), default="test",
                        help="evaluate on the official test set, or on images carved from the "
                             "training data (for choosing levers)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "tradeoff"))
    parser.add_argument("--cache", default=str(ROOT / "bench" / "cache"))
    parser.add_argument("--results", default=None,
                        help="results file (default: bench/results/tradeoff[-uniform].json for "
                             "the test split; nothing is written for the tuning split unless given)")
    parser.add_argument("--smoke", action="store_true",
                        help="a minutes-long run of the whole pipeline on tiny settings (checks "
                             "the code, not the method; writes no results file)")
    parser.add_argument("--train-device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where fine-tunes run (auto: CUDA when torch sees a GPU); latency is "
                             "always measured on this machine's CPU (default: %(default)s)")
    parser.add_argument("--levers", type=parse_levers, default=None,
                        help="training levers beyond the paper for every run of the regimes "
                             "(NetAdapt and multipliers alike): 'recommended', 'paper', and/or "
                             "setting=value pairs, comma separated; a regime run with levers is "
                             "named after them and needs its own committed multiplier curve "
                             "(default: the paper's plain recipe)")
    parser.add_argument("--variant", action="append", type=parse_variant, default=None,
                        help="NetAdapt only, other settings for how channels are chosen ("
                             f"{', '.join(VARIANT_SETTINGS)}) as setting=value pairs, comma "
                             "separated, or 'base' for the regime's own; repeat for several. A "
                             "variant is placed against its regime's multiplier curve (default: base)")
    parser.add_argument("--allocation", nargs="*", type=float, default=None, metavar="FRACTION",
                        help="also the global allocation (after HALP), at these fractions of the "
                             "original's table estimate (none given: "
                             f"{' '.join(map(str, ALLOCATION_FRACTIONS))}), fine-tuned as the "
                             "multipliers are")
    parser.add_argument("--metrics", nargs="+", choices=("latency", "macs"),
                        default=["latency", "macs"],
                        help="which NetAdapt runs (ablations may skip MACs; default: both)")
    parser.add_argument("--ratios", nargs="+", type=float, default=None,
                        help="only these of the regimes' multiplier ratios (screening a regime's "
                             "drop with 0.5 1 before its whole curve); the rows are the whole "
                             "curve's, so the full run reuses them; writes no results file unless "
                             "--results is given")
    parser.add_argument("--report", nargs="?", const=str(FULL_RESULTS), default=None, metavar="FILE",
                        help="recompute and print the summary of FILE; train nothing")
    args = parser.parse_args()
    if args.report:
        return report(Path(args.report))

    from adaptation.netadapt.graph import NetworkAnalysis
    from adaptation.netadapt.training import resolve_device
    from devices.measure import MeasureProtocol
    from devices.measure.local import LocalMeasurer

    try:
        device = resolve_device(args.train_device)
    except ValueError as error:
        parser.error(str(error))

    torch.set_num_threads(1)  # fine-tunes on one core leave the other to measurements' neighbours
    regimes = [with_levers(REGIMES[name], args.levers) for name in args.regime]
    if args.smoke:
        regimes = [dataclasses.replace(r, name=r.name + "-smoke", limit_train=2000, pretrain_epochs=1,
                                       holdout=500, short_term_steps=3, long_term_epochs=0.05,
                                       max_iterations=2, initial_reduction=0.04, decay=1.0, budget=0.9,
                                       ratios=(0.5, 1.0)) for r in regimes]
    for regime in regimes:
        for variant in (args.variant or []):
            try:
                variant_config(regime, "latency", 0, variant)
            except ValueError as error:
                parser.error(str(error))
        unknown = sorted(set(args.ratios or ()) - set(regime.ratios))
        if unknown:
            parser.error(f"--ratios {unknown} are not in {regime.name}'s curve {list(regime.ratios)}")
    if args.stage == "all" and args.split == "test" and not args.smoke:
        missing = [r.name for r in regimes if r.name not in committed_uniform_regimes()]
        if missing:
            raise SystemExit(f"no committed multiplier curve for {', '.join(missing)}: run "
                             f"--stage uniform and commit {UNIFORM_RESULTS.relative_to(ROOT)} first")
    measurer = LocalMeasurer("onnxruntime", MeasureProtocol(threads=1, rounds=5, runs_per_round=40))
    rows: list[dict] = []
    for regime in regimes:
        data = regime_data(regime, args.split)
        original = pretrained(regime, data, Path(args.cache), device)
        start = network_fingerprint(original)
        if args.stage == "all" and args.split == "test" and not args.smoke:
            check_same_start(regime.name, start)
        analysis = NetworkAnalysis(original, spec_of(regime).example_input())
        progress = Progress(Path(args.out) / args.split / regime.name, regime, measurer)
        for seed in args.seeds:
            if args.stage == "all":
                for variant in (args.variant or [None]):
                    for metric in args.metrics:
                        run_netadapt(regime, metric, seed, original, data, analysis, progress,
                                     measurer, device, variant)
            for ratio in (args.ratios or regime.ratios):
                run_uniform(regime, ratio, seed, original, data, analysis, progress, device)
            if args.stage == "all" and args.allocation is not None:
                for fraction in (args.allocation or ALLOCATION_FRACTIONS):
                    run_allocation(regime, fraction, seed, original, data, analysis, progress,
                                   measurer, device)
        measure_all(regime, progress, original)
        from adaptation.netadapt.training import accuracy

        rows.append({"regime": regime.name, "kind": "original", "seed": None, "split": args.split,
                     "accuracy": accuracy(original, data.validation, device=device),
                     "train_device": device.type, "start": start,
                     "latency": progress.original_latency, "channels": {}})
        rows += [{**row, "split": args.split, "name": name}
                 for name, row in progress.rows.items() if row["seed"] in args.seeds]
    target = (Path(args.results) if args.results else
              (UNIFORM_RESULTS if args.stage == "uniform" else FULL_RESULTS)
              if args.split == "test" and not args.smoke and not args.ratios else None)
    document = {"machine": machine(), "commit": commit(), "rows": rows, "summary": summarise(rows),
                "placements": placements(rows)}
    if target is not None:
        document = write_results(target, rows, regimes, args.split)
        print(f"\nwrote {target}")
    print_report(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
