"""The collectives of a data-parallel prune, in two real gloo processes on this machine."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pruning_client.distributed import Context, StoppedByMain
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import resnet20
from pruning_client.pruner import HALPPruner
from tests.conftest import free_port

WORLD = 2


def _worker(rank: int, port: int, out: Path, job) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = job(Context(rank, WORLD))
    except Exception as e:  # noqa: BLE001 - the test reads what each rank raised
        result = e
    finally:
        dist.destroy_process_group()
    (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def on_two_ranks(tmp_path: Path, job) -> list:
    """``job(ctx)`` in two gloo processes; what each returned or raised."""
    mp.start_processes(_worker, args=(free_port(), tmp_path, job), nprocs=WORLD, start_method="fork")
    return [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


def _fails_on_main(ctx: Context):
    def solve():
        raise ValueError("target http://gpu-7:8000 did not answer")

    return ctx.from_main(solve)


def test_a_failure_on_rank_0_stops_every_rank_with_its_message(tmp_path):
    main, other = on_two_ranks(tmp_path, _fails_on_main)
    assert isinstance(main, ValueError)
    assert isinstance(other, StoppedByMain) and "gpu-7:8000 did not answer" in str(other)


def _agree_on_rank_digest(ctx: Context):
    ctx.agree("pruning masks", "same")
    ctx.agree("pruning masks", f"rank{ctx.rank}")


def test_ranks_that_hold_different_masks_are_an_error(tmp_path):
    results = on_two_ranks(tmp_path, _agree_on_rank_digest)
    assert all(isinstance(r, RuntimeError) and "ranks [1] hold different pruning masks" in str(r) for r in results)


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2 * WORLD * 4, 3, 32, 32, generator=gen), torch.randint(0, 10, (2 * WORLD * 4,), generator=gen)


def _tables() -> LatencyTables:
    return LatencyTables(fetch=lambda need: {k: {p: 1.0 + p[0] * p[1] / 64 for p in pts} for k, pts in need.items()})


def _prune_on(ctx: Context) -> dict:
    """Two iterations of 8 samples (4 on each of two ranks), then one pruning step."""
    torch.manual_seed(0)
    model = resnet20(10)
    x, y = _batches()
    pruner = HALPPruner(model, x[:1], LatencyModel(analyse(model, x[:1]), _tables()), 0.6, steps=1, ctx=ctx)
    net = DistributedDataParallel(model) if ctx.world > 1 else model
    net.eval()  # BN on running statistics: a rank's batch statistics would differ from the union's
    for i in range(2):
        rows = slice(8 * i + 4 * ctx.rank, 8 * i + 4 * (ctx.rank + 1)) if ctx.world > 1 else slice(8 * i, 8 * i + 8)
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
        pruner.saliency.accumulate()
    saliency = pruner.saliency.averages()
    record = pruner.prune_now()
    return {"saliency": saliency, "masks": [m.copy() for m in pruner.masks], "channels": record.channels}


def test_every_rank_prunes_with_the_saliency_of_every_ranks_minibatches(tmp_path):
    """The saliency each rank decides with is that of the global minibatch (each rank's 4 samples
    together), the same on both ranks as one process computes it on the 8 samples; both ranks then
    hold rank 0's masks."""
    ranks = on_two_ranks(tmp_path, _prune_on)
    one = _prune_on(Context())
    for r in ranks:
        assert not isinstance(r, Exception), r
        for mine, alone in zip(r["saliency"], one["saliency"], strict=True):
            np.testing.assert_allclose(mine, alone, rtol=1e-4, atol=1e-12)
    assert all(np.array_equal(a, b) for a, b in zip(ranks[0]["masks"], ranks[1]["masks"], strict=True))
    assert ranks[0]["channels"] == ranks[1]["channels"] == one["channels"]
    assert sum(int((~m).sum()) for m in ranks[0]["masks"]) > 0  # the step pruned something


def test_a_pruner_resumes_from_its_state_dict():
    keep = 0.5
    torch.manual_seed(0)
    model, x = resnet20(10), torch.randn(1, 3, 32, 32)
    pruner = HALPPruner(model, x, LatencyModel(analyse(model, x), _tables()), keep, steps=3, interval=1)
    importance = [np.random.default_rng(g.id).random(g.size) for g in pruner.graph.groups]
    pruner.prune_now(importance)
    state = pickle.loads(pickle.dumps(pruner.state_dict()))

    torch.manual_seed(0)
    again = resnet20(10)
    resumed = HALPPruner(again, x, LatencyModel(analyse(again, x), _tables()), keep, steps=3, interval=1)
    resumed.load_state_dict(state)
    for p in (pruner, resumed):
        p.prune_now(importance)
    assert [h.channels for h in resumed.history] == [h.channels for h in pruner.history]
    assert all(np.array_equal(a, b) for a, b in zip(resumed.masks, pruner.masks, strict=True))
    out = again(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)  # the restored masks are applied


def _results_of_main(ctx: Context):
    return ctx.on_main(lambda: f"only on {ctx.rank}"), ctx.from_main(lambda: f"from {ctx.rank}")


def test_work_on_rank_0_returns_there_and_shares_only_when_asked(tmp_path):
    assert on_two_ranks(tmp_path, _results_of_main) == [("only on 0", "from 0"), (None, "from 0")]
