"""Issue 14's alternative latency model: table points timed as ONNX Runtime runs them inside a network.

On a CPU, ONNX Runtime's NCHWc transformer runs each conv in a blocked layout (16 channels on an
AVX-512 CPU, 8 on AVX2). A one-layer model pays a ReorderInput before its conv and a ReorderOutput
after it; inside a network consecutive convs stay blocked and the network pays neither. So the
tables, timed alone, count conversions the network does not make, and that share differs per layer
(it scales with the activations, the conv with the weights).

Per model, every table point is timed twice in process (ONNX Runtime, 1 thread, timed against the
reference layer as a CPU service times it):

  * alone:   the one-layer model as the service builds it (what the tables hold);
  * within:  the same layer after ONNX Runtime's own optimisation, with its Reorder nodes removed:
             the blocked conv alone, fed and read in the blocked layout (wall clock, like `alone`).

Whole models (the unpruned one, the 3/4 and 1/2 copies `halp prune` calibrates on, and N random
configurations in its automatic blocks) are measured on the same backend. Each timing gets the
calibration line fitted on the three probes and is scored on the random configurations (|predicted -
measured| / measured, median and worst), with the spread of measured / tables' sum.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from common import parse_args, write
from onnx import helper

from profiler_service.backends import create_backend
from profiler_service.backends.base import cpu_channel_block
from profiler_service.backends.onnx_layer import layer_onnx
from profiler_service.backends.onnxruntime import _SessionRunner  # a benchmark may run a session as built here
from profiler_service.shapes import LayerShape
from profiler_service.timing import TimingPolicy
from pruning_client.calibration import CalibrationError, fit, probe_keeps
from pruning_client.export import export_onnx
from pruning_client.graph import analyse
from pruning_client.models import MODELS
from pruning_client.schedule import block_sizes
from pruning_client.thinning import pruned_copy

TABLE_POLICY = TimingPolicy(warmup_ms=5, max_ms=100, rel_tol=0.05)
MODEL_POLICY = TimingPolicy(warmup_ms=50, max_ms=1000, rel_tol=0.02)
REORDERS = ("ReorderInput", "ReorderOutput")


def without_reorders(shape: LayerShape, cin: int, cout: int, scratch: Path) -> bytes:
    """The one-layer model as ONNX Runtime optimises it, its NCHWc conversions cut off: the blocked
    tensors become the graph's input and output (channels rounded up to the block)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(scratch / "optimised.onnx")
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    ort.InferenceSession(layer_onnx(shape, cin, cout), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(scratch / "optimised.onnx")
    graph = model.graph
    nodes = {n.op_type: n for n in graph.node if n.op_type in REORDERS}
    if not nodes:  # not blocked (grouped convs, linears): the layer runs as it does in the network
        return model.SerializeToString()
    inputs, outputs = list(graph.input), list(graph.output)
    if "ReorderInput" in nodes:
        block = cpu_channel_block()
        channels = -(-cin // block) * block
        blocked = [shape.batch, channels, shape.height, shape.width]
        inputs = [helper.make_tensor_value_info(nodes["ReorderInput"].output[0], onnx.TensorProto.FLOAT, blocked)]
    if "ReorderOutput" in nodes:
        outputs = [helper.make_tensor_value_info(nodes["ReorderOutput"].input[0], onnx.TensorProto.FLOAT, None)]
    kept = [n for n in graph.node if n.op_type not in REORDERS]
    cut = helper.make_model(
        helper.make_graph(kept, graph.name, inputs, outputs, list(graph.initializer)),
        opset_imports=list(model.opset_import),
    )
    cut.ir_version = model.ir_version
    return cut.SerializeToString()


class Timer:
    """Both timings of table points (cached per point) and whole models, on one in-process backend."""

    def __init__(self) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.backend = create_backend("onnxruntime", threads=1, reference=True)
        self.scratch = Path(tempfile.mkdtemp())
        self.points: dict[tuple[str, int, int], tuple[float, float]] = {}

    def _within(self, shape: LayerShape, cin: int, cout: int) -> float:
        opts = self.ort.SessionOptions()
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
        opts.intra_op_num_threads, opts.log_severity_level = 1, 3
        data = without_reorders(shape, cin, cout, self.scratch)
        runner = _SessionRunner(self.ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]), None)
        try:
            return self.backend._time(runner, TABLE_POLICY).median_ms
        finally:
            runner.close()

    def sums(self, graph, keep: np.ndarray) -> tuple[float, float]:
        cin, cout = graph.channels(keep)
        total = np.zeros(2)
        for layer, a, b in zip(graph.layers, cin, cout, strict=True):
            key = (layer.shape.key, int(a), int(b))
            if key not in self.points:
                alone = self.backend.time_layer(layer.shape, int(a), int(b), TABLE_POLICY).median_ms
                self.points[key] = (alone, self._within(layer.shape, int(a), int(b)))
            total += self.points[key]
        return float(total[0]), float(total[1])

    def whole(self, model, x, graph, keep: np.ndarray) -> float:
        thin = pruned_copy(model, x, {g.root: np.arange(c) for g, c in zip(graph.groups, keep, strict=True)})
        return self.backend.time_model(export_onnx(thin, x), None, MODEL_POLICY).median_ms


def one_model(name: str, size: int, configs: int, timer: Timer, rng) -> dict:
    start = time.perf_counter()
    torch.manual_seed(0)
    model, x = MODELS[name](1000).eval(), torch.randn(1, 3, size, size)
    graph = analyse(model, x)
    blocks = block_sizes(graph, None)
    probes = probe_keeps(graph.sizes, blocks)
    keeps = probes + [
        np.array([max(b, int(rng.integers(s // 4, s + 1)) // b * b) for s, b in zip(graph.sizes, blocks, strict=True)])
        for _ in range(configs)
    ]
    rows = []
    for keep in keeps:
        alone, within = timer.sums(graph, keep)
        rows.append({"alone": alone, "within": within, "measured": timer.whole(model, x, graph, keep)})
        print(f"  {name}: tables alone {alone:.3f} ms, within {within:.3f} ms, measured {rows[-1]['measured']:.3f} ms",
              flush=True)  # fmt: skip
    measured = np.array([r["measured"] for r in rows])
    out: dict = {"model": name, "input": size, "configs": configs, "rows": rows}
    for timing in ("alone", "within"):
        sums = np.array([r[timing] for r in rows])
        ratio = measured / sums
        entry: dict = {"measured_over_sum": [float(ratio.min()), float(ratio.max())]}
        try:
            line = fit(sums[: len(probes)], measured[: len(probes)])
        except CalibrationError as e:
            entry["error"] = str(e)
        else:
            errors = np.abs(line.a * sums[len(probes) :] + line.b - measured[len(probes) :]) / measured[len(probes) :]
            entry |= {"a": line.a, "b": line.b, "median_abs_error": float(np.median(errors)),
                      "worst_abs_error": float(errors.max())}  # fmt: skip
        out[timing] = entry
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}
        print(f"{name} {timing}: {shown}", flush=True)
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    def options(parser) -> None:
        parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"], choices=sorted(MODELS))
        parser.add_argument("--configs", type=int, default=12, help="random configurations per model")

    args = parse_args(__doc__, options)
    timer = Timer()
    rng = np.random.default_rng(0)
    plan = [("resnet20", 32, 3)] if args.quick else [(m, 224, args.configs) for m in args.models]
    body = {
        "channel_block": cpu_channel_block(),
        "models": {name: one_model(name, size, configs, timer, rng) for name, size, configs in plan},
    }
    write(args.out, "in_network", body, args.quick)


if __name__ == "__main__":
    main()
