"""Check an uploaded model file (PyTorch weights or ONNX) in a child process bounded in memory and time.

``check_model_file(path, source, spec, ...)`` is what the checking worker's task calls: the
pre-flight (``adaptation.preflight``: load or convert, trace, dry-run pruning, export check) runs
in a ``run_limited`` child, which imports torch there and nowhere near the web process. Its answer
is a ``ModelCheck``: accepted with the pre-flight report, or refused with a message for the user
and how the check ended (``invalid``: the pre-flight said no; ``memory``, ``time``, ``crash``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from adaptation.checking.limits import ChildFailed, LimitExceeded, LimitedRun, run_limited
from webapp.lib.formatting import human_size

#: Private writable memory of one model check: importing torch alone takes about 0.7 GB
#: (docs/untrusted-files.md); the pre-flight of a small network adds a few hundred MB.
DEFAULT_MEMORY_BYTES = 2048 << 20
DEFAULT_SECONDS = 300.0

CheckKind = Literal["ok", "invalid", "memory", "time", "crash"]
#: ``run_limited``'s signature: tests may run the same function in their own process.
Runner = Callable[..., LimitedRun]


@dataclass(frozen=True)
class ModelCheck:
    """How a model file's check ended: ``kind`` "ok" with ``report`` and the fields read from the
    file (``fields``: num_classes, in_channels, resolution of an ONNX file), else ``error``."""

    kind: CheckKind
    report: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    peak_rss_bytes: int | None = None

    @property
    def accepted(self) -> bool:
        return self.kind == "ok"


def preflight_in_child(path: str, source: str, spec: dict[str, Any] | None,
                       allow_pickled_modules: bool) -> dict[str, Any]:
    """The child's side: load (or convert) the file and run the pre-flight; JSON in and out."""
    # Loaded in the child only: the checking worker itself never loads torch or a converter.
    from adaptation.netadapt.spec import ArchitectureSpec
    from adaptation.preflight import PreflightError, load_onnx, load_weights, preflight

    try:
        if source == "onnx":
            architecture, model = load_onnx(path)
            fields = {"num_classes": architecture.num_classes, "in_channels": architecture.in_channels,
                      "resolution": architecture.resolution}
        else:
            architecture = ArchitectureSpec(**spec)
            model = load_weights(path, architecture, allow_pickled_modules=allow_pickled_modules)
            fields = {}
        report = preflight(model, architecture)
    except PreflightError as error:
        return {"rejected": str(error)}
    return {"report": report.to_dict(), "fields": fields}


def check_model_file(path: str | os.PathLike[str], source: str, spec: dict[str, Any] | None, *,
                     allow_pickled_modules: bool = False, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                     seconds: float = DEFAULT_SECONDS, runner: Runner = run_limited) -> ModelCheck:
    """The pre-flight of the file at ``path`` (``source`` "onnx" or "builtin" with ``spec``, an
    ``ArchitectureSpec``'s fields) in a bounded child; never raises for what the file does."""
    arguments = (os.fspath(path), source, spec, allow_pickled_modules)
    try:
        run = runner(preflight_in_child, arguments, memory_bytes=memory_bytes, seconds=seconds)
    except LimitExceeded as error:
        if error.kind == "memory":
            message = (f"checking the model needed more than "
                       f"{human_size(memory_bytes, trim_zero=False)} of memory")
        else:
            message = f"checking the model took longer than {seconds:g} s"
        return ModelCheck(error.kind, error=message, peak_rss_bytes=error.peak_rss_bytes)
    except ChildFailed as error:
        return ModelCheck("crash", error=f"the model could not be checked (internal error: {error.error_type})",
                          peak_rss_bytes=error.peak_rss_bytes)
    answer = run.value if isinstance(run.value, dict) else {}
    if "report" not in answer:
        return ModelCheck("invalid", error=str(answer.get("rejected", "the check gave no answer")),
                          peak_rss_bytes=run.peak_rss_bytes)
    return ModelCheck("ok", report=answer["report"], fields=answer.get("fields") or {},
                      peak_rss_bytes=run.peak_rss_bytes)
