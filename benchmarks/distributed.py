"""`halp prune` data-parallel on CPU processes: 1 vs 2 gloo processes (torchrun), side by side in one run.

ResNet-20 on the digits against one local CPU service, every process on one thread (OMP_NUM_THREADS=1),
the same per-process batch (so 2 processes train on a global batch twice as large, as on a GPU node).
Reports each training phase's throughput (images/s over all processes) from report.json, and the
result's quality: accuracy before/after, measured latency ratio, saliency kept at the last step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import parse_args, profiler_url, write


def main() -> None:
    args = parse_args(__doc__, target=True)
    flags = (
        [
            "--pretrain-epochs",
            "0",
            "--steps",
            "1",
            "--interval",
            "3",
            "--epochs",
            "1",
            "--no-calibrate",
            "--no-measure-steps",
        ]
        if args.quick
        else ["--pretrain-epochs", "6", "--steps", "6", "--epochs", "3"]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, profiler_url(args, Path(tmp) / "service") as url:
        for processes in (1, 2):
            out = Path(tmp) / f"run-{processes}"
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
            cmd = [sys.executable, *(launcher if processes > 1 else []), "-m", "pruning_client.cli", "prune",
                   "--model", "resnet20", "--data", "digits", "--target", url, "--latency-ratio", "0.5",
                   "--out", str(out), *flags]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HALP_CACHE_DIR": str(Path(tmp) / "cache")}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"halp prune with {processes} process(es) failed:\n{done.stderr[-3000:]}")
            report = json.loads((out / "report.json").read_text())
            (t,) = report["targets"]
            row = {
                "processes": report["processes"],
                "training": report["training"],
                "accuracy_before": t["accuracy_before"],
                "accuracy_after": t["accuracy_after"],
                "measured_ratio": t["latency_after_ms"] / t["latency_before_ms"],
                "saliency_kept_last_step": report["history"][-1]["saliency_kept"],
                "seconds": report["seconds"],
            }
            rows.append(row)
            rates = ", ".join(f"{phase} {v['images_per_s']:.0f} img/s" for phase, v in row["training"].items())
            accuracy = f"accuracy {t['accuracy_before']:.2f} -> {t['accuracy_after']:.2f} %"
            print(f"{processes} process(es): {rates}; {accuracy}, measured ratio {row['measured_ratio']:.3f}, "
                  f"{report['seconds']:.0f} s")  # fmt: skip
    scaling = {
        phase: rows[1]["training"][phase]["images_per_s"] / rows[0]["training"][phase]["images_per_s"]
        for phase in rows[0]["training"]
        if phase in rows[1]["training"]
    }
    print("throughput of 2 processes over 1:", {k: round(v, 2) for k, v in scaling.items()})
    write(
        args.out,
        "distributed",
        {"command": "halp prune --model resnet20 --data digits " + " ".join(flags), "runs": rows, "scaling": scaling},
        args.quick,
    )


if __name__ == "__main__":
    main()
