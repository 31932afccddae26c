"""What an off-tile channel count costs on this CPU: the reason automatic blocks follow `channel_block`.

ResNet-18 at 224x224, batch 1, ONNX Runtime on one thread (in process): every group at half its width
(a multiple of 32 channels: all of ResNet-18's groups have 64 or more), then 8 channels fewer per
group (off a 16-channel tile, on an 8-channel one), then 16 fewer (on both). Tables' sums and
whole-model latencies (median of interleaved rounds) side by side: on a CPU whose kernels tile
channels by 16, the 8-fewer copy is slower than the wider one.
"""

from __future__ import annotations

import numpy as np
import torch
from common import parse_args, write

from profiler_service.local_target import LocalTarget
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.latency import LatencyModel, LatencyTables
from pruning_client.models import MODELS
from pruning_client.thinning import pruned_copy


def main() -> None:
    args = parse_args(__doc__)
    name, size, rounds = ("resnet20", 32, 2) if args.quick else ("resnet18", 224, 5)
    target = LocalTarget("onnxruntime", threads=1)
    torch.manual_seed(0)
    model = MODELS[name](1000 if size >= 64 else 10).eval()
    x = torch.randn(1, 3, size, size)
    graph = analyse(model, x)
    latency = LatencyModel(graph, LatencyTables.of(target))
    wide = graph.sizes >= 64  # every group of ResNet-18; ResNet-20's (--quick) narrower ones stay whole
    half = np.where(wide, graph.sizes // 2 // 32 * 32, graph.sizes)
    configs = {"half": half, "half - 8": half - 8 * wide, "half - 16": half - 16 * wide}
    onnx = {k: export_onnx(pruned_copy(model, x, graph.first_channels(keep)), x) for k, keep in configs.items()}
    shape = "x".join(map(str, x.shape))
    runs: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        for k, model_bytes in onnx.items():
            runs[k].append(target.measure(model_bytes, shape).median_ms)
    rows = {}
    for k, keep in configs.items():
        tables, measured = latency.table_sum(keep), float(np.median(runs[k]))
        rows[k] = {"channels": int(keep.sum()), "tables_ms": tables, "measured_ms": measured, "runs": runs[k]}
        print(f"{k:10s} {int(keep.sum()):5d} channels: tables {tables:.3f} ms, measured {measured:.3f} ms "
              f"({measured / tables:.3f} of the tables)")  # fmt: skip
    change = {
        k: {"tables": rows[k]["tables_ms"] / rows["half"]["tables_ms"] - 1,
            "measured": rows[k]["measured_ms"] / rows["half"]["measured_ms"] - 1}
        for k in ("half - 8", "half - 16")
    }  # fmt: skip
    print(f"channel_block {target.device.channel_block}; against half: {change}")
    write(args.out, "channel_tile", {"model": name, "input": list(x.shape), "device": target.device.model_dump(),
                                     "configs": rows, "change_vs_half": change}, args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
