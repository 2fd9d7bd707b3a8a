"""Upload-time checks: weights files are loaded safely and networks are dry-run before adaptation."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import adaptation.preflight as preflight_module
from adaptation.netadapt.export import export_pytorch
from adaptation.netadapt.graph import GroupPruner, NetworkAnalysis, pruned_copy
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.preflight import PreflightError, check_dataset_fits, load_weights, preflight
from devices.measure.builders import model_to_onnx

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SPECS = {
    "plain_cnn": ArchitectureSpec("plain_cnn", 3, 1, 0.25, 8),
    "mobilenet_v1": ArchitectureSpec("mobilenet_v1", 3, 1, 0.25, 8),
}
PLAIN = SPECS["plain_cnn"]


def _model(spec: ArchitectureSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return spec.build().eval()


def _save(tmp_path, payload, name: str = "weights.pt"):
    path = tmp_path / name
    torch.save(payload, path)
    return path


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(PreflightError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def _same_outputs(a: nn.Module, b: nn.Module, spec: ArchitectureSpec) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(spec.example_input()), b.eval()(spec.example_input()))


# --------------------------------------------------------------------------- files that load


@pytest.mark.parametrize("arch", list(SPECS))
def test_good_state_dict_passes_and_report_matches_the_analysis(tmp_path, arch):
    spec = SPECS[arch]
    original = _model(spec, seed=1)
    loaded = load_weights(_save(tmp_path, original.state_dict()), spec)
    assert _same_outputs(loaded, original, spec)

    report = preflight(loaded, spec)
    analysis = NetworkAnalysis(loaded, spec.example_input())
    config = analysis.original_config()
    assert [g["name"] for g in report.groups] == analysis.group_names
    assert [g["channels"] for g in report.groups] == [g.channels for g in analysis.groups]
    assert report.groups[0]["out_layers"] and isinstance(report.groups[0]["in_layers"], list)
    assert report.macs == analysis.macs(config) > 0
    assert report.params == analysis.params(config) > 0
    assert report.layers == len(analysis.layers)
    assert report.onnx_bytes > 1000 and report.seconds > 0
    assert json.loads(json.dumps(report.to_dict()))["spec"] == spec.to_dict()
    assert _same_outputs(loaded, original, spec)  # the dry run pruned a copy, not the model


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_wrappers_load(tmp_path, key):
    original = _model(PLAIN, seed=2)
    path = _save(tmp_path, {key: original.state_dict(), "epoch": 7, "best_accuracy": 0.9})
    assert _same_outputs(load_weights(path, PLAIN), original, PLAIN)


def test_data_parallel_prefix_is_stripped(tmp_path):
    original = _model(PLAIN, seed=3)
    state = {f"module.{k}": v for k, v in original.state_dict().items()}
    assert _same_outputs(load_weights(_save(tmp_path, state), PLAIN), original, PLAIN)


def test_netadapt_pytorch_export_loads_as_the_pruned_network(tmp_path):
    model = _model(PLAIN, seed=4)
    x = PLAIN.example_input()
    analysis = NetworkAnalysis(model, x)
    config = {g.name: g.channels // 2 for g in analysis.groups}
    pruned = pruned_copy(model, x, config).eval()
    channels = GroupPruner(pruned, x).channels()
    path = tmp_path / "adapted.pt"
    export_pytorch(pruned, PLAIN, channels, path)

    loaded = load_weights(path, PLAIN)
    assert GroupPruner(loaded, x).channels() == channels
    assert _same_outputs(loaded, pruned, PLAIN)
    report = preflight(loaded, PLAIN)
    assert {g["name"]: g["channels"] for g in report.groups} == channels

    other = ArchitectureSpec("plain_cnn", 3, 1, 0.5, 8)
    message = _message(load_weights, path, other)
    assert "width 0.25" in message and "width 0.5" in message


# --------------------------------------------------------------------------- files that are refused


def _truncated_zip(tmp_path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_model(PLAIN).state_dict(), buffer)
    return buffer.getvalue()[:300]


@pytest.mark.parametrize("content", [b"\x00garbage bytes" * 20, b"", "truncated", b"PK\x03\x04"])
def test_not_a_pytorch_file(tmp_path, content):
    if content == "truncated":
        content = _truncated_zip(tmp_path)
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    assert "not a PyTorch weights file" in _message(load_weights, path, PLAIN)


def test_a_plain_pickle_is_not_a_pytorch_file(tmp_path):
    import pickle

    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert "not a PyTorch weights file" in _message(load_weights, path, PLAIN)


def test_a_pickled_whole_model_is_refused_unless_allowed(tmp_path):
    original = _model(PLAIN, seed=5)
    path = _save(tmp_path, original)
    message = _message(load_weights, path, PLAIN)
    assert "pickles a whole model object" in message and "arbitrary code" in message
    assert "state_dict()" in message
    loaded = load_weights(path, PLAIN, allow_pickled_modules=True)
    assert _same_outputs(loaded, original, PLAIN)


def test_a_checkpoint_with_other_python_objects_is_refused(tmp_path):
    path = _save(tmp_path, {"state_dict": _model(PLAIN).state_dict(), "accuracy": np.float64(0.5)})
    message = _message(load_weights, path, PLAIN)
    assert "pickled Python object" in message and "arbitrary code" in message
    assert "whole model" not in message
    load_weights(path, PLAIN, allow_pickled_modules=True)


def test_weights_of_another_width_list_shape_mismatches(tmp_path):
    narrow = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 28)
    wide = ArchitectureSpec("plain_cnn", 10, 1, 1.0, 28)
    message = _message(load_weights, _save(tmp_path, _model(narrow).state_dict()), wide)
    assert "layer features.0.0.weight: file has (16, 1, 3, 3), architecture expects (32, 1, 3, 3)" in message
    assert "plain_cnn (width 1" in message and "10 classes" in message and "1-channel" in message
    assert "and " in message and "more" in message  # only the first few are listed


def test_wrong_number_of_classes_names_the_classifier(tmp_path):
    five = ArchitectureSpec("plain_cnn", 5, 1, 0.25, 8)
    message = _message(load_weights, _save(tmp_path, _model(five).state_dict()), PLAIN)
    assert "layer classifier.weight: file has (5, 64), architecture expects (3, 64)" in message
    assert "layer classifier.bias: file has (5,), architecture expects (3,)" in message
    assert "2 shape mismatch(es)" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = dict(_model(PLAIN).state_dict())
    del state["classifier.bias"]
    state["head.extra.weight"] = torch.zeros(2)
    message = _message(load_weights, _save(tmp_path, state), PLAIN)
    assert "1 missing key(s): classifier.bias" in message
    assert "1 unexpected key(s): head.extra.weight" in message


def test_non_tensor_entries_are_refused(tmp_path):
    state = dict(_model(PLAIN).state_dict())
    state["classifier.bias"] = [0.0, 0.0, 0.0]
    message = _message(load_weights, _save(tmp_path, state), PLAIN)
    assert "not tensors" in message and "'classifier.bias' (list)" in message


def test_a_dictionary_without_weights_is_refused(tmp_path):
    message = _message(load_weights, _save(tmp_path, {"epoch": 3, "lr": 0.1}), PLAIN)
    assert "without weights" in message and "'epoch'" in message


def test_nan_weights_are_refused(tmp_path):
    state = dict(_model(PLAIN).state_dict())
    state["features.1.0.weight"] = torch.full_like(state["features.1.0.weight"], float("nan"))
    assert "NaN or infinite values in: features.1.0.weight" in _message(
        load_weights, _save(tmp_path, state), PLAIN)


# --------------------------------------------------------------------------- networks preflight refuses


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.mixer = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.mixer(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_a_grouped_convolution_is_named():
    message = _message(preflight, _Grouped(), PLAIN)
    assert "layer 'mixer'" in message and "grouped convolution (groups=2)" in message


def test_a_network_without_prunable_groups():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    assert "no prunable channel group" in _message(preflight, model, PLAIN)


def test_wrong_output_shape():
    message = _message(preflight, _model(ArchitectureSpec("plain_cnn", 5, 1, 0.25, 8)), PLAIN)
    assert "(1, 5)" in message and "expected (1, 3)" in message


def test_wrong_input_channels():
    message = _message(preflight, _model(ArchitectureSpec("plain_cnn", 3, 3, 0.25, 8)), PLAIN)
    assert "fails on a 1-channel 8 px input" in message


def test_a_failing_dry_run_names_the_group(monkeypatch):
    real = preflight_module.pruned_copy

    def breaks_on_one_group(model, example, targets):
        if "features.3.0" in targets:
            raise RuntimeError("size mismatch in a coupled layer")
        return real(model, example, targets)

    monkeypatch.setattr(preflight_module, "pruned_copy", breaks_on_one_group)
    message = _message(preflight, _model(PLAIN), PLAIN)
    assert "channel group 'features.3.0'" in message and "from 16 to 8 channels" in message
    assert "size mismatch in a coupled layer" in message


def test_onnx_export_failure_and_mismatch_are_reported(monkeypatch):
    model = _model(PLAIN)

    def fails(model, example):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(preflight_module, "model_to_onnx", fails)
    assert "ONNX export failed" in _message(preflight, model, PLAIN)

    other = _model(PLAIN, seed=9)  # the "export" of a different network: outputs differ
    monkeypatch.setattr(preflight_module, "model_to_onnx",
                        lambda model, example: model_to_onnx(other, example))
    message = _message(preflight, model, PLAIN)
    assert "ONNX export differs from PyTorch" in message


# --------------------------------------------------------------------------- datasets


def test_check_dataset_fits():
    spec = ArchitectureSpec("mobilenet_v1", 1000, 3, 1.0, 224)
    check_dataset_fits(spec, in_channels=3, resolution=224, num_classes=1000)
    message = _message(check_dataset_fits, spec, in_channels=1, resolution=28, num_classes=10)
    assert message == ("the model expects 3-channel 224 px images and 1000 classes; "
                       "the dataset has 1-channel 28 px images and 10 classes")


def test_the_module_does_not_need_the_web_stack():
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys, adaptation.preflight, adaptation.archives; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'celery', 'channels'}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
