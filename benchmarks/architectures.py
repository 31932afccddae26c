"""Issue 25: torchvision's own ShuffleNetV2, Swin and MaxViT through the library path, each within 300 s and 4 GiB.

Each model (random weights, 224x224, one thread) runs in a child process of its own: its attention
converted to prunable heads as every run does (``convert_attention``; ``--no-convert`` keeps
torchvision's own modules) -> ``graph.analyse`` -> ``HALPPruner`` to half the predicted latency on
FLOPs tables (every point the layer's multiply-accumulates: no service needed) in 2 steps ->
``finalize`` -> forward -> ``export_onnx`` -> ONNX Runtime, whose output is compared with PyTorch's.
The parent kills a child past 300 s and reads its peak resident memory from the kernel (``wait4``).
Needs torchvision (the ``dev`` extra), imported without its compiled ops as the tests do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

from common import flops_tables, parse_args, write

MODELS = [
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "swin_t", "swin_s", "swin_b", "swin_v2_t", "maxvit_t",
]  # fmt: skip
QUICK = ["shufflenet_v2_x0_5"]
SECONDS, MEMORY_MB = 300, 4096


def run_one(name: str, convert: bool) -> dict:
    """The whole path for one model, in this process; each stage's time, or where it raised and what."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from pruning_client.attention import convert_attention
    from pruning_client.export import export_onnx
    from pruning_client.graph import analyse
    from pruning_client.heads import PrunableHeads
    from pruning_client.latency import LatencyModel
    from pruning_client.pruner import HALPPruner
    from pruning_client.saliency import magnitude_saliency
    from tests.torchvision_models import models

    torch.set_num_threads(1)
    torch.manual_seed(0)
    result: dict = {"model": name, "converted": convert, "stages": {}}
    start = time.perf_counter()

    def reached(stage: str) -> None:
        result["stages"][stage] = round(time.perf_counter() - start, 1)

    try:
        model = getattr(models(), name)().eval()
        result["parameters_before"] = sum(p.numel() for p in model.parameters())  # finalize thins it in place
        result["attention_converted"] = len(convert_attention(model)) if convert else 0
        x = torch.randn(1, 3, 224, 224)
        graph = analyse(model, x)
        reached("analyse")
        latency = LatencyModel(graph, flops_tables())
        pruner = HALPPruner(model, x, latency, target_ratio=0.5, steps=2, interval=1, block_size=8, allow_minimum=True)
        for _ in range(2):
            record = pruner.prune_now(magnitude_saliency(graph))
        reached("prune")
        pruned = pruner.finalize().eval()
        with torch.no_grad():
            out = pruned(x)
        reached("forward")
        session = ort.InferenceSession(export_onnx(pruned, x), providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        reached("onnx_runtime")
        kept = pruner.keep_counts()
        thinned = {g.root for g, k in zip(graph.groups, kept, strict=True) if int(k) < g.size}
        heads = {g.root for g in graph.groups if isinstance(graph.module(g.root), PrunableHeads)}
        result.update(
            met=bool(record.met),
            budget_macs=record.budget_ms[0],  # FLOPs tables: "ms" are multiply-accumulates
            predicted_macs=record.predicted_ms[0],
            groups=len(graph.groups),
            groups_pruned=len(thinned),
            head_groups=len(heads),
            head_groups_pruned=len(heads & thinned),
            held=graph.held,
            ort_max_abs_diff=float(np.abs(onnx_out - out.numpy()).max()),
            parameters_after=sum(p.numel() for p in pruned.parameters()),
        )
    except Exception as e:  # noqa: BLE001 - the benchmark reports where a model stops, whatever stopped it
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return result


def run_child(name: str, convert: bool) -> dict:
    """``run_one`` in a child process, bounded in time; its peak RSS from the kernel (``wait4``: the
    child's own, killed or not; its one line of JSON is far below a pipe's buffer)."""
    cmd = [sys.executable, __file__, "--one", name, *([] if convert else ["--no-convert"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    start = time.perf_counter()
    pid = 0
    while not pid:
        if time.perf_counter() - start > SECONDS:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        time.sleep(0.2)
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here, by wait4
    out = proc.stdout.read()
    result = json.loads(out.strip().splitlines()[-1]) if code == 0 else {"model": name, "converted": convert}
    if code != 0:
        result["error"] = f"stopped after {SECONDS} s" if code == -9 else f"exit {code}"
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    result["within_bounds"] = bool(
        "error" not in result and result["seconds"] <= SECONDS and result["peak_rss_mb"] <= MEMORY_MB
    )
    return result


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(sys.argv[2], "--no-convert" not in sys.argv), default=str))
        return

    def options(parser) -> None:
        parser.add_argument("--no-convert", action="store_true", help="keep torchvision's attention modules")

    args = parse_args(__doc__, options)
    if importlib.util.find_spec("torchvision") is None:
        sys.exit("this benchmark needs torchvision's model definitions: pip install -e '.[dev]'")
    runs = []
    for name in QUICK if args.quick else MODELS:
        r = run_child(name, not args.no_convert)
        runs.append(r)
        stopped = r.get("error") or f"met {r['met']}, {r['groups_pruned']}/{r['groups']} groups pruned"
        print(
            f"{name:20s} {r['seconds']:6.1f} s {r['peak_rss_mb']:5d} MB stages {r.get('stages')} | {stopped} | "
            f"heads {r.get('head_groups_pruned')}/{r.get('head_groups')} pruned | held {len(r.get('held', {}))} | "
            f"ORT diff {r.get('ort_max_abs_diff')}",
            flush=True,
        )
    write(args.out, "architectures", {"bounds": {"seconds": SECONDS, "memory_mb": MEMORY_MB}, "runs": runs}, args.quick)


if __name__ == "__main__":
    main()
