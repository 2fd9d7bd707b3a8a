"""bench/tradeoff.py's summary: the figures of issue 8's goal recomputed from raw rows (the
benchmark itself trains for hours and is not run here)."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from bench.tradeoff_summary import (accuracy_at_latency, base_regime, goal_holds, latency_at_accuracy,
                                    monotone_curve, placements, ran_with, summarise)

RESULTS = sorted((Path(__file__).resolve().parent.parent / "bench" / "results").glob("tradeoff*.json"))


def row(kind: str, latency: float, accuracy: float, seed: int = 0, ratio: float | None = None,
        regime: str = "r") -> dict:
    extra = {"ratio": ratio} if ratio is not None else {}
    return {"regime": regime, "kind": kind, "seed": seed, "accuracy": accuracy,
            "latency": {"min_ms": latency, "p10_ms": latency, "median_ms": latency,
                        "p90_ms": latency}, **extra}


CURVE = [row("uniform", 0.1, 0.80, ratio=0.5), row("uniform", 0.2, 0.90, ratio=0.75),
         row("uniform", 0.3, 0.95, ratio=1.0)]


def test_the_monotone_fit_pools_a_dip_instead_of_following_it():
    curve = monotone_curve([(0.1, 0.8), (0.2, 0.9), (0.25, 0.86), (0.3, 0.95)])
    accuracies = [a for _, a in curve]
    assert accuracies == sorted(accuracies)
    assert accuracies[1] == accuracies[2] == pytest.approx(0.88)


def test_interpolation_both_ways_and_the_bounds_outside_the_curve():
    curve = monotone_curve([(0.1, 0.8), (0.2, 0.9), (0.3, 0.95)])
    assert latency_at_accuracy(curve, 0.85) == (pytest.approx(0.15), None)
    assert latency_at_accuracy(curve, 0.97) == (0.3, "lower")   # more accurate than x1
    assert latency_at_accuracy(curve, 0.70) == (0.1, "upper")   # less accurate than the narrowest
    assert accuracy_at_latency(curve, 0.25) == (pytest.approx(0.925), None)
    assert accuracy_at_latency(curve, 0.05) == (0.8, "lower")
    assert accuracy_at_latency(curve, 0.40) == (0.95, "upper")


def test_a_seed_places_both_methods_on_its_own_curve():
    rows = CURVE + [row("netadapt-latency", 0.1, 0.90), row("netadapt-macs", 0.15, 0.90),
                    row("uniform", 0.1, 0.50, seed=1, ratio=0.5)]  # another seed's curve: ignored
    seed = summarise(rows)["regimes"][0]["seeds"][0]
    assert seed["latency_vs_uniform"] == pytest.approx(2.0)        # the curve needs 0.2 ms for 90%
    assert seed["macs_vs_uniform"] == pytest.approx(0.2 / 0.15)
    assert seed["latency_vs_macs"] == pytest.approx(1.5)
    assert seed["latency_acc_gain_pts"] == pytest.approx(10.0)     # the curve has 80% at 0.1 ms
    assert seed["bound"] is None
    assert summarise(rows)["regimes"][0]["uniform_drop_x1_to_x05_pts"] == pytest.approx(15.0)


def test_bounded_seeds_are_reported_but_left_out_of_the_mean():
    rows = (CURVE + [row("netadapt-latency", 0.1, 0.90)]
            + [dict(r, seed=1) for r in CURVE] + [row("netadapt-latency", 0.05, 0.99, seed=1)])
    regime = summarise(rows)["regimes"][0]
    assert [s["bound"] for s in regime["seeds"]] == [None, "lower"]
    assert regime["mean"]["latency_vs_uniform"] == pytest.approx(2.0)
    assert regime["mean"]["seeds_counted"] == 1 and regime["mean"]["seeds_bounded"] == 1


def test_the_goal_needs_every_qualifying_regime_and_no_bounds():
    fast = CURVE + [row("netadapt-latency", 0.1, 0.90), row("netadapt-macs", 0.15, 0.90)]
    assert goal_holds(summarise(fast))
    flat = [dict(r, regime="flat", accuracy=0.9) for r in CURVE]       # drops 0 points: not counted
    assert goal_holds(summarise(fast + flat))
    slow = [dict(r, regime="slow") for r in CURVE] + [row("netadapt-latency", 0.25, 0.90, regime="slow")]
    assert not goal_holds(summarise(fast + slow))
    assert not goal_holds(summarise(flat))                               # nothing qualifies


def test_the_goal_is_judged_on_the_products_defaults_on_every_regime_under_any_levers():
    """Levers and variants are settings run on a regime: the goal is judged on the entries that ran
    with the product's defaults; the others (the paper's recipe) are ablations. A regime whose
    curve drops 5 points under any levers needs a judged entry that meets the goal."""
    def entry(name: str, rows: list[dict], **config) -> list[dict]:
        return [dict(r, regime=name, config=config) if r["kind"] in ("netadapt-latency", "netadapt-macs")
                else dict(r, regime=name) for r in rows]

    good = CURVE + [row("netadapt-latency", 0.1, 0.90), row("netadapt-macs", 0.15, 0.90)]
    poor = CURVE + [row("netadapt-latency", 0.25, 0.90), row("netadapt-macs", 0.25, 0.90)]
    product = {"distillation_alpha": 0.5, "min_proposals": 4}
    paper = {"distillation_alpha": 0.0, "min_proposals": 0}
    rows = (entry("r", poor, distillation_alpha=0.0)                        # predates min_proposals
            + entry("r+distillation_alpha=0.5[min_proposals=4]", good, **product))
    judged = ran_with(rows, product, paper)
    assert judged == {"r+distillation_alpha=0.5[min_proposals=4]"}
    assert base_regime("r+distillation_alpha=0.5[min_proposals=4]") == base_regime("r") == "r"
    summary = summarise(rows)
    assert not goal_holds(summary)                       # judging every entry counts the paper's too
    assert goal_holds(summary, judged)
    # The product's entry failing fails the goal, whatever the ablations read.
    swapped = entry("r", good, distillation_alpha=0.0) + entry("r+d[min_proposals=4]", poor, **product)
    assert not goal_holds(summarise(swapped), ran_with(swapped, product, paper))
    # A regime that qualifies only under the paper's recipe still needs the product's entry.
    other = entry("q", good, distillation_alpha=0.0)
    assert not goal_holds(summarise(rows + other), ran_with(rows + other, product, paper))
    # A row that predates a setting reads as its absent value, so it is not the product's.
    assert ran_with(entry("r", good, distillation_alpha=0.5), product, paper) == set()


def test_the_products_entries_ran_the_recommended_settings_on_the_regimes_own_holdout():
    from adaptation.netadapt.config import AdaptConfig
    from bench.tradeoff import product_entries

    product = AdaptConfig(seed=0).to_dict()  # the defaults of the CLI, the job form and the API
    paper = AdaptConfig(seed=0, bn_recalibration_batches=0, distillation_alpha=0, min_proposals=0).to_dict()
    rows = [dict(row("netadapt-latency", 0.1, 0.9, regime="defaults"), config=product),
            dict(row("netadapt-latency", 0.1, 0.9, regime="holdout"), config=product,
                 variant={"min_proposals": 4, "holdout": 8000}),
            dict(row("netadapt-latency", 0.1, 0.9, regime="paper"), config=paper),
            dict(row("netadapt-latency", 0.1, 0.9, regime="step"), config={**product, "channel_step": 16}),
            dict(row("netadapt-latency", 0.1, 0.9, regime="paced"), config={**product, "keep_pace": True})]
    older = {k: v for k, v in product.items() if k != "keep_pace"}  # a row from before the switch
    rows.append(dict(row("netadapt-latency", 0.1, 0.9, regime="older"), config=older))
    assert product_entries(rows) == {"defaults", "older"}


def test_report_recomputes_what_a_run_wrote(tmp_path):
    from bench.tradeoff import report

    rows = CURVE + [row("netadapt-latency", 0.1, 0.90)]
    path = tmp_path / "tradeoff.json"
    path.write_text(json.dumps({"rows": rows, "summary": summarise(rows)}))
    assert report(path) == 0
    document = json.loads(path.read_text())
    document["summary"]["regimes"][0]["seeds"][0]["latency_vs_uniform"] = 1.7
    path.write_text(json.dumps(document))
    assert report(path) == 1


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_committed_results_agree_with_their_rows(path):
    document = json.loads(path.read_text())
    assert json.dumps(summarise(document["rows"]), sort_keys=True) == \
        json.dumps(document["summary"], sort_keys=True)
    if "placements" in document:
        assert document["placements"] == placements(document["rows"])


def test_other_methods_are_placed_on_their_seeds_curve():
    other = dict(row("allocation-latency", 0.1, 0.85), name="allocation-latency t0.5 s0")
    rows = CURVE + [other, row("netadapt-latency", 0.1, 0.90), row("uniform", 0.1, 0.5, seed=1, ratio=0.5)]
    (placed,) = placements(rows)
    assert placed["name"] == "allocation-latency t0.5 s0" and placed["seed"] == 0
    assert placed["speedup"] == pytest.approx(1.5) and placed["bound"] is None
    assert placed["acc_gain_pts"] == pytest.approx(5.0)
    assert placements([other]) == []                                   # no curve, no placement


# --------------------------------------------------------------------------- regime definitions

from bench.tradeoff import (PRETRAINED, REGIMES, UNIFORM_RESULTS, check_same_start,  # noqa: E402
                            network_fingerprint, pretrained, spec_of, upsampled)


def test_every_regime_is_buildable_and_can_show_the_drop():
    from adaptation.netadapt.models import ARCHITECTURES

    assert len({r.name for r in REGIMES.values()}) == len(REGIMES)
    for regime in REGIMES.values():
        assert regime.arch in ARCHITECTURES
        assert {0.5, 1.0} <= set(regime.ratios)        # the x1 -> x0.5 drop needs both
        assert regime.detail is None or regime.detail < regime.resolution
        assert regime.uniform_steps == regime.max_iterations * regime.short_term_steps


def test_committed_regimes_keep_their_definition():
    """A regime's saved definition is compared on resume and stored with its committed curve:
    the field added for upsampled regimes must not change the older ones."""
    from bench.tradeoff import with_levers

    committed = json.loads(UNIFORM_RESULTS.read_text())["regimes"] if UNIFORM_RESULTS.exists() else {}
    for name, saved in committed.items():
        # A regime run with levers is its base regime with them (named after them).
        regime = (with_levers(REGIMES[name.split("+")[0]], tuple(saved["levers"].items()))
                  if saved.get("levers") else REGIMES[name])
        assert regime.name == name
        assert json.loads(json.dumps(regime.to_dict())) == saved
    assert "detail" not in REGIMES["mbv1-0.5-fmnist28"].to_dict()
    assert REGIMES["mbv1-0.5-fmnist14up84-12k"].to_dict()["detail"] == 14


def test_the_upsampled_regime_has_a_stride_2_stem_and_low_detail_inputs():
    regime = REGIMES["mbv1-0.5-fmnist14up84-12k"]
    model = spec_of(regime).build().eval()
    assert model.features[0][0].stride == (2, 2)          # inputs above 64 px: the ImageNet stem
    maps = model.features[0](spec_of(regime).example_input())
    assert maps.shape[-2:] == (42, 42)


def test_upsampling_keeps_labels_and_detail_and_grows_every_split():
    from adaptation.netadapt.data import load_dataset

    data = load_dataset("digits", resolution=8, seed=0)
    grown = upsampled(data, 24)
    for name in ("train", "holdout", "validation"):
        small, large = getattr(data, name), getattr(grown, name)
        assert large.images.shape == (len(small), 1, 24, 24)
        assert torch.equal(large.labels, small.labels)
        # bilinear at 3x: the centre pixel of every 3x3 block is the 8-px pixel itself, so the
        # detail is exactly the original's and nothing new is made up in between
        assert torch.allclose(large.images[..., 1::3, 1::3], small.images, atol=1e-5)
        assert abs(large.images.mean().item() - small.images.mean().item()) < 0.05
    assert grown.resolution == 24


def test_the_mobilenet_v2_regime_network_has_prunable_groups_that_each_prune():
    """Every group of the regime's MobileNetV2 (1 channel, 32 px) pruned by one step alone: the
    network still runs and its traced layers are what the analysis predicts."""
    from adaptation.netadapt.graph import NetworkAnalysis, pruned_copy
    from devices.measure.tracing import trace_layers

    regime = REGIMES["mbv2-0.5-fmnist32-12k"]
    torch.manual_seed(0)
    model = spec_of(regime).build().eval()
    sample = spec_of(regime).example_input()
    assert model.features[0][0].stride == (1, 1)           # small inputs: no stem downsampling
    analysis = NetworkAnalysis(model, sample)
    original = analysis.original_config()
    assert len(original) >= 17                              # one per inverted-residual stage at least
    for group, channels in original.items():
        if channels <= 8:
            continue
        config = {**original, group: channels - 8}
        pruned = pruned_copy(model, sample, {group: channels - 8}).eval()
        assert pruned(sample).shape == (1, 10)
        traced = [t.signature for t in trace_layers(pruned, sample)]
        assert traced == analysis.signatures(config), group
        assert analysis.macs(config) < analysis.macs(original)


def test_levers_make_a_regime_of_their_own_with_the_same_recipe_for_every_method():
    import argparse

    from bench.tradeoff import adapt_config, parse_levers, with_levers

    assert parse_levers("paper") is None and with_levers(REGIMES["mbv1-0.5-fmnist28"], None) is REGIMES["mbv1-0.5-fmnist28"]
    levers = parse_levers("recommended,floor_minimum=16")
    assert dict(levers) == {"bn_recalibration_batches": 10, "distillation_alpha": 0.5, "floor_minimum": 16}
    regime = with_levers(REGIMES["mbv1-0.5-fmnist28"], levers)
    assert regime.name == ("mbv1-0.5-fmnist28+bn_recalibration_batches=10,distillation_alpha=0.5,"
                           "floor_minimum=16")
    assert regime.to_dict()["levers"] == dict(levers)
    # NetAdapt on either metric and the multiplier curve (run_uniform's "latency" config) alike.
    for metric in ("latency", "macs"):
        config = adapt_config(regime, metric, seed=3)
        assert (config.bn_recalibration_batches, config.distillation_alpha, config.floor_minimum) == (10, 0.5, 16)
        assert config.min_proposals == 0  # the recommended 4 is a variant: it needs no curve of its own
    plain = adapt_config(REGIMES["mbv1-0.5-fmnist28"], "latency", seed=3)
    assert (plain.bn_recalibration_batches, plain.distillation_alpha) == (0, 0)  # as the committed curves ran
    for bad, message in [("fast", "neither a preset"), ("distillation_alpha=2", "distillation_alpha must be"),
                         ("floor_minimum=x", "'x' is not a value of floor_minimum"),
                         ("min_proposals=4", "give it with --variant")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_levers(bad)


def test_a_variant_is_placed_against_its_regimes_own_curve():
    """A variant (other settings for how NetAdapt chooses channels) has no multipliers of its own:
    its rows name the curve they share, and the summary places them on that curve's seed."""
    variant = [dict(row("netadapt-latency", 0.1, 0.85), regime="r[channel_step=16]", curve="r")]
    rows = CURVE + [row("netadapt-latency", 0.1, 0.90)] + variant
    base, other = summarise(rows)["regimes"]
    assert base["name"] == "r" and base["seeds"][0]["latency_vs_uniform"] == pytest.approx(2.0)
    assert other["name"] == "r[channel_step=16]"
    assert other["seeds"][0]["latency_vs_uniform"] == pytest.approx(1.5)   # 0.15 ms for 85%
    assert other["uniform_drop_x1_to_x05_pts"] == pytest.approx(15.0)
    alone = summarise(variant)["regimes"][0]                               # no curve: nothing placed
    assert alone["seeds"] == []


def test_variants_change_only_netadapt_and_never_train_a_lineage_longer_than_the_multipliers():
    import argparse

    from bench.tradeoff import adapt_config, parse_variant, variant_config, variant_label

    regime = REGIMES["mbv2-0.5-fmnist14up32-12k-ft5"]
    assert parse_variant("base") is None
    variant = parse_variant("channel_step=16,selection=loss_per_resource,initial_reduction=0.05")
    assert variant_label(variant) == "[channel_step=16,selection=loss_per_resource,initial_reduction=0.05]"
    config = variant_config(regime, "latency", 100, variant)
    assert (config.channel_step, config.selection, config.initial_reduction) == (16, "loss_per_resource", 0.05)
    assert adapt_config(regime, "latency", 100).channel_step == 8          # the multipliers' config
    assert variant_config(regime, "macs", 100, None) == adapt_config(regime, "macs", 100)
    fine = parse_variant("max_iterations=40,short_term_steps=1,initial_reduction=0.025,decay=0.96")
    assert variant_config(regime, "latency", 100, fine).max_iterations == 40   # 40 <= 50 steps
    with pytest.raises(ValueError, match="more than the multipliers' 50"):
        variant_config(regime, "latency", 100, parse_variant("max_iterations=40"))  # 40 x 5
    assert variant_config(regime, "latency", 100, parse_variant("floor_fraction=0.25")).floor_fraction == 0.25
    with pytest.raises(ValueError, match="would change the multiplier curve"):
        variant_config(regime, "latency", 100, parse_variant("floor_fraction=0.3"))
    paced = parse_variant("min_proposals=4,keep_pace=1")
    assert variant_label(paced) == "[min_proposals=4,keep_pace=1]"
    assert variant_config(regime, "latency", 100, paced).keep_pace is True
    assert adapt_config(regime, "latency", 100).keep_pace is False
    for bad, message in [("bn_recalibration_batches=3", "not setting=value with a setting among"),
                         ("keep_pace=yes", "keep_pace must be 1 .on. or 0 .off."),
                         ("selection=random", "selection must be one of"),
                         ("channel_step=0", "channel_step must be"), ("decay=x", "'x' is not a value")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_variant(bad)


def test_results_keep_other_seeds_rows_and_replace_a_rerun_seeds(tmp_path):
    from bench.tradeoff import write_results

    regime = REGIMES["mbv2-0.5-fmnist14up32-12k-ft5"]
    name = regime.name

    def rows(seed: int, accuracy: float) -> list[dict]:
        return [dict(r, regime=name, seed=seed, split="tuning") for r in
                CURVE + [row("netadapt-latency", 0.1, accuracy)]]

    path = tmp_path / "tradeoff-x.json"
    write_results(path, rows(100, 0.90), [regime], "tuning")
    write_results(path, rows(101, 0.85), [regime], "tuning")
    document = write_results(path, rows(101, 0.80), [regime], "tuning")   # seed 101 again
    assert sorted({r["seed"] for r in document["rows"]}) == [100, 101]
    assert len(document["rows"]) == 8
    speedups = [s["latency_vs_uniform"] for s in document["summary"]["regimes"][0]["seeds"]]
    assert speedups == [pytest.approx(2.0), pytest.approx(1.0)]             # 101's 80% is x0.5's
    assert all(r["measured_on"]["commit"] for r in document["rows"])
    with pytest.raises(SystemExit, match="another split"):
        write_results(path, [dict(r, split="test") for r in rows(0, 0.9)], [regime], "test")


def test_the_qualifying_regime_starts_from_its_committed_network_without_pretraining(tmp_path):
    regime = REGIMES["mbv2-0.5-fmnist14up32-12k-ft5"]
    data = types.SimpleNamespace(train=range(regime.limit_train))  # its size names the file
    model = pretrained(regime, data, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # loaded, nothing trained or cached
    fresh = spec_of(regime).build()
    shapes = {name: tuple(value.shape) for name, value in fresh.state_dict().items()}
    assert {name: tuple(value.shape) for name, value in model.state_dict().items()} == shapes
    assert not torch.equal(model.state_dict()["features.0.0.weight"],
                           fresh.state_dict()["features.0.0.weight"])
    assert sorted(path.name for path in PRETRAINED.glob("*.pt")) == [
        f"{regime.name}-e{regime.pretrain_epochs:g}-n{regime.limit_train}.pt"]


def test_netadapt_refuses_a_curve_that_stood_on_another_starting_network(tmp_path):
    regime = REGIMES["mbv2-0.5-fmnist14up32-12k-ft5"]
    data = types.SimpleNamespace(train=range(regime.limit_train))
    start = network_fingerprint(pretrained(regime, data, tmp_path / "cache"))
    assert start == network_fingerprint(pretrained(regime, data, tmp_path / "cache"))
    assert start != network_fingerprint(spec_of(regime).build())
    curve = tmp_path / "bench" / "results" / "curve.json"
    curve.parent.mkdir(parents=True)

    def commit_curve(original: dict) -> None:
        curve.write_text(json.dumps({"rows": [
            {"regime": regime.name, "kind": "uniform", "seed": 0},
            {"regime": regime.name, "kind": "original", "seed": None, **original}]}))

    commit_curve({"start": start})
    check_same_start(regime.name, start, curve)  # the same network: placed on it
    commit_curve({"start": "0123456789abcdef"})
    with pytest.raises(SystemExit, match="stood on starting network 0123456789abcdef"):
        check_same_start(regime.name, start, curve)
    commit_curve({})  # committed before fingerprints were recorded
    with pytest.raises(SystemExit, match="unrecorded starting network"):
        check_same_start(regime.name, start, curve)


def test_a_larger_holdout_takes_images_no_run_trains_on_and_leaves_training_alone():
    import argparse

    from bench.tradeoff import (adapt_config, parse_variant, regime_data, unused_images, variant_config,
                                with_holdout)

    regime = REGIMES["mbv2-0.5-fmnist14up32-12k-ft5"]
    assert unused_images(regime) == 60_000 - 2_000 - 10_000 - 12_000
    data = regime_data(regime, "tuning")
    grown = with_holdout(regime, data, 2_500)
    assert len(grown.holdout) == 2_500 and grown.train is data.train and grown.validation is data.validation
    everything = torch.arange(len(data.holdout))
    assert torch.equal(grown.holdout.batch(everything), data.holdout.batch(everything))  # its own first
    assert grown.holdout.images.shape[1:] == data.train.images.shape[1:]                # at 32 px too

    def keys(split, index) -> set[bytes]:
        return {image.numpy().round(4).tobytes() for image in split.batch(index)}

    extra = keys(grown.holdout, torch.arange(2_000, 2_500))
    assert len(extra) == 500
    assert not extra & keys(data.train, torch.arange(len(data.train)))       # trained on by no run
    assert not extra & keys(data.validation, torch.arange(len(data.validation)))  # nor scored on
    # A variant of NetAdapt alone: the engine's settings are the variant's others.
    variant = parse_variant("min_proposals=4,holdout=8000")
    assert variant_config(regime, "latency", 100, variant) == variant_config(
        regime, "latency", 100, parse_variant("min_proposals=4"))
    for size in (1_999, 2_000 + unused_images(regime) + 1):
        with pytest.raises(ValueError, match="holdout must be from the regime's 2000"):
            variant_config(regime, "latency", 100, parse_variant(f"holdout={size}"))
    with pytest.raises(argparse.ArgumentTypeError, match="whole number of images"):
        parse_variant("holdout=0.5")
