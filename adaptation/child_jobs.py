"""Child jobs of an adaptation, drawn on its chart: a long-term fine-tune of one of its points,
and the uniform width-multiplier baseline. They run like adaptations (claim, lease, cancel,
park while their device measures) through ``JobRunner``'s bookkeeping; only ``_run`` differs.

- ``FinetuneRunner`` (kind "finetune", setting ``finetune_iteration``): loads that iteration's
  network from the parent, fine-tunes it for ``long_term_epochs`` (1 when the parent had 0),
  scores it on the holdout and validation splits and exports it in every format. No measurement:
  the architecture, so the latency, is the iteration's.
- ``BaselineRunner`` (kind "baseline", setting ``baseline_ratios``): every group keeps the same
  fraction of its channels (L2 selection), fine-tuned as long as the parent's chosen lineage was
  (its iterations' short-term steps, then the long-term fine-tune). Each ratio's result is kept
  in a file as it is done, so a job parked for measurements does not train again. Latency: the
  device's table (the parent's calibration) and a whole-network measurement of every ratio,
  interleaved in one request; the table is the one the parent filled, extended where needed.

Both publish their points on the parent's event stream (``job.child``), so its chart shows them.
"""
from __future__ import annotations

import dataclasses

import torch
from django.db import transaction
from django.utils import timezone

from adaptation.events import publish
from adaptation.job_files import JobFiles, media_path, write_atomically
from adaptation.job_inputs import JobError
from adaptation.job_runner import JobRunner
from adaptation.models import Iteration, Job
from adaptation.netadapt.baselines import uniform_baseline
from adaptation.netadapt.distillation import fine_tune_loss
from adaptation.netadapt.export import export_pytorch, load_pytorch
from adaptation.netadapt.graph import NetworkAnalysis
from adaptation.netadapt.loop import NeedsMeasurement, NetworkRequest, long_term_finetune
from adaptation.netadapt.resources import LatencyTableModel
from adaptation.netadapt.training import accuracy
from devices.requests import device_table

#: Width ratios of the baseline when the job does not say.
DEFAULT_RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


class ChildRunner(JobRunner):
    """What both child jobs share: the start of a run, the parent, and the ending."""

    def _begin(self):
        if self.job.parent_id is None:
            raise JobError(f"a {self.job.get_kind_display().lower()} job needs the adaptation it belongs to")
        return self._prepare()

    def _end_with(self, result: dict, child_payload: dict) -> None:
        """Finish the job with ``result`` and show it on the parent's chart."""
        with transaction.atomic():
            self._hold_lease()
            Job.objects.filter(pk=self.job.pk).update(status=Job.Status.FINISHED, result=result, error="",
                                                      finished_at=timezone.now())
            publish(self.job.pk, "job.finish", result)
            publish(self.job.pk, "job.status", {"status": Job.Status.FINISHED, "error": ""})
            publish(self.job.parent_id, "job.child", {"kind": self.job.kind, "job": self.job.pk,
                                                      **child_payload})


class FinetuneRunner(ChildRunner):
    def _run(self) -> None:
        config, options, spec, original, data = self._begin()
        number = options.finetune_iteration
        if number is None:
            raise JobError("a fine-tune job needs the iteration to fine-tune (finetune_iteration)")
        row = Iteration.objects.filter(job_id=self.job.parent_id, number=number).first()
        if row is None or number < 0:
            raise JobError(f"job #{self.job.parent_id} has no iteration {number} to fine-tune")
        path = media_path(row.model_file.name) if row.model_file else None
        if path is None or not path.is_file():
            raise JobError(f"the network file of iteration {number} of job #{self.job.parent_id} is missing")
        model = load_pytorch(path)
        if not config.long_term_epochs:
            config = dataclasses.replace(config, long_term_epochs=1.0)
        long_term_s = long_term_finetune(model, data, config, self._between_steps,
                                         loss_fn=fine_tune_loss(config, original))
        self._hold_lease()
        self._check_cancel()
        model.eval()
        channels = row.record["channels"]
        self.files.save_final(model, spec, channels)
        result = {"iteration": number, "channels": channels, "epochs": config.long_term_epochs,
                  "resource": row.resource, "resource_raw": row.resource_raw, "measured_ms": row.measured_ms,
                  "macs": row.macs, "params": row.params, "long_term_s": long_term_s,
                  "holdout_accuracy": accuracy(model, data.holdout),
                  "validation_accuracy": accuracy(model, data.validation),
                  "before": {"holdout_accuracy": row.holdout_accuracy,
                             "validation_accuracy": row.validation_accuracy}}
        self._end_with(result, {"points": [{**result, "label": f"iteration {number}, fine-tuned"}]})


class BaselineRunner(ChildRunner):
    def _run(self) -> None:
        config, options, spec, original, data = self._begin()
        ratios = sorted(set(options.baseline_ratios or DEFAULT_RATIOS))
        parent_iterations = Iteration.objects.filter(job_id=self.job.parent_id, number__gte=0).count()
        steps = max(1, parent_iterations) * config.short_term_steps
        example = spec.example_input()
        analysis = NetworkAnalysis(original, example)
        points, models = [], []
        for ratio in ratios:
            point, model = self._ratio(ratio, original, example, analysis, data, config, steps)
            points.append(point)
            models.append(model)
            self._hold_lease()
            self._check_cancel()
        if config.metric == "latency":
            self._latency(points, models, analysis, example)
        else:
            for point in points:
                point["resource"] = point[config.metric]
        result = {"points": points, "short_term_steps_total": steps}
        self._end_with(result, {"points": points})

    def _ratio(self, ratio, original, example, analysis, data, config, steps) -> tuple[dict, torch.nn.Module]:
        """One ratio's point and network, trained now or read from its file of an earlier run."""
        path = self.files.folder / f"uniform_{ratio:.4f}.pt"
        if path.exists():
            stored = torch.load(path, weights_only=True)
            model = load_pytorch(self.files.folder / f"uniform_{ratio:.4f}.net.pt")
            return stored, model
        baseline = uniform_baseline(original, example, analysis, data, config, ratio, steps,
                                    hook=self._between_steps)
        point = {**baseline.to_dict(), "label": f"uniform x{ratio:g}"}
        write_atomically(self.files.folder / f"uniform_{ratio:.4f}.net.pt",
                         lambda target: export_pytorch(baseline.model, self.spec, baseline.channels, target))
        write_atomically(path, lambda target: torch.save(point, target))
        publish(self.job.pk, "job.log", {"level": "info", "message":
                f"uniform x{ratio:g}: holdout {100 * point['holdout_accuracy']:.2f}%, "
                f"validation {100 * point['validation_accuracy']:.2f}%"})
        return point, baseline.model

    def _latency(self, points: list[dict], models: list, analysis: NetworkAnalysis, example) -> None:
        """Table estimates (with the parent's calibration) and interleaved whole measurements."""
        try:
            self.table = device_table(self.job.device)
        except ValueError as error:
            raise JobError(str(error)) from None
        resource = LatencyTableModel(self.table)
        parent_state = JobFiles(self.job.parent_id).load_checkpoint()
        if parent_state is not None:
            resource.calibration = parent_state.calibration
        signatures = [analysis.signatures(point["channels"]) for point in points]
        wanted = list(dict.fromkeys(s for group in signatures for s in group))
        missing = resource.missing(wanted)
        if missing:
            self._measure(NeedsMeasurement("look-up table of the uniform baseline", example, signatures=missing))
        request = NeedsMeasurement("uniform baseline, whole", example, networks=[
            NetworkRequest(point["label"], model, point["channels"]) for point, model in zip(points, models)])
        measured = self._measure(request)
        for point, group, result in zip(points, signatures, measured.networks):
            estimate = resource.estimate(group)
            point.update(resource=estimate.value, resource_raw=estimate.raw,
                         measured=result.to_dict(), measured_ms=result.min_ms)


RUNNERS = {"adapt": JobRunner, "finetune": FinetuneRunner, "baseline": BaselineRunner}
