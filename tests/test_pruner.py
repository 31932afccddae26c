"""A full HALPPruner run: ResNet-20 on the digits, to half its latency, keeps its accuracy."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch

import pruning_client.pruner as pruner_module
from profiler_service.local_target import LocalTarget
from profiler_service.timing import TimingPolicy
from pruning_client.calibration import Calibration
from pruning_client.data import digits
from pruning_client.export import export_onnx
from pruning_client.graph import ModelGraph, analyse
from pruning_client.joint import solve_joint_milp
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20, resnext50_32x4d
from pruning_client.pruner import BudgetOutOfReach, HALPPruner, exponential_budgets
from pruning_client.saliency import magnitude_saliency
from pruning_client.train import TrainConfig, evaluate, train


def test_exponential_schedule_ends_at_the_target():
    budgets = exponential_budgets(10.0, 5.0, 4)
    assert budgets[-1] == pytest.approx(5.0)
    assert all(a > b for a, b in zip([10.0, *budgets], budgets, strict=False))
    assert budgets[1] / budgets[0] == pytest.approx(budgets[2] / budgets[1])


@pytest.fixture(scope="module")
def halp_run() -> dict:
    """ResNet-20 trained on the digits, pruned to half its latency on this CPU's tables, fine-tuned."""
    torch.manual_seed(0)
    data = digits(input_size=32, batch_size=64, seed=0)
    model = resnet20(10)
    train(model, data.train, TrainConfig(epochs=4, lr=0.1))
    accuracy_before = evaluate(model, data.val)

    x = torch.randn(1, 3, 32, 32)
    graph = analyse(model, x)
    profiler = LocalTarget("onnxruntime", threads=1, policy=TimingPolicy(warmup_ms=5, max_ms=300, rel_tol=0.02))
    # Uncalibrated: a fit to two whole-model timings taken during a noise burst can put the intercept
    # above half the total, and then no pruning reaches the budget; calibration has its own tests.
    latency = LatencyModel(graph, LatencyTables.of(profiler))
    pruner = HALPPruner(model, x, latency, target_ratio=0.5, steps=8, interval=2, block_size=8)
    train(model, data.train, TrainConfig(epochs=1, lr=0.02), pruner=pruner)  # 22 iterations: 8 steps in 16
    done = pruner.done
    pruned = pruner.finalize()
    train(pruned, data.train, TrainConfig(epochs=3, lr=0.05))  # fine-tune the smaller network
    return {
        "x": x, "latency": latency, "pruner": pruner, "done": done, "pruned": pruned,
        "accuracy_before": accuracy_before, "accuracy_after": evaluate(pruned, data.val),
    }  # fmt: skip


@pytest.mark.slow
def test_halp_prunes_resnet20_on_digits_to_budget(halp_run):
    pruner, latency, pruned = halp_run["pruner"], halp_run["latency"], halp_run["pruned"]
    assert halp_run["accuracy_before"] > 95
    assert halp_run["done"]
    assert all(h.met and h.predicted_ms[0] <= h.budget_ms[0] for h in pruner.history)
    assert latency.predict(pruner.keep_counts()) <= pruner.target_ms[0]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in resnet20(10).parameters())
    onnx.checker.check_model(onnx.load_model_from_string(export_onnx(pruned, halp_run["x"])))


@pytest.mark.slow
@pytest.mark.usefixtures("quiet_machine")
def test_halp_pruned_resnet20_keeps_its_accuracy(halp_run):
    """Within 2 points of the unpruned model. The channels kept follow this CPU's tables, so on a
    host whose timing wanders by tens of per cent the choice, and the accuracy, wander with it
    (96.1 and 96.4 % against 98.9 were seen there): checked on a quiet host only."""
    assert halp_run["accuracy_after"] >= halp_run["accuracy_before"] - 2.0


def synthetic(model: torch.nn.Module) -> tuple[torch.Tensor, ModelGraph, LatencyModel]:
    """The model analysed at 32x32 with tables in which every layer costs a fixed 5 units plus cin * cout."""
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    graph = analyse(model, x)
    tables = LatencyTables(fetch=lambda need: {k: {p: 5.0 + p[0] * p[1] for p in pts} for k, pts in need.items()})
    return x, graph, LatencyModel(graph, tables)


def test_an_unreachable_budget_stops_the_run_after_one_recheck_naming_the_target_and_what_to_change():
    model = resnet20(10)
    x, graph, latency = synthetic(model)
    checks = []
    # 0.1 % of the total is below the layers' fixed part alone
    pruner = HALPPruner(model, x, latency, target_ratio=0.001, steps=2, interval=1, block_size=8,
                        recheck=lambda m: checks.append(pruner.keep_counts(m)), names=["http://gpu-a"])  # fmt: skip
    pruner.prune_now(magnitude_saliency(graph))  # the schedule's first step, at 3 %, is within reach
    masks = [m.copy() for m in pruner.masks]
    with pytest.raises(BudgetOutOfReach) as stopped:
        pruner.prune_now(magnitude_saliency(graph))
    said = str(stopped.value)
    assert said.startswith("http://gpu-a: step 2's budget (0.001 x") and "--steps" in said and "--allow-minimum" in said
    smallest = float(said.split("predicted at ")[1].split(" x")[0])
    assert 0.001 < smallest < 1
    # measured once before it was believed: the smallest model the blocks allow, not the current one
    assert len(checks) == 1 and (checks[0] < pruner.keep_counts()).any() and (checks[0] <= pruner.keep_counts()).all()
    assert len(pruner.history) == 1 and all((m == before).all() for m, before in zip(pruner.masks, masks, strict=True))


def test_a_budget_out_of_reach_is_found_on_one_table_point_per_layer():
    """Seen on a 2-thread CPU service: a fit with its intercept near the budget made every solve halve
    blocks down to single channels, each halving asking for its cost curves (6,274 points, minutes),
    only to find nothing fits. The smallest model any blocks allow is priced first."""
    model = resnet20(10)
    x, graph, _ = synthetic(model)
    asked: list[int] = []

    def fetch(need):
        asked.append(sum(len(pts) for pts in need.values()))
        return {k: {p: 5.0 + p[0] * p[1] for p in pts} for k, pts in need.items()}

    latency = LatencyModel(graph, LatencyTables(fetch=fetch))
    pruner = HALPPruner(model, x, latency, target_ratio=0.001, steps=2, interval=1, block_size=8)
    pruner.prune_now(magnitude_saliency(graph))  # within reach: curves asked for as usual
    asked.clear()
    with pytest.raises(BudgetOutOfReach):
        pruner.prune_now(magnitude_saliency(graph))
    assert sum(asked) <= len(graph.layers)  # none here: step 1 priced the same floor


def test_a_budget_the_recheck_finds_within_reach_is_solved_on_the_blocks_it_had():
    """Seen in the GPU kit's CPU rehearsal: a noisy fit put step 2 out of reach, the paired recheck refit
    and found it within reach, and the re-solve then ran on the single-channel blocks the floor had been
    priced on (their cost curves: hundreds of table points, 24 s of a 70 s run)."""
    model = resnet20(10)
    x, graph, latency = synthetic(model)

    def refit(_masks) -> None:  # what the paired recheck's measurement does: a better line
        latency.calibration = Calibration()

    pruner = HALPPruner(model, x, latency, target_ratio=0.5, steps=2, interval=1, block_size=8, recheck=refit)
    pruner.prune_now(magnitude_saliency(graph))
    blocks = list(pruner.block_sizes)
    latency.calibration = Calibration(b=0.6 * pruner.full_ms[0])  # the intercept alone over step 2's budget
    record = pruner.prune_now(magnitude_saliency(graph))
    assert record.met and pruner.block_sizes == blocks
    assert all(c % 8 == 0 or c == s for c, s in zip(pruner.keep_counts(), graph.sizes, strict=True))


def test_an_unreachable_budget_keeps_the_minimum_when_asked_and_says_so():
    model = resnet20(10)
    x, graph, latency = synthetic(model)
    pruner = HALPPruner(model, x, latency, target_ratio=0.001, steps=2, interval=1, block_size=8, allow_minimum=True)
    for _ in range(2):
        record = pruner.prune_now(magnitude_saliency(graph))
    assert not record.met and record.predicted_ms[0] > record.budget_ms[0] and "as asked" in record.describe(2)
    assert pruner.keep_counts().tolist() == [1] * len(graph.groups)  # blocks halved down to one channel
    assert model(x).shape == (1, 10)  # masked, still runs


def test_a_give_back_step_brings_back_the_channels_that_were_most_salient_when_removed():
    model = resnet20(10)
    x, graph, latency = synthetic(model)
    pruner = HALPPruner(model, x, latency, target_ratio=0.4, steps=1, interval=1, block_size=4)
    saliency = magnitude_saliency(graph)
    pruner.prune_now(saliency)
    before, pruned = pruner.predicted_ms()[0], [~m for m in pruner.masks]
    budget = 0.7 * pruner.full_ms[0]
    # as with Taylor saliency, a masked channel scores zero now: only what was recorded at its removal ranks it
    now = [s * ~p for s, p in zip(saliency, pruned, strict=True)]
    step = pruner.prune_now(now, budgets=[budget], grow=True)
    assert step.grew and step.met and before < step.predicted_ms[0] <= budget
    assert step.describe(1).startswith("give-back step")
    back = [p & m for p, m in zip(pruned, pruner.masks, strict=True)]
    assert sum(int(b.sum()) for b in back) > 0
    for group, b, p in zip(graph.groups, back, pruned, strict=True):
        if b.any() and group.chunks == 1 and (p & ~b).any():  # the ones back outrank the ones still out
            assert saliency[group.id][b].min() >= saliency[group.id][p & ~b].max()


def test_blocks_get_finer_where_their_floor_keeps_a_budget_out_of_reach():
    model = resnet20(10)
    x, graph, latency = synthetic(model)
    floor = latency.predict(np.full(len(graph.groups), 8)) / latency.predict(graph.sizes)  # one 8-channel block each
    pruner = HALPPruner(model, x, latency, target_ratio=0.9 * floor, steps=1, interval=1, block_size=8)
    record = pruner.prune_now(magnitude_saliency(graph))
    assert record.met and record.predicted_ms[0] <= record.budget_ms[0]
    assert min(pruner.keep_counts()) < 8 and max(pruner.block_sizes) < 8


def test_a_repair_step_right_after_a_step_ranks_by_the_last_saliency():
    model = resnet20(10)
    x, graph, latency = synthetic(model)
    pruner = HALPPruner(model, x, latency, target_ratio=0.8, steps=1, interval=1, block_size=4)
    pruner.prune_now(magnitude_saliency(graph))
    kept_before = [m.copy() for m in pruner.masks]
    budget = 0.95 * pruner.predicted_ms()[0]
    repair = pruner.prune_now(budgets=[budget])  # no minibatch since the last step
    assert repair.met and 0.9 * budget <= repair.predicted_ms[0] <= budget  # not a blind cut
    assert repair.saliency_kept < 1.0  # ranked by real saliency, not by zeros
    assert all((now <= before).all() for now, before in zip(pruner.masks, kept_before, strict=True))


def test_resnext_groups_are_pruned_alike_in_every_conv_group():
    torch.manual_seed(0)
    model = resnext50_32x4d(10)
    x, graph, latency = synthetic(model)
    grouped = [g for g in graph.groups if g.chunks > 1]
    assert grouped and all(g.chunks == 32 for g in grouped)
    pruner = HALPPruner(model, x, latency, target_ratio=0.5, steps=2, interval=1, block_size=8)
    assert all(pruner.block_sizes[g.id] == 32 for g in grouped)  # 8 rounds up to one channel per conv group
    for _ in range(2):
        pruner.prune_now(magnitude_saliency(graph))
    per_chunk = [pruner.masks[g.id].reshape(g.chunks, g.positions) for g in grouped]
    assert all((m == m[0]).all() for m in per_chunk)
    assert any(m[0].sum() < m.shape[1] for m in per_chunk)
    keep = pruner.keep_counts()
    pruned = pruner.finalize()
    for lc, cin, cout in zip(graph.layers, *graph.channels(keep), strict=True):
        module = pruned.get_submodule(lc.module)
        assert (getattr(module, "in_channels", None) or module.in_features) == cin
        lc.shape.check_point(int(cin), int(cout))
    assert pruned.get_submodule("stages.0.0.body.3").groups == 32
    onnx.checker.check_model(onnx.load_model_from_string(export_onnx(pruned, x)))


def test_every_step_and_repair_step_reaches_on_step_with_its_line():
    model = resnet20(10)
    x, graph, latency = synthetic(model)
    seen = []
    pruner = HALPPruner(model, x, latency, target_ratio=0.6, steps=2, interval=1, block_size=8, on_step=seen.append)
    for _ in range(2):
        pruner.prune_now(magnitude_saliency(graph))
    pruner.prune_now(budgets=[0.9 * pruner.predicted_ms()[0]])  # a repair step after the schedule
    assert seen == pruner.history and len(seen) == 3
    assert seen[0].describe(2).startswith("step 1/2: budget ") and seen[2].describe(2).startswith("repair step")
    assert seen[2].predicted_ms[0] <= seen[2].budget_ms[0] < seen[1].predicted_ms[0]


def test_the_joint_choice_keeps_more_saliency_where_the_separable_one_gives_it_up():
    """Costs of cin x cout (plus a fixed 5 per layer): crediting each group with its neighbours held
    where they are misjudges what pruning both saves, and at 0.3 of the latency the joint choice keeps
    more saliency, within the same budget under the true 2-D latency: "near" more than the separable
    one, "full" the joint optimum (HiGHS on the linearised MILP, to the solver's 0.1 %)."""
    kept = {}
    for mode in ("off", "near", "full"):
        torch.manual_seed(0)
        model, x = resnet20(10).eval(), torch.randn(1, 3, 32, 32)
        graph = analyse(model, x)
        latency = LatencyModel(
            graph, LatencyTables(fetch=lambda need: {k: {p: 5.0 + p[0] * p[1] for p in pts} for k, pts in need.items()})
        )
        pruner = HALPPruner(model, x, latency, target_ratio=0.3, steps=1, interval=1, block_size=None, joint=mode)
        saliency = magnitude_saliency(graph)
        _, counts, values, lo = pruner._choices(saliency)
        record = pruner.prune_now(saliency)
        assert record.met and latency.predict(pruner.keep_counts()) <= record.budget_ms[0]
        assert record.predicted_ms[0] == pytest.approx(latency.predict(pruner.keep_counts()))
        kept[mode] = (record.saliency_kept, record.solver)
    assert kept["off"][1] == "separable" and kept["near"][1] == kept["full"][1] == "joint"
    assert kept["near"][0] > kept["off"][0] + 0.01
    problem = latency.joint_problem(graph.sizes, [np.maximum(c, c[m]) for c, m in zip(counts, lo, strict=True)], values)
    optimum = solve_joint_milp(problem, latency.to_table(record.budget_ms[0]), min_option=lo)
    assert kept["full"][0] >= problem.value(optimum) / sum(v[-1] for v in values) * (1 - 1e-3)
    assert kept["full"][0] >= kept["near"][0] - 1e-9


def test_full_joint_searches_near_where_its_grid_would_cost_too_many_points(monkeypatch, caplog):
    """The full grid grows with the square of the options: past FULL_GRID_FACTOR new points per
    separable curve point the step searches near the separable choice and asks for fewer points."""
    asked = {}
    for factor in (1000, 2):
        monkeypatch.setattr(pruner_module, "FULL_GRID_FACTOR", factor)
        torch.manual_seed(0)
        model, x = resnet20(10).eval(), torch.randn(1, 3, 32, 32)
        graph = analyse(model, x)
        fetched = []

        def fetch(need, fetched=fetched):
            fetched.append(sum(len(v) for v in need.values()))
            return {k: {p: 5.0 + p[0] * p[1] for p in pts} for k, pts in need.items()}

        latency = LatencyModel(graph, LatencyTables(fetch=fetch))
        pruner = HALPPruner(model, x, latency, target_ratio=0.3, steps=1, interval=1, block_size=4)
        _, counts, _, lo = pruner._choices(magnitude_saliency(graph))
        grid = latency.factor_points(graph.sizes, [np.maximum(c, c[m]) for c, m in zip(counts, lo, strict=True)])
        with caplog.at_level(logging.INFO, logger="halp.pruner"):
            assert pruner.prune_now(magnitude_saliency(graph)).met
        asked[factor] = (sum(fetched), sum(len(v) for v in grid.values()))
    full, near = asked[1000], asked[2]
    assert full[0] >= full[1]  # every point of the grid
    assert near[0] < near[1]  # a window's
    assert "searching near the separable choice instead" in caplog.text


def test_the_joint_mode_is_checked():
    torch.manual_seed(0)
    model, x = resnet20(10).eval(), torch.randn(1, 3, 32, 32)
    ones = LatencyTables(fetch=lambda need: {k: dict.fromkeys(v, 1.0) for k, v in need.items()})
    latency = LatencyModel(analyse(model, x), ones)
    with pytest.raises(ValueError, match="joint: one of full, near, off"):
        HALPPruner(model, x, latency, target_ratio=0.5, joint="window")


def test_automatic_blocks_follow_the_targets_channel_tile_where_groups_are_wide_enough():
    """16-channel tiles (AVX-512 CPUs) for groups of 64+ channels; a 16- or 32-channel group keeps
    8-channel blocks, so it still has a choice."""
    from pruning_client.schedule import block_sizes

    graph = analyse(resnet20(10).eval(), torch.randn(1, 3, 32, 32))
    by_size = {g.size: b for g, b in zip(graph.groups, block_sizes(graph, align=16), strict=True)}
    assert by_size[64] == 16 and by_size[32] == 8 and by_size[16] == 8
    assert all(b == 8 for b in block_sizes(graph))  # the default tile: ResNet-20's groups are all small


def test_a_service_that_does_not_say_its_tile_is_taken_as_8():
    from profiler_service.schemas import DeviceInfo

    old = DeviceInfo(fingerprint="f", backend="onnxruntime", backend_version="1", accelerator="cpu")
    assert old.channel_block == 8
    here = LocalTarget("onnxruntime", threads=1).device
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        avx512 = any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    assert here.channel_block == (16 if avx512 else 8)
