"""The form that starts an adaptation job, and what its settings say about the job.

The job's settings are the engine's ``AdaptConfig.to_dict()`` plus the runner's options that are
not engine configuration (``holdout``: see ``adaptation.job_inputs.JobOptions``, whose
``parse_settings`` the runner uses); ``adapt_config_of`` gives the engine's part back. The engine's own validation decides what is a valid configuration; its
messages are shown next to the field they name (``SettingsError.problems``). The numeric fields take
their limits (the page's min/max attributes, the API schema's minimum/maximum) and the range in
their help text from the engine's ``SETTING_RANGES``, so the three cannot disagree.
"""
from __future__ import annotations

from dataclasses import fields as dataclass_fields

from django import forms
from django.forms.utils import pretty_name

from adaptation.access import datasets_visible_to
from adaptation.formatting import metric_unit, resource_text
from adaptation.models import CheckStatus, Dataset, ModelUpload
from adaptation.netadapt.config import (ABSOLUTE_BUDGETS, SELECTION_RULES, SETTING_RANGES, AdaptConfig,
                                        SettingsError, holdout_problem, preset_settings,
                                        range_problem, show_number)
from adaptation.netadapt.schedule import unreachable_warning
from adaptation.netadapt.table_check import PART_RUN, PART_TOLERANCE
from devices.access import devices_visible_to
from devices.models import Device

#: Settings stored next to the AdaptConfig fields (adaptation.job_inputs.JobOptions fields).
OPTION_SETTINGS = ("holdout", "latency_model")
LATENCY_MODEL_CHOICES = [("", "Automatic"), ("table", "Calibrated look-up table"),
                         ("whole", "Every candidate measured whole")]
ADAPT_CONFIG_FIELDS = tuple(f.name for f in dataclass_fields(AdaptConfig))
METRIC_CHOICES = [("latency", "Latency on the device (ms)"), ("macs", "MACs (indirect metric)"),
                  ("params", "Parameters (indirect metric)")]
SELECTION_LABELS = {"accuracy": "Best holdout accuracy (paper)",
                    "holdout_loss": "Lowest holdout loss (cross-entropy)",
                    "loss_per_resource": "Least accuracy loss per resource saved (official code)"}
BUDGET_MODES = [("percent", "% of the original"), ("absolute", "Absolute (ms, MACs or parameters)")]
PRESET_CHOICES = [("recommended", "Recommended: the levers below (beyond the paper)"),
                  ("paper", "The paper's plain NetAdapt: the levers below are ignored (all off)")]
#: The engine's defaults, which the lever fields start from (and take when left empty).
DEFAULTS = AdaptConfig()
LEVER_FIELDS = ("bn_recalibration_batches", "distillation_alpha", "distillation_temperature",
                "floor_minimum", "floor_fraction", "min_proposals")

# What built-in datasets feed a model before resizing (their summaries may not be filled in).
BUILTIN_INPUTS = {"digits": {"in_channels": 1, "resolution": 8, "num_classes": 10},
                  "fashion_mnist": {"in_channels": 1, "resolution": 28, "num_classes": 10}}
#: How an absolute budget's unit reads, by metric.
BUDGET_UNITS = {"latency": "ms", "macs": "MACs", "params": "parameters"}


def as_sentence(problem: str, name: str, label: str) -> str:
    """An engine problem (``"short_term_steps must be ..."``, see ``SettingsError``) said by the
    field's label: ``"Short-term fine-tune steps must be ... ."``."""
    if problem.startswith(name + " "):
        problem = label + problem[len(name):]
    return problem[:1].upper() + problem[1:] + "."


def ranged(field: forms.Field, name: str, help_text: str = "") -> forms.Field:
    """``field`` held to the engine's range of setting ``name``: min/max attributes on the page
    and in the API schema, the range in its help text, the engine's wording when out of it."""
    allowed = SETTING_RANGES[name]
    field.min_value, field.max_value = allowed.low, allowed.high
    field.widget.attrs.update({"min": allowed.low, "max": allowed.high,
                               "step": 1 if allowed.integer else "any"})
    label = field.label or pretty_name(name)

    def within_range(value: float) -> None:
        problem = range_problem(name, value)
        if problem:
            raise forms.ValidationError(as_sentence(problem, name, label))

    field.validators = [within_range]  # in place of Django's inclusive checks: open ends too
    field.help_text = " ".join(filter(None, [help_text, f"{allowed.describe().capitalize()}."]))
    return field


def _holdout_field() -> forms.FloatField:
    """A count of images or a fraction below 1: the limits are the count's (checked in
    ``clean_holdout_size`` with the engine's wording)."""
    count = SETTING_RANGES["holdout_count"]
    field = forms.FloatField(
        initial=0.1, label="Holdout size",
        help_text="Images carved from the training data to score proposals: a fraction above 0 "
                  f"and below 1, or a count of images from 1 to {show_number(count.high)}.")
    field.min_value, field.max_value = 0, count.high
    field.widget.attrs.update({"min": 0, "max": count.high})
    return field


def _budget_help() -> str:
    """The budget's ranges: a percentage, or an absolute amount up to the metric's limit."""
    limits = ", ".join(f"{show_number(allowed.high)} {BUDGET_UNITS[metric]}"
                       for metric, allowed in ABSOLUTE_BUDGETS.items())
    return (f"e.g. 50 (% of the original: above 0 and below 100), or 2.5 (ms). An absolute budget "
            f"is above 0 and at most {limits}.")


def adapt_config_of(settings: dict) -> AdaptConfig:
    """The engine configuration stored in a job's settings (the runner's options left out)."""
    return AdaptConfig.from_dict({k: v for k, v in settings.items() if k in ADAPT_CONFIG_FIELDS})


def schedule_warning(settings: dict, original: float | None = None) -> str | None:
    """Why the schedule cannot reach the budget, if it cannot; None when it can or is unknown.

    Relative budgets need nothing else; an absolute one needs the original resource.
    """
    try:
        config = adapt_config_of(settings)
    except (TypeError, ValueError):
        return None
    if config.budget_relative:
        budget, original = config.budget, 1.0
    elif original:
        budget = config.budget
    else:
        return None
    return unreachable_warning(budget, original, config.initial_reduction, config.decay,
                               config.max_iterations)


def original_resource(model: ModelUpload, metric: str) -> float | None:
    """The model's MACs or parameters as its pre-flight counted them (None for latency/unknown)."""
    if metric not in ("macs", "params"):
        return None
    value = (model.preflight or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def dataset_input(dataset: Dataset) -> dict | None:
    """Channels, resolution and classes of the dataset's images, if known."""
    summary = dataset.summary or {}
    if all(isinstance(summary.get(key), int) for key in ("in_channels", "resolution", "num_classes")):
        return {key: summary[key] for key in ("in_channels", "resolution", "num_classes")}
    return BUILTIN_INPUTS.get(dataset.builtin_name) if dataset.is_builtin else None


def _usable(chosen: ModelUpload | Dataset, what: str, check: str) -> ModelUpload | Dataset:
    """``chosen`` if it is ready; else why a job cannot use it yet (checking) or at all (rejected)."""
    if chosen.status == CheckStatus.CHECKING:
        raise forms.ValidationError(f"The {what} {chosen.name} is still being checked: start the job "
                                    f"once its {check} has passed.")
    if chosen.status != CheckStatus.READY:
        raise forms.ValidationError(f"The {what} {chosen.name} was rejected by its {check} and cannot "
                                    f"be adapted: {chosen.error}".rstrip(": "))
    return chosen


class JobForm(forms.Form):
    """Model, data, device, budget, schedule and levers of a NetAdapt run (defaults: the paper's
    schedule with the recommended levers; the "paper" preset turns the levers off)."""

    model = forms.ModelChoiceField(queryset=ModelUpload.objects.none(),
                                   help_text="Only models whose pre-flight check passed.")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none())
    device = forms.ModelChoiceField(queryset=Device.objects.none(),
                                    help_text="Latency is measured and looked up on this device.")
    metric = forms.ChoiceField(choices=METRIC_CHOICES, initial="latency")
    budget_mode = forms.ChoiceField(choices=BUDGET_MODES, initial="percent", label="Budget is")
    budget = forms.FloatField(initial=50, help_text=_budget_help())
    initial_reduction = ranged(forms.FloatField(initial=0.025), "initial_reduction",
                               "ΔR₀ as a fraction of the original.")
    decay = ranged(forms.FloatField(initial=0.96), "decay", "ΔRᵢ = initial reduction · R₀ · decayⁱ.")
    short_term_steps = ranged(forms.IntegerField(initial=100, label="Short-term fine-tune steps"),
                              "short_term_steps", "SGD steps of each proposal's fine-tune.")
    long_term_epochs = ranged(forms.FloatField(initial=1, label="Long-term fine-tune epochs"),
                              "long_term_epochs", "0 skips it.")
    channel_step = ranged(forms.IntegerField(initial=8), "channel_step",
                          "Channel counts are multiples of this.")
    selection = forms.ChoiceField(choices=[(rule, SELECTION_LABELS.get(rule, rule)) for rule in SELECTION_RULES],
                                  initial="accuracy")
    max_iterations = ranged(forms.IntegerField(initial=50), "max_iterations")
    holdout_size = _holdout_field()
    latency_model = forms.ChoiceField(
        choices=LATENCY_MODEL_CHOICES, required=False, initial="", label="Latency estimate",
        help_text="How a candidate's latency is known. Automatic: the calibrated look-up table, except "
                  "on a phone whose layer entries mostly drown in its per-call overhead, where every "
                  "candidate is measured whole (slower, and exact). A table whose predictions of the "
                  f"chosen networks miss their measurements by more than {PART_TOLERANCE:.0%} "
                  f"{PART_RUN} iterations in a row gives way to whole measurements; the log says when.")
    preset = forms.ChoiceField(
        choices=PRESET_CHOICES, initial="recommended", required=False,
        help_text="The levers below go beyond the NetAdapt paper; the uniform-width baselines "
                  "of a job get the same ones.")
    bn_recalibration_batches = ranged(
        forms.IntegerField(initial=DEFAULTS.bn_recalibration_batches, required=False,
                           label="Batch-norm re-estimation batches"),
        "bn_recalibration_batches",
        "Training batches that re-estimate batch-norm statistics after every fine-tune, before "
        "scoring (beyond the paper; 0 is off).")
    distillation_alpha = ranged(
        forms.FloatField(initial=DEFAULTS.distillation_alpha, required=False,
                         label="Distillation weight"),
        "distillation_alpha",
        "Weight of distillation from the original network in every fine-tune (beyond the "
        "paper; 0 is off: labels only).")
    distillation_temperature = ranged(
        forms.FloatField(initial=DEFAULTS.distillation_temperature, required=False,
                         label="Distillation temperature"),
        "distillation_temperature", "Softmax temperature of the distillation.")
    floor_minimum = ranged(
        forms.IntegerField(initial=DEFAULTS.floor_minimum, required=False, label="Channel floor"),
        "floor_minimum", "No group shrinks below this many channels (0: only the channel step).")
    floor_fraction = ranged(
        forms.FloatField(initial=DEFAULTS.floor_fraction, required=False,
                         label="Channel floor fraction"),
        "floor_fraction", "No group shrinks below this fraction of its original channels.")
    min_proposals = ranged(
        forms.IntegerField(initial=DEFAULTS.min_proposals, required=False, label="Fewest proposals"),
        "min_proposals",
        "When fewer groups than this can meet an iteration's target, the iteration asks for a "
        "smaller cut, the most that many groups can each make, so it still has a choice and each "
        "group is cut only as far as that cut needs (beyond the paper; 0 is off: the schedule's "
        "target, and each group's nearest count when none can meet it).")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        # Every model and dataset of the user's is a valid choice, so that one still being checked
        # or rejected gets its own message (clean_model, clean_dataset); the page offers ready ones.
        self.fields["model"].queryset = ModelUpload.objects.filter(owner=user)
        self.fields["dataset"].queryset = datasets_visible_to(user)
        for name in ("model", "dataset"):
            self.fields[name].widget.choices = forms.models.ModelChoiceIterator(self.fields[name])
            self.fields[name].widget.choices.queryset = self.fields[name].queryset.filter(status=CheckStatus.READY)
        self.fields["device"].queryset = devices_visible_to(user)
        self.config: AdaptConfig | None = None

    def clean_model(self) -> ModelUpload:
        return _usable(self.cleaned_data["model"], "model", "pre-flight check")

    def clean_dataset(self) -> Dataset:
        return _usable(self.cleaned_data["dataset"], "dataset", "check")

    def clean_holdout_size(self) -> int | float:
        size = self.cleaned_data["holdout_size"]
        if size <= 0:
            raise forms.ValidationError("The holdout needs at least one image.")
        if size >= 1:
            if size != int(size):
                raise forms.ValidationError("A holdout of 1 or more is a count of images: use a whole number.")
            size = int(size)
        problem = holdout_problem(size, "the holdout size")
        if problem:
            raise forms.ValidationError(as_sentence(problem, "", ""))
        return size

    def clean(self):
        data = super().clean()
        self._check_budget(data)
        self._check_fit(data)
        self._check_holdout(data)
        if not self.errors:
            self._build_config(data)
        return data

    def _check_budget(self, data: dict) -> None:
        budget, mode, metric = data.get("budget"), data.get("budget_mode"), data.get("metric")
        if budget is None or mode is None:
            return
        if budget <= 0:
            self.add_error("budget", "The budget must be positive.")
        elif mode == "percent" and budget >= 100:
            self.add_error("budget", f"A budget of {budget:g}% of the original is already met: "
                                     "choose less than 100%.")
        elif mode == "absolute" and data.get("model") is not None and metric is not None:
            original = original_resource(data["model"], metric)
            if original is not None and budget >= original:
                has = resource_text(original, metric_unit(metric))
                self.add_error("budget", f"The model already has {has}, within the budget of "
                                         f"{budget:,.0f}: the budget is already met.")

    def _check_fit(self, data: dict) -> None:
        model, dataset = data.get("model"), data.get("dataset")
        if model is None or dataset is None:
            return
        given = dataset_input(dataset)
        if given is None or None in (model.num_classes, model.in_channels, model.resolution):
            return
        # preflight loads ONNX Runtime, which the web process otherwise never needs.
        from adaptation.preflight import PreflightError, check_dataset_fits
        from adaptation.netadapt.spec import ArchitectureSpec

        spec = ArchitectureSpec(arch=model.arch or model.source, num_classes=model.num_classes,
                                in_channels=model.in_channels, width=model.width,
                                resolution=model.resolution)
        try:
            check_dataset_fits(spec, **given)
        except PreflightError as error:
            # Images are resized to the model's resolution when the data loads: only channels
            # and classes must match.
            if (given["in_channels"], given["num_classes"]) != (model.in_channels, model.num_classes):
                self.add_error("dataset", f"This dataset does not fit the model: {error}.")

    def _check_holdout(self, data: dict) -> None:
        size, dataset = data.get("holdout_size"), data.get("dataset")
        if not isinstance(size, int) or dataset is None:
            return
        sizes = (dataset.summary or {}).get("sizes") or {}
        pool = sizes.get("train", 0) + sizes.get("holdout", 0)
        if pool and size >= pool:
            self.add_error("holdout_size", f"{dataset.name} has {pool} training images: a holdout of "
                                           f"{size} would leave none to fine-tune on.")

    def _build_config(self, data: dict) -> None:
        relative = data["budget_mode"] == "percent"
        try:
            self.config = AdaptConfig(
                metric=data["metric"], budget=data["budget"] / 100 if relative else data["budget"],
                budget_relative=relative, initial_reduction=data["initial_reduction"],
                decay=data["decay"], channel_step=data["channel_step"],
                short_term_steps=data["short_term_steps"], long_term_epochs=data["long_term_epochs"],
                selection=data["selection"], max_iterations=data["max_iterations"],
                measure_iterations=data["metric"] == "latency", **self._levers(data))
        except SettingsError as error:
            for name, problem in error.problems.items():
                # A field the form does not show (the engine's defaults) is the form's problem.
                field = self.fields.get(name)
                label = (field.label if field else None) or pretty_name(name)
                self.add_error(name if field else None, as_sentence(problem, name, label))

    @staticmethod
    def _levers(data: dict) -> dict:
        """The levers as the form gives them (one left empty: the engine's default), or all off
        under the "paper" preset."""
        if data.get("preset") == "paper":
            return preset_settings("paper")
        given = {name: data.get(name) for name in LEVER_FIELDS}
        return {name: value for name, value in given.items() if value is not None}

    def job_settings(self) -> dict:
        """What the job row stores: the engine configuration plus the runner's options. A latency
        job stores the estimate chosen on the form; left automatic, a phone's job lets the runner
        choose (``latency_model`` "auto": the look-up table, or whole networks where the phone's
        entries drown in per-call overhead) and any other device's uses the table."""
        assert self.config is not None, "call is_valid() first"
        settings = {**self.config.to_dict(), "holdout": self.cleaned_data["holdout_size"]}
        device = self.cleaned_data.get("device")
        chosen = self.cleaned_data.get("latency_model") or (
            "auto" if device is not None and device.kind == "phone" else "")
        if self.config.metric == "latency" and chosen:
            settings["latency_model"] = chosen
        return settings
