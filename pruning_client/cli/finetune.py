"""``halp finetune``: fine-tune a pruned model, data-parallel under torchrun."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from pruning_client.cli.app import app, console, err, fail
from pruning_client.cli.run import DATA_HELP, InputSize, run_errors
from pruning_client.ui import RichUI


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

    from pruning_client.data import Feed, load_data
    from pruning_client.distributed import distributed
    from pruning_client.distributed import finetune as run_finetune
    from pruning_client.models.registry import load_model
    from pruning_client.train import TrainConfig

    out = out or model_path.with_name(f"{model_path.stem}-finetuned.pt")
    try:
        model = load_model(model_path)
        with distributed() as ctx, RichUI(err) if ctx.main else nullcontext() as ui:
            loaders = load_data(data, input_size, batch, seed, Feed(ctx.world, ctx.rank))
            progress = (lambda i, n, loss: ui.bar("train", f"fine-tuning (loss {loss:.3f})", i, n)) if ui else None
            result = run_finetune(model, loaders, TrainConfig(epochs=epochs, lr=lr), ctx, progress)
            if ctx.main:
                torch.save(model.cpu(), out)
    except run_errors() as e:
        raise fail(str(e)) from None
    if ctx.main:
        console.print(
            f"{result.world} process(es): accuracy {result.accuracy_before:.2f} -> {result.accuracy_after:.2f} %, "
            f"{result.seconds:.0f} s; saved {out}"
        )
