"""Command line: ``python -m adaptation.netadapt pretrain|adapt ...`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from devices.measure import MeasureProtocol
from devices.measure.local import LocalMeasurer, device_facts

from .baselines import uniform_baseline
from .config import (PRESETS, SELECTION_RULES, SETTING_RANGES, AdaptConfig, holdout_problem,
                     preset_settings, range_problem)
from .data import BUILTIN_DATASETS, DatasetSplits, load_dataset, load_image_folder
from .export import export_all, export_pytorch, load_pytorch
from .graph import NetworkAnalysis
from .loop import (AdaptState, FinishRecord, IterationRecord, Measured, NeedsMeasurement, NetAdapt,
                   StartRecord, serve)
from .lut import MemoryLatencyTable
from .models import ARCHITECTURES
from .report import plot_tradeoff, write_csv, write_json
from .resources import METRICS, LatencyTableModel, WholeNetworkLatencyModel, exact_model
from .architectures import Architecture, architecture_from_dict
from .spec import ArchitectureSpec
from .table_check import PART_RUN, PART_TOLERANCE
from .training import TRAIN_DEVICES, accuracy, resolve_device, steps_for_epochs, train_steps

RUNTIME_CHOICES = ("onnxruntime", "torch", "torchscript")


def parse_budget(text: str, metric: str) -> tuple[float, bool]:
    """``"50%"`` → (0.5, relative); ``"1.5ms"`` or ``"2e6"`` → absolute in the metric's unit."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(%|ms)?\s*", text, re.I)
    if not match:
        raise ValueError(f"budget '{text}' is not a number, a percentage or ms")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    if unit == "%":
        if not 0 < value < 100:
            raise ValueError("a relative budget must be between 0% and 100%")
        return value / 100, True
    if unit == "ms" and metric != "latency":
        raise ValueError("a budget in ms needs --metric latency")
    if value <= 0:
        raise ValueError("the budget must be positive")
    return value, False


def load_data(name: str, *, holdout: int | float, resolution: int | None, seed: int,
              limit_train: int | None) -> DatasetSplits:
    if name in BUILTIN_DATASETS:
        return load_dataset(name, holdout_size=holdout, resolution=resolution, seed=seed,
                            limit_train=limit_train)
    if Path(name).is_dir():
        return load_image_folder(name, holdout_size=holdout, resolution=resolution or 32, seed=seed)
    raise SystemExit(f"dataset '{name}' is neither a built-in ({', '.join(BUILTIN_DATASETS)}) "
                     "nor an image folder")


def _holdout(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if problem := holdout_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return int(value) if value >= 1 else value


def _setting(name: str):
    """An argparse type: a number within ``SETTING_RANGES[name]`` (a clear error otherwise)."""
    whole = SETTING_RANGES[name].integer

    def parse(text: str) -> int | float:
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{text}' is not a {'whole number' if whole else 'number'}") from None
        if problem := range_problem(name, value):
            raise argparse.ArgumentTypeError(problem)
        return value
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _common_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion_mnist",
                        help=f"built-in ({', '.join(BUILTIN_DATASETS)}) or an image folder "
                             "(class_x/*.png) (default: %(default)s)")
    parser.add_argument("--resolution", type=_setting("resolution"), default=None,
                        help="input size in pixels (default: the dataset's own)")
    parser.add_argument("--holdout", type=_holdout, default=5000,
                        help="holdout carved from the training data to pick proposals: a count, "
                             "or a fraction below 1 (default: %(default)s)")
    parser.add_argument("--limit-train", type=_setting("limit_train"), default=None,
                        help="use at most this many training images (quick runs)")
    parser.add_argument("--batch-size", type=_setting("batch_size"), default=128,
                        help="SGD mini-batch size (default: %(default)s)")
    parser.add_argument("--seed", type=_setting("seed"), default=0,
                        help="seed of the data split, shuffling and fine-tunes (default: %(default)s)")


def _train_device(text: str) -> torch.device:
    """``--train-device``: resolved at parse time, so asking for a missing GPU fails at once."""
    try:
        return resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _train_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-device", type=_train_device, default="auto",
                        metavar="|".join(TRAIN_DEVICES),
                        help="where fine-tunes and accuracy evaluations run: auto (CUDA when "
                             "torch sees a GPU, else the CPU), cpu or cuda; latency is always "
                             "measured on the target device (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adaptation.netadapt",
        description="NetAdapt: adapt a trained CNN to a latency (or MACs/params) budget measured "
                    "on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="train a starting model (no weights are downloaded)",
                         description="Train an architecture from scratch on a dataset and save "
                                     "it in the engine's PyTorch format.")
    pre.add_argument("--arch", default="mobilenet_v1", choices=ARCHITECTURES,
                     help="architecture to build (default: %(default)s)")
    pre.add_argument("--width", type=_setting("width"), default=1.0, help="width multiplier (default: 1.0)")
    _common_data_args(pre)
    pre.add_argument("--epochs", type=_setting("pretrain_epochs"), default=5,
                     help="training epochs (default: %(default)s)")
    pre.add_argument("--lr", type=_setting("pretrain_lr"), default=0.1, help="peak SGD rate, cosine (default: 0.1)")
    pre.add_argument("--out", required=True, help="model file to write")
    _train_device_arg(pre)

    ada = sub.add_parser("adapt", help="run NetAdapt and write results, plot and models",
                         description="Run NetAdapt on a trained model and write results.json, "
                                     "iterations.csv, tradeoff.png, per-iteration models and "
                                     "the final model as ONNX, TorchScript and PyTorch.")
    ada.add_argument("--model", required=True, help="model file written by pretrain or adapt")
    _common_data_args(ada)
    _train_device_arg(ada)
    ada.add_argument("--metric", default="latency", choices=METRICS,
                     help="resource that drives the adaptation: measured latency, or MACs / "
                          "parameters for comparison (default: latency)")
    ada.add_argument("--budget", default="50%",
                     help="target: '50%%' of the original, '0.2ms', or an absolute MACs/params "
                          "count (default: 50%%)")
    ada.add_argument("--runtime", default="onnxruntime", choices=RUNTIME_CHOICES,
                     help="runtime the latency is measured in (default: %(default)s)")
    ada.add_argument("--latency-model", default="table", choices=("table", "whole"),
                     help="estimate latency from the per-layer look-up table (calibrated), or "
                          "measure every candidate network whole (slower; for tiny networks "
                          "whose layer sums are mostly call overhead) (default: table). A table "
                          "whose predictions of the chosen networks miss their measurements by "
                          f"more than {PART_TOLERANCE * 100:g}%% {PART_RUN} iterations in a row gives "
                          "way to whole measurements (a note says when)")
    ada.add_argument("--threads", type=_setting("threads"), default=1, help="inference threads (default: 1)")
    ada.add_argument("--rounds", type=_setting("rounds"), default=5,
                     help="interleaved measurement rounds (default: %(default)s)")
    ada.add_argument("--runs-per-round", type=_setting("runs_per_round"), default=40,
                     help="timed runs of each model or layer per round (default: %(default)s)")
    ada.add_argument("--table", default=None,
                     help="look-up table JSON to reuse and extend (default: OUT/lut.json)")
    ada.add_argument("--initial-reduction", type=_setting("initial_reduction"), default=0.025,
                     help="resource removed by the first iteration, as a fraction of the "
                          "original (default: 0.025, the paper's)")
    ada.add_argument("--decay", type=_setting("decay"), default=0.96,
                     help="each iteration removes this times the previous reduction "
                          "(default: 0.96, the paper's)")
    ada.add_argument("--channel-step", type=_setting("channel_step"), default=8,
                     help="channel counts stay multiples of this (default: 8)")
    ada.add_argument("--short-term-steps", type=_setting("short_term_steps"), default=100,
                     help="SGD steps of each proposal's short-term fine-tune (default: 100)")
    ada.add_argument("--short-term-lr", type=_setting("short_term_lr"), default=0.01,
                     help="learning rate of the short-term fine-tunes (default: 0.01)")
    ada.add_argument("--long-term-epochs", type=_setting("long_term_epochs"), default=1.0,
                     help="epochs of the final long-term fine-tune, 0 to skip (default: 1)")
    ada.add_argument("--long-term-lr", type=_setting("long_term_lr"), default=0.01,
                     help="peak learning rate of the long-term fine-tune, cosine (default: 0.01)")
    ada.add_argument("--selection", default="accuracy", choices=SELECTION_RULES,
                     help="keep the best holdout accuracy (paper), the lowest holdout "
                          "cross-entropy, or the least accuracy lost per resource saved "
                          "(official code) (default: accuracy)")
    ada.add_argument("--max-iterations", type=_setting("max_iterations"), default=50,
                     help="stop after this many iterations even if the budget is not met "
                          "(default: 50)")
    _lever_args(ada)
    ada.add_argument("--baselines", default="0.5,0.75",
                     help="uniform width ratios to compare against, comma separated, '' for "
                          "none (default: %(default)s)")
    ada.add_argument("--out", required=True, help="output folder")
    ada.add_argument("--resume", action="store_true",
                     help="continue from OUT/checkpoint.pt after the last finished iteration")
    return parser


def _lever_args(parser: argparse.ArgumentParser) -> None:
    """The levers beyond the paper; each left out takes the ``--preset``'s value."""
    paper, recommended = preset_settings("paper"), preset_settings("recommended")
    levers = parser.add_argument_group(
        "beyond the paper", "levers the NetAdapt paper does not use; the uniform baselines get "
        "the same training ones. Each option left out takes the preset's value.")
    levers.add_argument("--preset", default="recommended", choices=tuple(PRESETS),
                        help="'recommended' (this project's defaults) or 'paper' (the paper's "
                             "plain algorithm: every lever off) (default: %(default)s)")
    helps = {
        "bn_recalibration_batches": "re-estimate batch-norm statistics on this many training "
                                    "batches after every fine-tune, before scoring; 0 is off",
        "distillation_alpha": "weight of distillation from the original network in every "
                              "fine-tune; 0 is off (plain cross-entropy)",
        "distillation_temperature": "softmax temperature of the distillation",
        "floor_minimum": "no group shrinks below this many channels",
        "floor_fraction": "no group shrinks below this fraction of its original channels",
        "min_proposals": "when fewer groups than this can meet an iteration's target, ask for "
                         "the smaller cut that many groups can make; 0 is the paper's schedule",
    }
    for name, text in helps.items():
        default = (f"{recommended[name]:g} recommended, {paper[name]:g} paper"
                   if name in recommended else f"{AdaptConfig().distillation_temperature:g}")
        levers.add_argument("--" + name.replace("_", "-"), type=_setting(name), default=None,
                            help=f"{text} (default: {default}; "
                                 f"{SETTING_RANGES[name].describe()})")


def lever_settings(args: argparse.Namespace) -> dict:
    """The levers of ``args``: each given option, else the value of its ``--preset``."""
    chosen = preset_settings(args.preset)
    given = {name: getattr(args, name) for name in (*chosen, "distillation_temperature")
             if getattr(args, name) is not None}
    return {**chosen, **given}


def pretrain(args: argparse.Namespace) -> None:
    data = load_data(args.dataset, holdout=args.holdout, resolution=args.resolution,
                     seed=args.seed, limit_train=args.limit_train)
    spec = ArchitectureSpec(args.arch, data.num_classes, data.in_channels, args.width,
                            data.resolution)
    torch.manual_seed(args.seed)
    model = spec.build()
    steps = steps_for_epochs(data.train, args.epochs, args.batch_size)
    with tqdm(total=steps, desc="pretrain", unit="step") as bar:
        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
        train_steps(model, data.train, steps, lr=args.lr, batch_size=args.batch_size,
                    seed=args.seed, cosine=True, on_step=on_step, device=args.train_device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_pytorch(model, spec, {}, out)
    print(f"validation accuracy {accuracy(model, data.validation, device=args.train_device):.4f} "
          f"(trained on {args.train_device.type}); wrote {out}")


def _check_fits(model: torch.nn.Module, spec: Architecture, data: DatasetSplits) -> None:
    if (spec.in_channels, spec.resolution, spec.num_classes) != (
            data.in_channels, data.resolution, data.num_classes):
        raise SystemExit(
            f"the model expects {spec.in_channels}-channel {spec.resolution} px inputs and "
            f"{spec.num_classes} classes; the dataset has {data.in_channels}-channel "
            f"{data.resolution} px images and {data.num_classes} classes")


class _Measurements:
    """Serves the engine's measurement requests locally and keeps the table on disk."""

    def __init__(self, measurer: LocalMeasurer, table: MemoryLatencyTable, path: Path) -> None:
        self.measurer, self.table, self.path = measurer, table, path

    def serve(self, request: NeedsMeasurement) -> Measured:
        """Measure what ``request`` asks for: the layers into the table (saved), the networks'
        timings as the answer."""
        if request.signatures:
            with tqdm(total=len(request.signatures), desc=f"table: {request.reason}",
                      unit="layer", leave=False) as bar:
                def on_progress(done: int, total: int) -> None:
                    bar.n = done
                    bar.refresh()
                self.table.add(self.measurer.measure_signatures(request.signatures, on_progress))
            self.table.save(self.path)
        if not request.networks:
            return Measured()
        return Measured(list(self.measurer.measure_models([n.model for n in request.networks],
                                                          request.example_input)))


def _open_table(path: Path, measurer: LocalMeasurer) -> MemoryLatencyTable:
    meta = {"device": "local", "runtime": measurer.runtime_name,
            "runtime_version": measurer.runtime_version, "threads": measurer.threads}
    if path.exists():
        table = MemoryLatencyTable.load(path)
        mismatched = {k: (table.meta.get(k), v) for k, v in meta.items() if table.meta.get(k) != v}
        if mismatched:
            raise SystemExit(f"look-up table {path} was measured with different settings: "
                             + ", ".join(f"{k} {a} (table) vs {b}" for k, (a, b) in mismatched.items()))
        return table
    return MemoryLatencyTable(meta)


def adapt(args: argparse.Namespace) -> None:
    budget, relative = parse_budget(args.budget, args.metric)
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    data = load_data(args.dataset, holdout=args.holdout, resolution=args.resolution,
                     seed=args.seed, limit_train=args.limit_train)
    original = load_pytorch(args.model)
    spec = _load_spec(args.model)
    _check_fits(original, spec, data)
    config = AdaptConfig(
        metric=args.metric, budget=budget, budget_relative=relative,
        initial_reduction=args.initial_reduction, decay=args.decay,
        channel_step=args.channel_step, short_term_steps=args.short_term_steps,
        long_term_epochs=args.long_term_epochs, batch_size=args.batch_size,
        short_term_lr=args.short_term_lr, long_term_lr=args.long_term_lr,
        selection=args.selection, max_iterations=args.max_iterations, seed=args.seed,
        **lever_settings(args))
    measurer = LocalMeasurer(args.runtime, MeasureProtocol(
        threads=args.threads, rounds=args.rounds, runs_per_round=args.runs_per_round))
    table_path = Path(args.table) if args.table else out / "lut.json"
    table = _open_table(table_path, measurer)
    if args.metric != "latency":
        resource = exact_model(args.metric)
    elif args.latency_model == "whole":
        resource = WholeNetworkLatencyModel()
    else:
        resource = LatencyTableModel(table)
    state = None
    checkpoint = out / "checkpoint.pt"
    if args.resume:
        if not checkpoint.exists():
            raise SystemExit(f"--resume: no checkpoint at {checkpoint}")
        state = AdaptState.load(checkpoint)
        if state.config != config:
            stored, given = state.config.to_dict(), config.to_dict()
            differ = ", ".join(f"{k} {stored[k]!r} (checkpoint) vs {given[k]!r}"
                               for k in stored if stored[k] != given[k])
            raise SystemExit(f"--resume: the settings differ from the checkpoint's ({differ}); "
                             "use the same options as the interrupted run (a run started before "
                             "the levers existed resumes with --preset paper)")
    example = spec.example_input()
    analysis = NetworkAnalysis(original, example)
    engine = NetAdapt(original, example, data, config, resource, state=state, analysis=analysis,
                      train_device=args.train_device)
    service = _Measurements(measurer, table, table_path)
    results = {"config": config.to_dict(), "architecture": spec.to_dict(),
               "dataset": data.summary(), "device": device_facts(),
               "runtime": {"name": measurer.runtime_name, "version": measurer.runtime_version,
                           "threads": measurer.threads}, "groups": analysis.group_names,
               "train_device": args.train_device.type}
    finish = None
    bar = None
    for record in serve(engine.run(), service.serve):
        if isinstance(record, StartRecord):
            for warning in record.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(f"original: {record.resource.value:.4g} {resource.unit}, budget "
                  f"{record.budget:.4g}, validation accuracy {record.validation_accuracy:.4f}")
        elif isinstance(record, IterationRecord):
            if bar is None:
                bar = tqdm(total=100, desc="way to the budget", unit="%",
                           bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}{postfix}]")
            needed = engine.state.initial_resource - engine.state.budget
            bar.n = min(100.0, 100 * (engine.state.initial_resource - record.resource.value) / needed)
            bar.set_postfix(acc=f"{record.holdout_accuracy:.4f}", group=record.chosen_group)
            bar.refresh()
            for note in record.notes:
                tqdm.write(f"note: iteration {record.iteration}: {note}", file=sys.stderr)
            export_pytorch(record.model, spec, record.channels,
                           out / "models" / f"iteration_{record.iteration:03d}.pt")
            engine.state.save(checkpoint)
        elif isinstance(record, FinishRecord):
            finish = record
            engine.state.save(checkpoint)  # a finished run resumed is finished: no check again
    if bar is not None:
        bar.close()
    state = engine.state
    results["start"] = state.start
    results["iterations"] = state.records
    results["finish"] = finish.to_dict()
    results["calibration"] = (resource.calibration.quality()
                              if resource.calibration is not None else None)
    results["exports"] = {k: str(p) for k, p in
                          export_all(finish.model, spec, finish.channels, out, "final").items()}
    results["baselines"] = _baselines(args, original, example, analysis, data, config, state,
                                      measurer, finish)
    write_json(out / "results.json", results)
    write_csv(out / "iterations.csv", results)
    _plot(out / "tradeoff.png", results, resource.unit)
    print(f"final: {finish.resource.value:.4g} {resource.unit} (budget {finish.budget:.4g}), "
          f"validation accuracy {finish.validation_accuracy:.4f}"
          + (f", measured {finish.measured_ratio:.3f}x the original" if finish.measured_ratio else "")
          + f"; wrote {out}")


def _load_spec(path: str) -> Architecture:
    payload = torch.load(path, weights_only=True)
    return architecture_from_dict(payload["architecture"])


def _baselines(args, original, example, analysis, data, config, state, measurer, finish) -> list[dict]:
    ratios = [float(r) for r in args.baselines.split(",") if r.strip()]
    results = []
    steps_total = state.iteration * config.short_term_steps
    models = []
    for ratio in tqdm(ratios, desc="uniform baselines", leave=False):
        baseline = uniform_baseline(original, example, analysis, data, config, ratio, steps_total,
                                    device=args.train_device)
        results.append(baseline.to_dict())
        models.append(baseline.model)
    if models:
        stats = measurer.measure_models([original, finish.model, *models], example)
        for entry, measured in zip(results, stats[2:]):
            entry["measured"] = measured.to_dict()
            entry["measured_ratio"] = measured.min_ms / stats[0].min_ms
    return results


def _plot(path: Path, results: dict, unit: str) -> None:
    latency = results["config"]["metric"] == "latency"

    def x_of(record: dict) -> float:
        measured = record.get("measured")
        return measured["min_ms"] if (latency and measured) else record["resource"]

    start, finish = results["start"], results["finish"]
    series = {
        "NetAdapt iterations (holdout, short-term)":
            [(x_of(start), start["holdout_accuracy"])]
            + [(x_of(r), r["holdout_accuracy"]) for r in results["iterations"]],
        "original (validation)": [(x_of(start), start["validation_accuracy"])],
        "NetAdapt final (validation, long-term)":
            [((finish["ab_final"] or {}).get("min_ms", finish["resource"]) if latency
              else finish["resource"], finish["validation_accuracy"])],
        "uniform width (validation)":
            [((b.get("measured") or {}).get("min_ms", math.nan) if latency
              else b[results["config"]["metric"]],
              b["validation_accuracy"]) for b in results["baselines"]],
    }
    xlabel = "measured latency (ms, min of interleaved runs)" if latency else unit
    plot_tradeoff(path, series, xlabel=xlabel, ylabel="accuracy (%)",
                  title=f"{results['architecture']['arch']} on {results['dataset']['name']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        pretrain(args) if args.command == "pretrain" else adapt(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0
