"""The ``halp`` command line: thin wrappers over the service factory and the client."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from profiler_service.schemas import CHANNELS_SYNTAX, LutRequest, LutTable, parse_channels
from profiler_service.shapes import GRAMMAR, InvalidLayerShape, parse_shape
from pruning_client.model_names import MODEL_NAMES
from pruning_client.remote import ProfilerClient, ProfilerError
from pruning_client.ui import RichUI

app = typer.Typer(
    help="HALP: hardware-aware latency pruning. Profile layer latency on target devices, prune to a budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def _setting(name: str, text: str) -> str:
    """Help text of a `halp serve` option: what it does, its default and its variable, from Settings itself."""
    from profiler_service.settings import Settings

    field = Settings.model_fields[name]
    default = field.default if field.default_factory is None else None
    shown = f"default {default}; " if default not in (None, "") else ""
    return f"{text} ({shown}env HALP_{name.upper()})"


@app.command()
def serve(
    backend: Annotated[
        str, typer.Option(help=_setting("backend", "auto, tensorrt, torch-cuda, onnxruntime or torch-cpu"))
    ] = None,
    db: Annotated[
        str, typer.Option(help=_setting("db", "SQLAlchemy URL of the store; default: profiler.db in HALP_CACHE_DIR"))
    ] = None,
    host: Annotated[str, typer.Option(help=_setting("host", "bind address"))] = None,
    port: Annotated[int, typer.Option(help=_setting("port", "port"))] = None,
    threads: Annotated[
        int, typer.Option(help=_setting("threads", "CPU threads, part of the device fingerprint; default all cores"))
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run a profiler service for this machine's device (one process per device).

    Every option also reads from HALP_* environment variables; HALP_API_TOKEN
    makes writes require 'Authorization: Bearer <token>'. Limits of the
    measurement worker: HALP_WORKER_MEMORY_MB, HALP_POINT_DEADLINE_S,
    HALP_MAX_POINT_GMACS, HALP_JOB_DEADLINE_S (see the README).
    """
    import uvicorn
    from pydantic import ValidationError

    from profiler_service.app import create_app, start_worker
    from profiler_service.backends import BackendUnavailable
    from profiler_service.db import StoreUnavailable, open_store
    from profiler_service.settings import Settings

    overrides = {"backend": backend, "db": db, "host": host, "port": port, "threads": threads}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        open_store(settings.db_url).dispose()  # a read-only store is one line here, not a traceback later
        worker = start_worker(settings)
    except ValidationError as e:
        problems = "; ".join(f"HALP_{'_'.join(map(str, x['loc'])).upper()}: {x['msg']}" for x in e.errors())
        raise _fail(f"bad setting: {problems}") from None
    except (BackendUnavailable, StoreUnavailable) as e:
        raise _fail(str(e)) from None
    url = f"http://{settings.host}:{settings.port}"
    console.print(
        f"HALP profiler: backend [bold]{worker.device['backend']}[/], store {settings.db_url}\n"
        f"  try: curl {url}/device   |   halp lut conv2d-k3x3-s1x1-p1x1-d1x1-g1-h28w28-b1-fp32 "
        f"--target {url} --cin 64 --cout 8..128:8   |   docs: {url}/docs"
    )
    try:
        uvicorn.run(
            create_app(settings, worker), host=settings.host, port=settings.port, log_level=log_level,
            timeout_graceful_shutdown=3,  # SIGTERM: in-flight requests get 3 s, then the worker is killed
        )  # fmt: skip
    finally:
        worker.close()


def _print_table(table: LutTable) -> None:
    couts = sorted({p.cout for p in table.points})
    console.print(f"[bold]{table.shape}[/] on {table.backend} ({table.fingerprint}), median latency in ms")
    if len(couts) <= 12:
        grid = Table("cin \\ cout", *map(str, couts))
        by_cin: dict[int, dict[int, float]] = {}
        for p in table.points:
            by_cin.setdefault(p.cin, {})[p.cout] = p.median_ms
        for cin, row in sorted(by_cin.items()):
            grid.add_row(str(cin), *(f"{row[c]:.4f}" if c in row else "" for c in couts))
    else:
        grid = Table("cin", "cout", "median", "p10", "p90", "runs")
        for p in table.points:
            stats = (f"{v:.4f}" for v in (p.median_ms, p.p10_ms, p.p90_ms))
            grid.add_row(str(p.cin), str(p.cout), *stats, str(p.runs))
    console.print(grid)


@app.command()
def lut(
    shape: Annotated[str, typer.Argument(help=f"layer shape key: {GRAMMAR}")],
    target: Annotated[str, typer.Option(help="profiler service URL")] = "http://127.0.0.1:8000",
    cin: Annotated[str, typer.Option(help=f"input channels to measure: {CHANNELS_SYNTAX}")] = None,
    cout: Annotated[str, typer.Option(help=f"output channels to measure: {CHANNELS_SYNTAX}")] = None,
    plot: Annotated[Path, typer.Option(help="write a staircase plot (latency against cout) to this PNG")] = None,
    token: Annotated[str, typer.Option(help="bearer token (default: HALP_API_TOKEN)")] = None,
) -> None:
    """Measure (if needed) and show the latency table of one layer shape on a target.

    With --cin and --cout the grid is requested and any missing point is
    measured while a progress bar runs; without them the stored table is shown.
    """
    try:
        key = parse_shape(shape).key
        cins = parse_channels(cin) if cin else None
        couts = parse_channels(cout) if cout else None
    except (InvalidLayerShape, ValueError) as e:
        raise _fail(str(e)) from None
    if (cins is None) != (couts is None):
        raise _fail("give both --cin and --cout to measure a grid, or neither to show the stored table")
    try:
        with ProfilerClient(target, token=token) as client:
            if cins is None:
                table = client.table(key)
            else:
                with RichUI(err) as ui:

                    def show(done: int, total: int) -> None:
                        ui.bar("lut", f"measuring {key}", done, total)

                    table = client.ensure(key, LutRequest(cin=cins, cout=couts), progress=show)
    except ProfilerError as e:
        raise _fail(str(e)) from None
    _print_table(table)
    if plot:
        from pruning_client.plots import staircase_plot

        staircase_plot(table, plot)
        console.print(f"plot written to {plot}")


MODEL_HELP = f"reference model ({', '.join(sorted(MODEL_NAMES))}) or module:factory"
DATA_HELP = "digits (scikit-learn, no download) or an ImageNet-style folder with train/ and val/"
DTYPES = ("fp32", "fp16")

# Options that `profile` and `prune` share: one declaration each.
Targets = Annotated[list[str], typer.Option(help="profiler service URL; repeat for several targets")]
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
Token = Annotated[str, typer.Option(help="bearer token (default: HALP_API_TOKEN)")]


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise _fail(f"--dtype must be one of {', '.join(DTYPES)}")


def _run_errors():
    """User mistakes and unreachable services as one-line errors, never tracebacks."""
    from pruning_client.data import DataError
    from pruning_client.graph import GraphError
    from pruning_client.knapsack import Infeasible
    from pruning_client.models.registry import ModelError

    return (ProfilerError, ModelError, DataError, GraphError, Infeasible, ValueError, FileNotFoundError)


@app.command()
def profile(
    target: Targets,
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
    token: Token = None,
) -> None:
    """Measure on every target the table points a pruning run of this model will need.

    Rehearses the pruning schedule with weight-magnitude saliency (no data, no
    training) and asks each service only for the points that are missing, so a
    later `halp prune` with the same settings finds its tables ready.
    """
    from pruning_client.workflow import Run, RunSettings

    _check_dtype(dtype)
    settings = RunSettings(
        targets=target, model=model, weights=weights, data=data, input_size=input_size, batch=batch, dtype=dtype,
        latency_ratio=latency_ratio, steps=steps, block_size=block_size, token=token,
    )  # fmt: skip
    try:
        with RichUI(err) as ui:
            rows = Run(settings, ui).profile()
    except _run_errors() as e:
        raise _fail(str(e)) from None
    grid = Table("target", "fingerprint", "points measured", "points already stored", "seconds")
    for r in rows:
        grid.add_row(
            r["target"], r["fingerprint"], str(r["points_measured"]), str(r["points_cached"]), f"{r['seconds']:.0f}"
        )
    console.print(grid)


@app.command()
def prune(
    target: Targets,
    model: ModelName = "resnet18",
    weights: Weights = None,
    latency_ratio: Ratio = 0.5,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    input_size: InputSize = None,
    batch: Batch = 1,
    dtype: Dtype = "fp32",
    steps: Annotated[int, typer.Option(help="pruning steps (exponential budget schedule)")] = 10,
    epochs: Annotated[int, typer.Option(help="fine-tuning epochs after the last pruning step")] = 3,
    pretrain_epochs: Annotated[
        int, typer.Option(help="train from scratch first (default 8 for digits without --weights)")
    ] = None,
    prune_epochs: Annotated[float, typer.Option(help="training epochs over which the pruning steps are spread")] = 1.0,
    lr: Annotated[float, typer.Option(help="learning rate while pruning and fine-tuning")] = 0.02,
    block_size: BlockSize = None,
    per_target: Annotated[bool, typer.Option(help="one model per target instead of one meeting every budget")] = False,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("halp-out"),
    token: Token = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Prune a model until its latency, measured by each target's service, meets the budget.

    Writes model.pt, model.onnx, report.json, report.md and plots to --out.
    """
    from pruning_client.workflow import Run, RunSettings

    _check_dtype(dtype)
    settings = RunSettings(
        targets=target, model=model, weights=weights, latency_ratio=latency_ratio, data=data, input_size=input_size,
        batch=batch, dtype=dtype, steps=steps, epochs=epochs, pretrain_epochs=pretrain_epochs,
        prune_epochs=prune_epochs, lr=lr, block_size=block_size, per_target=per_target, out=out, token=token,
        seed=seed,
    )  # fmt: skip
    try:
        with RichUI(err) as ui:
            run = Run(settings, ui)
            run.prune()
    except _run_errors() as e:
        raise _fail(str(e)) from None
    for directory in run.outputs:  # --per-target writes one report per target
        _print_report(directory)


def _print_report(directory: Path) -> None:
    from pruning_client.report import ROWS, load_report

    body = load_report(directory)
    grid = Table("", *(t["target"] for t in body["targets"]), title=f"HALP report: {directory}")
    for label, fmt in ROWS:
        grid.add_row(label, *(fmt(t) for t in body["targets"]))
    console.print(grid)
    console.print(f"outputs in {directory}: model.pt, model.onnx, report.json, report.md, plots")


@app.command()
def finetune(
    model_path: Annotated[Path, typer.Argument(help="model.pt written by halp prune (architecture + weights)")],
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    input_size: InputSize = None,
    batch: Annotated[int, typer.Option(help="training batch per process (the global batch is N times this)")] = 64,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    lr: Annotated[float, typer.Option(help="peak learning rate (SGD, cosine schedule)")] = 0.02,
    out: Annotated[Path, typer.Option(help="where to save the model (default: next to MODEL_PATH)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Fine-tune a pruned model; under torchrun, data-parallel over every process (DDP).

    One process: halp finetune halp-out/model.pt --data PATH.
    N GPUs (or N CPU processes with gloo):
    torchrun --nproc-per-node N -m pruning_client.cli finetune halp-out/model.pt --data PATH.
    Only rank 0 prints and writes the model.
    """
    import torch

    from pruning_client.data import load_data
    from pruning_client.distributed import distributed
    from pruning_client.distributed import finetune as run_finetune
    from pruning_client.models.registry import load_model
    from pruning_client.train import TrainConfig

    out = out or model_path.with_name(f"{model_path.stem}-finetuned.pt")
    try:
        model = load_model(model_path)
        loaders = load_data(data, input_size, batch, seed)
        with distributed() as ctx, RichUI(err) if ctx.main else nullcontext() as ui:
            progress = (lambda i, n, loss: ui.bar("train", f"fine-tuning (loss {loss:.3f})", i, n)) if ui else None
            result = run_finetune(model, loaders, TrainConfig(epochs=epochs, lr=lr), ctx, progress)
            if ctx.main:
                torch.save(model.cpu(), out)
    except _run_errors() as e:
        raise _fail(str(e)) from None
    if ctx.main:
        console.print(
            f"{result.world} process(es): accuracy {result.accuracy_before:.2f} -> {result.accuracy_after:.2f} %, "
            f"{result.seconds:.0f} s; saved {out}"
        )


@app.command()
def report(directory: Annotated[Path, typer.Argument(help="the --out directory of a finished halp prune")]) -> None:
    """Print the report of a finished run as a table."""
    try:
        _print_report(directory)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise _fail(str(e)) from None


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("halp-demo"),
    latency_ratio: Annotated[float, typer.Option(help="target latency / original latency")] = 0.5,
) -> None:
    """The embedded default: a local CPU profiler, a ResNet-20 trained on the digits, pruned to half its latency.

    Starts `halp serve` on a free loopback port (stopped again at the end, on
    failure or Ctrl-C), trains, prunes with HALP, fine-tunes, and prints the
    measured latency and test accuracy before and after. A few minutes on 2 cores.
    """
    from pruning_client.demo import run_demo

    start = time.perf_counter()
    try:
        with RichUI(err) as ui:
            run_demo(out, ui, latency_ratio)
    except (*_run_errors(), RuntimeError) as e:
        raise _fail(str(e)) from None
    _print_report(out)
    console.print(f"time spent: {time.perf_counter() - start:.0f} s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
