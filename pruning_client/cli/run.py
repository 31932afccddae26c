"""``halp profile``, ``halp prune``, ``halp report`` and ``halp demo``: the pruning workflow's commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pruning_client.cli.app import app, console, err, fail
from pruning_client.model_names import DETECTOR_NAMES, MODEL_NAMES
from pruning_client.remote import ProfilerError
from pruning_client.ui import RichUI

MODEL_HELP = (
    f"reference model ({', '.join(sorted(MODEL_NAMES))}; detection: {', '.join(DETECTOR_NAMES)}) or module:factory"
)
DATA_HELP = (
    "digits (scikit-learn, no download; for detection: digits placed on textured canvases, written once as "
    "COCO), an ImageNet-style folder with train/ and val/, or for detection a folder with train/ and val/ each "
    "holding images/ and one instances_*.json (COCO)"
)
DTYPES = ("fp32", "fp16")

# Options that `profile` and `prune` share: one declaration each.
Targets = Annotated[list[str], typer.Option(metavar="URL", help="profiler service URL; repeat for several targets")]
ModelName = Annotated[str, typer.Option(help=MODEL_HELP)]
Weights = Annotated[Path, typer.Option(help="trained weights (state_dict or saved model; trusted files only)")]
InputSize = Annotated[int, typer.Option(help="input height = width (default 32 for digits, else 224)")]
Batch = Annotated[int, typer.Option(help="deployment batch size the latency is measured at")]
Dtype = Annotated[str, typer.Option(help="deployment precision: fp32 or fp16")]
Ratio = Annotated[float, typer.Option(help="target latency / original latency, on every target")]
BlockSize = Annotated[
    int,
    typer.Option(
        help="channels per block (default: per group, multiples of 8; grouped convs: whole channels per conv group)"
    ),
]
Joint = Annotated[
    str,
    typer.Option(
        help="the joint (cin, cout) solver: full (the exact optimum; every (cin, cout) pair of each layer's groups "
        "is measured, about 7x the points), near (around the separable choice, fewer points: for targets where "
        "each point is expensive, as TensorRT engine builds) or off (the separable choice). One target only"
    ),
]
Token = Annotated[str, typer.Option(help="bearer token (default: HALP_API_TOKEN)")]
Fixed = Annotated[str, typer.Option(metavar="MODULE[,MODULE]", help="modules whose output channels are never pruned")]
Task = Annotated[
    str,
    typer.Option(
        help="classification (top-1) or detection (COCO mAP; the model's .network is what is pruned and timed)"
    ),
]


def _modules(text: str | None) -> list[str]:
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def _check_choices(dtype: str, joint: str) -> None:
    from pruning_client.pruner import JOINT_MODES

    if dtype not in DTYPES:
        raise fail(f"--dtype must be one of {', '.join(DTYPES)}")
    if joint not in JOINT_MODES:
        raise fail(f"--joint must be one of {', '.join(JOINT_MODES)}")


def run_errors():
    """User mistakes and unreachable services as one-line errors, never tracebacks."""
    from pruning_client.data import DataError
    from pruning_client.knapsack import Infeasible
    from pruning_client.layers import GraphError
    from pruning_client.models.registry import ModelError
    from pruning_client.pruner import BudgetOutOfReach

    errors = (ProfilerError, ModelError, DataError, GraphError, Infeasible, BudgetOutOfReach)
    return (*errors, ValueError, FileNotFoundError)


@app.command()
def profile(
    target: Targets,
    task: Task = "classification",
    model: ModelName = "resnet18",
    weights: Weights = None,
    data: Annotated[
        str, typer.Option(help="digits (32x32 inputs, 10 classes) or imagenet-style (224, 1000)")
    ] = "digits",
    input_size: InputSize = None,
    batch: Batch = 1,
    dtype: Dtype = "fp32",
    latency_ratio: Ratio = 0.5,
    steps: Annotated[int, typer.Option(help="pruning steps of the run to prepare")] = 10,
    block_size: BlockSize = None,
    joint: Joint = "full",
    fixed: Fixed = None,
    token: Token = None,
) -> None:
    """Measure on every target the table points a pruning run of this model will need.

    Rehearses the pruning schedule with weight-magnitude saliency (no data, no
    training) and asks each service only for the points that are missing, so a
    later `halp prune` with the same settings finds its tables ready.
    """
    from pruning_client.workflow import Run, RunSettings

    _check_choices(dtype, joint)
    settings = RunSettings(
        targets=target, task=task, model=model, weights=weights, data=data, input_size=input_size, batch=batch,
        dtype=dtype,
        latency_ratio=latency_ratio, steps=steps, block_size=block_size, joint=joint, token=token,
        fixed=_modules(fixed),
    )  # fmt: skip
    try:
        with RichUI(err) as ui:
            rows = Run(settings, ui).profile()
    except run_errors() as e:
        raise fail(str(e)) from None
    grid = Table("target", "fingerprint", "points measured", "points already stored", "seconds")
    for r in rows:
        grid.add_row(
            r["target"], r["fingerprint"], str(r["points_measured"]), str(r["points_cached"]), f"{r['seconds']:.0f}"
        )
    console.print(grid)


@app.command()
def prune(
    target: Targets = None,
    task: Task = "classification",
    model: ModelName = "resnet18",
    weights: Weights = None,
    latency_ratio: Ratio = 0.5,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    input_size: InputSize = None,
    batch: Batch = 1,
    dtype: Dtype = "fp32",
    steps: Annotated[int, typer.Option(help="pruning steps (exponential budget schedule)")] = 10,
    interval: Annotated[
        int,
        typer.Option(help="training iterations between pruning steps (default: the steps spread over --prune-epochs)"),
    ] = None,
    epochs: Annotated[int, typer.Option(help="fine-tuning epochs after the last pruning step")] = 3,
    pretrain_epochs: Annotated[
        int, typer.Option(help="train from scratch first (default 8 for digits without --weights)")
    ] = None,
    prune_epochs: Annotated[float, typer.Option(help="training epochs over which the pruning steps are spread")] = 1.0,
    lr: Annotated[float, typer.Option(help="peak learning rate while pruning and fine-tuning")] = 0.02,
    train_batch: Annotated[
        int, typer.Option(help="training batch per process (under torchrun the global batch is N times this)")
    ] = 64,
    momentum: Annotated[float, typer.Option(help="SGD momentum (Nesterov)")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="weight decay (not on biases and norms)")] = 5e-4,
    schedule: Annotated[
        str, typer.Option(help="learning-rate decay per phase: cosine, or step (x0.1 at 1/3, 2/3)")
    ] = "cosine",
    warmup: Annotated[float, typer.Option(help="fraction of each phase with a linear learning-rate warm-up")] = 0.0,
    label_smoothing: Annotated[float, typer.Option(help="label smoothing of the cross-entropy")] = 0.1,
    amp: Annotated[bool, typer.Option(help="automatic mixed precision (fp16 autocast) when training on GPUs")] = False,
    channels_last: Annotated[bool, typer.Option(help="train in channels-last memory layout")] = False,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes per training process")] = 0,
    calibrate: Annotated[
        bool, typer.Option(help="fit each target's latency model to measured whole models (else: the tables' sum)")
    ] = True,
    measure_steps: Annotated[bool, typer.Option(help="measure the model on every target after each step")] = True,
    allow_minimum: Annotated[
        bool,
        typer.Option(help="a budget out of reach keeps the smallest model the blocks allow (default: stop the run)"),
    ] = False,
    max_drop: Annotated[
        float, typer.Option(help="warn in the report where accuracy (or mAP) fell by more points than this")
    ] = 5.0,
    block_size: BlockSize = None,
    joint: Joint = "full",
    fixed: Fixed = None,
    per_target: Annotated[bool, typer.Option(help="one model per target instead of one meeting every budget")] = False,
    out: Annotated[Path, typer.Option(help="output directory (checkpoints in OUT/checkpoints)")] = Path("halp-out"),
    resume: Annotated[
        Path, typer.Option(metavar="DIR", help="continue the run whose --out was DIR from its last checkpoint")
    ] = None,
    token: Token = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Prune a model until its latency, measured by each target's service, meets the budget.

    Writes model.pt, model.onnx, report.json, report.md, report.html and plots to --out, and a checkpoint after
    every pruning step and epoch to OUT/checkpoints/last.pt; --resume OUT continues from it (its
    settings are the interrupted run's). Data-parallel under torchrun: torchrun --nproc-per-node N
    -m pruning_client.cli prune ... (rank 0 alone talks to the targets and writes files).
    """
    from pruning_client.checkpoint import load_checkpoint
    from pruning_client.distributed import StoppedByMain, distributed
    from pruning_client.pruning_run import PruneRun
    from pruning_client.run_settings import RunSettings

    _check_choices(dtype, joint)
    try:
        with distributed() as ctx, RichUI(err) as ui:
            if resume is not None:
                saved = ctx.from_main(lambda: load_checkpoint(resume))
                # DIR, wherever it was moved; the token given again (HALP_API_TOKEN if None)
                settings = RunSettings(**{**saved["settings"], "out": resume, "token": token})
            else:
                saved = None
                settings = RunSettings(
                    targets=target or [], task=task, model=model, weights=weights, latency_ratio=latency_ratio,
                    data=data, input_size=input_size, batch=batch, dtype=dtype, steps=steps, epochs=epochs,
                    pretrain_epochs=pretrain_epochs, prune_epochs=prune_epochs, lr=lr, block_size=block_size,
                    joint=joint, per_target=per_target, out=out, token=token, seed=seed, fixed=_modules(fixed),
                    calibrate=calibrate, measure_steps=measure_steps, allow_minimum=allow_minimum,
                    max_drop=max_drop, train_batch=train_batch, interval=interval, momentum=momentum,
                    weight_decay=weight_decay, schedule=schedule, warmup=warmup,
                    label_smoothing=label_smoothing, amp=amp, channels_last=channels_last, workers=workers,
                )  # fmt: skip
            run = PruneRun(settings, ui if ctx.main else None, ctx, resume=saved)
            run.prune()
    except StoppedByMain:
        raise typer.Exit(1) from None  # rank 0 says why, once
    except run_errors() as e:
        raise fail(str(e)) from None
    if ctx.main:
        for directory in run.outputs:  # --per-target writes one report per target
            _print_report(directory)


def _print_report(directory: Path) -> None:
    from pruning_client.report import load_report, rows

    body = load_report(directory)
    for warning in body.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}")
    grid = Table("", *(t["target"] for t in body["targets"]), title=f"HALP report: {directory}")
    for label, cells in rows(body["targets"]):
        grid.add_row(label, *(c or "-" for c in cells))
    console.print(grid)
    console.print(f"outputs in {directory}: model.pt, model.onnx, report.json, report.md, report.html, plots")
    console.print(f"open in a browser: {(directory / 'report.html').resolve().as_uri()}")


@app.command()
def report(directory: Annotated[Path, typer.Argument(help="the --out directory of a finished halp prune")]) -> None:
    """Print the report of a finished run as a table, and write its report.md, plots and report.html
    again from its report.json."""
    from pruning_client.report import load_report, write_views

    try:
        write_views(directory, load_report(directory))
        _print_report(directory)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise fail(str(e)) from None


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("halp-demo"),
    latency_ratio: Annotated[float, typer.Option(help="target latency / original latency")] = 0.5,
    task: Annotated[
        str, typer.Option(help="classification (ResNet-20 on the digits) or detection (an SSD on digit canvases)")
    ] = "classification",
) -> None:
    """The embedded default: a local CPU profiler, a ResNet-20 trained on the digits, pruned to half its latency.

    --task detection: an SSD (ResNet backbone) trained on digits placed on textured canvases, scored
    by COCO mAP, its network pruned to half its latency.

    Starts `halp serve` on a free loopback port (stopped again at the end, on
    failure or Ctrl-C), trains, prunes with HALP, fine-tunes, and prints the
    measured latency and test accuracy before and after. A few minutes on 2 cores.
    """
    from pruning_client.demo import run_demo
    from pruning_client.tasks import get_task

    start = time.perf_counter()
    try:
        with RichUI(err) as ui:
            get_task(task)  # an unknown task is a one-line error before the service starts
            run_demo(out, ui, latency_ratio, task)
    except (*run_errors(), RuntimeError) as e:
        raise fail(str(e)) from None
    _print_report(out)
    console.print(f"time spent: {time.perf_counter() - start:.0f} s")
