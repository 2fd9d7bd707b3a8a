"""The training device of fine-tunes and evaluations (``--train-device auto|cpu|cuda``).

The CPU cases run everywhere; the CUDA cases run where torch sees a GPU (``-k cuda``) and check
that the engine trains there while everything it hands back stays on the CPU.
"""
from __future__ import annotations

import sys

import pytest
import torch

from adaptation.netadapt.baselines import uniform_baseline
from adaptation.netadapt.cli import main as cli_main
from adaptation.netadapt.config import AdaptConfig
from adaptation.netadapt.graph import NetworkAnalysis
from adaptation.netadapt.loop import AdaptState, FinishRecord, IterationRecord, NetAdapt
from adaptation.netadapt.resources import MacsModel
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.netadapt.training import Cancelled, accuracy, resolve_device, train_steps

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SPEC = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 8)
CONFIG = AdaptConfig(metric="macs", budget=0.7, short_term_steps=3, long_term_epochs=0.1,
                     initial_reduction=0.15, decay=0.9, batch_size=64, seed=5)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU here")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def fresh() -> torch.nn.Module:
    torch.manual_seed(0)
    return SPEC.build()


def trained_on(data, device, steps: int = 30) -> tuple[torch.nn.Module, float]:
    model = fresh()
    loss = train_steps(model, data.train, steps, lr=0.05, batch_size=64, seed=1, device=device)
    return model, loss


def devices_of(model: torch.nn.Module) -> set[str]:
    return {t.device.type for t in [*model.parameters(), *model.buffers()]}


def trainable(model: torch.nn.Module) -> bool:
    """No parameter became an inference tensor (moved under inference mode), which no later
    fine-tune could train."""
    return not any(p.is_inference() for p in model.parameters())


@pytest.fixture(scope="module")
def original(digits8) -> torch.nn.Module:
    model, _ = trained_on(digits8, "cpu", 40)
    return model.eval()


def finished(records: list) -> FinishRecord:
    assert isinstance(records[-1], FinishRecord)
    return records[-1]


# ---------------------------------------------------------------- resolution


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@without_cuda
def test_cuda_is_refused_with_a_clear_message_where_there_is_no_gpu():
    with pytest.raises(ValueError, match="'cuda' was asked for but torch sees no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "cuda:0", "mps", ""])
def test_an_unknown_device_name_is_refused_naming_the_choices(name):
    with pytest.raises(ValueError, match="choose one of auto, cpu, cuda"):
        resolve_device(name)


@without_cuda
def test_the_cli_refuses_cuda_before_doing_anything(tmp_path, capsys):
    out = tmp_path / "model.pt"
    with pytest.raises(SystemExit) as stop:
        cli_main(["pretrain", "--arch", "plain_cnn", "--dataset", "digits", "--out", str(out),
                  "--train-device", "cuda"])
    assert stop.value.code == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


@without_cuda
def test_the_benchmark_refuses_cuda_before_training(monkeypatch, tmp_path, capsys):
    from bench import tradeoff

    monkeypatch.setattr(sys, "argv", ["tradeoff.py", "--smoke", "--train-device", "cuda",
                                      "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    with pytest.raises(SystemExit) as stop:
        tradeoff.main()
    assert stop.value.code == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_the_cli_trains_on_the_device_asked_for(digits8, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert cli_main(["pretrain", "--arch", "plain_cnn", "--width", "0.5", "--dataset", "digits",
                     "--resolution", "8", "--holdout", "0.15", "--epochs", "0.2",
                     "--out", str(out), "--train-device", "cpu"]) == 0
    assert "trained on cpu" in capsys.readouterr().out
    assert out.exists()


# ---------------------------------------------------------------- CPU: unchanged results


def test_an_explicit_cpu_device_gives_the_very_weights_of_the_default(digits8):
    default = fresh()
    default_loss = train_steps(default, digits8.train, 30, lr=0.05, batch_size=64, seed=1)
    explicit, explicit_loss = trained_on(digits8, "cpu")
    resolved, resolved_loss = trained_on(digits8, torch.device("cpu"))
    assert default_loss == explicit_loss == resolved_loss
    for other in (explicit, resolved):
        want, got = default.state_dict(), other.state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want)
    assert (accuracy(default, digits8.validation)
            == accuracy(explicit, digits8.validation, device="cpu")
            == accuracy(explicit, digits8.validation, device=torch.device("cpu")))


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_a_trained_model_comes_back_on_the_cpu(digits8, device):
    model, loss = trained_on(digits8, device)
    assert devices_of(model) == {"cpu"}
    assert loss == loss  # finite, not NaN
    accuracy(model, digits8.holdout, device=device)
    assert devices_of(model) == {"cpu"} and trainable(model)


def test_a_cancelled_fine_tune_also_leaves_the_model_on_the_cpu(digits8):
    def stop(done: int, total: int) -> None:
        if done:
            raise Cancelled("stop")

    model = fresh()
    with pytest.raises(Cancelled):
        train_steps(model, digits8.train, 100, lr=0.05, batch_size=64, seed=1, hook=stop, device="auto")
    assert devices_of(model) == {"cpu"}


def test_a_netadapt_run_on_an_explicit_cpu_device_matches_the_default(original, digits8):
    x = SPEC.example_input()
    default = finished(list(NetAdapt(original, x, digits8, CONFIG, MacsModel()).run()))
    engine = NetAdapt(original, x, digits8, CONFIG, MacsModel(), train_device="cpu")
    explicit = finished(list(engine.run()))
    assert engine.train_device == torch.device("cpu")
    assert explicit.channels == default.channels
    assert explicit.validation_accuracy == default.validation_accuracy
    want, got = default.model.state_dict(), explicit.model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert devices_of(explicit.model) == devices_of(original) == {"cpu"}


def test_the_training_device_is_no_part_of_the_checkpoint(original, digits8, tmp_path):
    """A run started on the CPU resumes under "auto" (the GPU, where there is one)."""
    x = SPEC.example_input()
    first = NetAdapt(original, x, digits8, CONFIG, MacsModel(), train_device="cpu")
    run = first.run()
    for record in run:
        if isinstance(record, IterationRecord):
            break
    run.close()
    first.state.save(tmp_path / "state.pt")
    loaded = AdaptState.load(tmp_path / "state.pt")
    assert loaded.config == CONFIG and "device" not in str(CONFIG.to_dict())
    resumed = NetAdapt(original, x, digits8, CONFIG, MacsModel(), state=loaded, train_device="auto")
    finish = finished(list(resumed.run()))
    assert finish.iterations > 1
    assert devices_of(finish.model) == {"cpu"}


def test_netadapt_refuses_an_unknown_training_device(original, digits8):
    with pytest.raises(ValueError, match="unknown training device 'tpu'"):
        NetAdapt(original, SPEC.example_input(), digits8, CONFIG, MacsModel(), train_device="tpu")


# ---------------------------------------------------------------- CUDA (where there is one)


@needs_cuda
def test_cuda_train_steps_learns_and_hands_the_model_back_on_the_cpu(digits8):
    before = accuracy(fresh(), digits8.validation)
    model, loss = trained_on(digits8, "cuda", 60)
    assert devices_of(model) == {"cpu"}
    assert loss == loss and loss < 2.3  # below chance (ln 10) after training
    assert accuracy(model, digits8.validation, device="cuda") > before
    assert devices_of(model) == {"cpu"} and trainable(model)
    train_steps(model, digits8.train, 5, lr=0.05, batch_size=64, seed=2)  # on, on the CPU
    # Same seeds on the GPU land close to the CPU's weights (not bitwise: other kernels).
    cpu_model, cpu_loss = trained_on(digits8, "cpu", 60)
    assert loss == pytest.approx(cpu_loss, abs=0.05)


@needs_cuda
def test_cuda_netadapt_run_and_uniform_baseline(original, digits8, tmp_path):
    x = SPEC.example_input()
    engine = NetAdapt(original, x, digits8, CONFIG, MacsModel(), train_device="cuda")
    assert engine.train_device.type == "cuda"
    records = list(engine.run())
    finish = finished(records)
    assert finish.budget_met
    assert devices_of(finish.model) == devices_of(original) == {"cpu"}
    assert all(devices_of(r.model) == {"cpu"} for r in records if isinstance(r, IterationRecord))
    assert all(t.device.type == "cpu" for t in engine.state.model_state.values())
    assert finish.validation_accuracy > 0.3
    engine.state.save(tmp_path / "state.pt")  # a checkpoint of CPU tensors, loadable anywhere
    assert AdaptState.load(tmp_path / "state.pt").channels == finish.channels
    baseline = uniform_baseline(original, x, NetworkAnalysis(original, x), digits8, CONFIG, 0.5, 9,
                                device="cuda")
    assert devices_of(baseline.model) == {"cpu"}
    assert 0.0 <= baseline.validation_accuracy <= 1.0


def test_evaluation_batches_suit_the_device_and_do_not_change_the_score(digits8, monkeypatch):
    """On a CPU, scoring runs in cache-sized batches (bench/eval_batch.py: a third of the time of
    batches of 1,000); the accuracy is the same whatever the batch."""
    from adaptation.netadapt import training

    model, _ = trained_on(digits8, "cpu")
    sizes: list[int] = []
    real = training.iterate_batches

    def recording(split, batch_size, **kwargs):
        sizes.append(batch_size)
        return real(split, batch_size, **kwargs)

    monkeypatch.setattr(training, "iterate_batches", recording)
    default = accuracy(model, digits8.validation)
    assert sizes == [training.CPU_EVAL_BATCH] and training.CPU_EVAL_BATCH < len(digits8.validation)
    assert default == accuracy(model, digits8.validation, batch_size=len(digits8.validation))
