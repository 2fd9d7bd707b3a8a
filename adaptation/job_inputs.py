"""What a job runs on, read from its rows: its settings, its network, its data; and how its
failures are told to the user. Shared by the job runner (``adaptation.job_runner``) and the tasks that
fine-tune its proposals (``adaptation.proposals``), which load the same inputs in other processes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch.nn as nn
from django.conf import settings

from adaptation.archives import ArchiveError
from adaptation.job_files import media_path
from adaptation.models import Job
from adaptation.netadapt.architectures import Architecture
from adaptation.netadapt.checks import error_summary
from adaptation.netadapt.config import AdaptConfig, holdout_problem, range_problem
from adaptation.netadapt.data import (DatasetSplits, DatasetUnavailable, InvalidDataset,
                                      load_dataset, load_image_folder)
from adaptation.netadapt.export import ExportMismatch
from adaptation.netadapt.image_folder import PixelLimits
from adaptation.netadapt.loop import BudgetError
from adaptation.netadapt.steps import NoProposalError
from adaptation.preflight import PreflightError, check_dataset_fits, load_upload_architecture

#: Holdout carved from Fashion-MNIST's 60k training images by default (the paper-sized holdout);
#: other datasets default to a tenth of their training images.
FASHION_MNIST_HOLDOUT = 5000
DEFAULT_HOLDOUT_FRACTION = 0.1


class JobError(Exception):
    """The job cannot run; the message is shown to the user as is."""


#: Exceptions whose message is written for the user; anything else is an internal error.
USER_ERRORS = (JobError, BudgetError, NoProposalError, DatasetUnavailable, InvalidDataset,
               PreflightError, ArchiveError, ExportMismatch)


#: How a latency job estimates candidates (``JobOptions.latency_model``).
LATENCY_MODELS = ("table", "whole", "auto")


@dataclass(frozen=True)
class JobOptions:
    """Job settings that are not the engine's ``AdaptConfig``."""

    holdout: int | float | None = None  # holdout split: a count, or a fraction below 1 (None: default)
    limit_train: int | None = None      # cap on training images (built-in datasets; quick runs)
    # "table": calibrated look-up table; "whole": measure candidates whole; "auto": the runner
    # chooses once the original network's entries are in (adaptation.job_runner; phones' jobs)
    latency_model: str = "table"
    finetune_iteration: int | None = None       # a fine-tune job: the parent's iteration it fine-tunes
    baseline_ratios: list[float] | None = None  # a baseline job: the width ratios (None: the defaults)


def parse_settings(raw: dict) -> tuple[AdaptConfig, JobOptions]:
    """Split ``Job.settings`` into the engine's config and the job's options (JobError if bad).

    ``Job.settings`` holds ``AdaptConfig`` fields plus, optionally, ``JobOptions`` fields.
    """
    raw = dict(raw or {})
    option_names = {f.name for f in fields(JobOptions)}
    options = {name: raw.pop(name) for name in list(raw) if name in option_names}
    unknown = sorted(set(raw) - {f.name for f in fields(AdaptConfig)})
    if unknown:
        raise JobError(f"invalid settings: unknown setting(s) {', '.join(unknown)}")
    try:
        config = AdaptConfig.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise JobError(f"invalid settings: {error}") from None
    holdout = options.get("holdout")
    if holdout is not None:
        problem = holdout_problem(holdout)
        if problem:
            raise JobError(f"invalid settings: {problem}")
        options["holdout"] = int(holdout) if holdout >= 1 else float(holdout)
    limit = options.get("limit_train")
    if limit is not None and (problem := range_problem("limit_train", limit)):
        raise JobError(f"invalid settings: {problem}")
    if options.get("latency_model", "table") not in LATENCY_MODELS:
        raise JobError(f"invalid settings: latency_model must be one of {', '.join(map(repr, LATENCY_MODELS))}")
    number = options.get("finetune_iteration")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 0):
        raise JobError(f"invalid settings: finetune_iteration must be an iteration number, not {number!r}")
    ratios = options.get("baseline_ratios")
    if ratios is not None and (not isinstance(ratios, list) or not ratios or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1 for r in ratios)):
        raise JobError(f"invalid settings: baseline_ratios must be width ratios between 0 and 1, not {ratios!r}")
    return config, JobOptions(**options)


def describe_error(error: BaseException) -> str:
    """What the user is told about a failure: the message of a known error, else its type."""
    if isinstance(error, USER_ERRORS):
        return error_summary(error) or type(error).__name__
    return f"internal error: {type(error).__name__}: {error_summary(error)}".rstrip(": ")


def load_job_model(job: Job) -> tuple[Architecture, nn.Module]:
    """The job's original network and the architecture that rebuilds it (a built-in
    ``ArchitectureSpec`` or an ``OnnxArchitecture``); PreflightError when unusable."""
    return load_upload_architecture(job.model, allow_pickled_modules=settings.NETADAPT_ALLOW_PICKLED_MODELS)


def load_job_data(job: Job, spec: Architecture, config: AdaptConfig,
                  options: JobOptions) -> DatasetSplits:
    """The job's dataset split by its seed, checked to fit the network."""
    dataset = job.dataset
    holdout = options.holdout
    if dataset.kind == "builtin":
        if holdout is None:
            holdout = (FASHION_MNIST_HOLDOUT if dataset.builtin_name == "fashion_mnist"
                       else DEFAULT_HOLDOUT_FRACTION)
        data = load_dataset(dataset.builtin_name, holdout_size=holdout, resolution=spec.resolution,
                            seed=config.seed, limit_train=options.limit_train)
    else:
        data = _load_uploaded_data(dataset, spec, config,
                                   DEFAULT_HOLDOUT_FRACTION if holdout is None else holdout)
    check_dataset_fits(spec, in_channels=data.in_channels, resolution=data.resolution,
                       num_classes=data.num_classes)
    return data


def _load_uploaded_data(dataset, spec: Architecture, config: AdaptConfig,
                        holdout: int | float) -> DatasetSplits:
    """An uploaded dataset's images, from the folder its upload was extracted into.

    ``uploads.store_dataset_upload`` extracts the zip once and keeps only that folder, named by
    ``dataset.archive``; its channels are those the upload settled on (``summary["in_channels"]``),
    so the job sees the images the job form checked against the network. The images are held as
    uint8 (the engine normalises a batch at a time) and read within the upload's pixel limits.
    """
    folder = media_path(dataset.archive.name) if dataset.archive.name else None
    if folder is None or not folder.is_dir():
        raise JobError(f"the images of dataset '{dataset.name}' are missing")
    channels = (dataset.summary or {}).get("in_channels")
    grayscale = None if channels not in (1, 3) else channels == 1
    limits = PixelLimits(settings.DATASET_IMAGE_MAX_PIXELS, settings.DATASET_MAX_PIXELS)
    return load_image_folder(folder, holdout_size=holdout, resolution=spec.resolution,
                             grayscale=grayscale, seed=config.seed, limits=limits)
