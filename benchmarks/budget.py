"""SPEC 7.3: `halp prune --latency-ratio r` on a small model; measured latency over target, for r = 0.7, 0.5, 0.3.

ResNet-20 on the digits (32x32, batch 1) against a local CPU service; latencies are those the
service measured (unpruned and pruned ONNX side by side). Target: measured <= r x original x 1.05.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import label_axes, parse_args, profiler_url, save_plot, write

from pruning_client.plots import pyplot


def main() -> None:
    args = parse_args(__doc__, target=True)
    # (ratio, extra flags): at 0.3 the default 8-channel blocks of ResNet-20's 16-channel groups get halved where
    # their floor binds; the last row asks for 4-channel blocks everywhere from the start
    plan = [(0.7, [])] if args.quick else [(0.7, []), (0.5, []), (0.3, []), (0.3, ["--block-size", "4"])]
    extra = (
        ["--steps", "1", "--epochs", "1", "--pretrain-epochs", "1"] if args.quick else ["--steps", "8", "--epochs", "6"]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, profiler_url(args, Path(tmp) / "service") as url:
        for i, (r, flags) in enumerate(plan):
            out = Path(tmp) / f"run-{i}"
            cmd = [sys.executable, "-m", "pruning_client.cli", "prune", "--model", "resnet20", "--target", url,
                   "--latency-ratio", str(r), "--data", "digits", "--out", str(out), *extra, *flags]  # fmt: skip
            env = {**os.environ, "HALP_CACHE_DIR": str(Path(tmp) / "cache")}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"halp prune failed for r={r}:\n{done.stderr[-3000:]}")
            (t,) = json.loads((out / "report.json").read_text())["targets"]
            ratio = t["latency_after_ms"] / t["latency_before_ms"]
            rows.append({"latency_ratio": r, "flags": " ".join(flags), "measured_ratio": ratio,
                         "over_target": ratio / r,
                         "met_within_5_percent": ratio <= r * 1.05, "report": t})  # fmt: skip
            print(f"r={r} {' '.join(flags)}: measured {ratio:.3f} of the original ({ratio / r:.3f}x the target), "
                  f"accuracy {t['accuracy_before']:.2f} -> {t['accuracy_after']:.2f}")  # fmt: skip
    write(
        args.out,
        "budget",
        {"command": "halp prune --model resnet20 --data digits " + " ".join(extra), "runs": rows},
        args.quick,
    )

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ratios = sorted({x["latency_ratio"] for x in rows})
    for flags in sorted({x["flags"] for x in rows}):
        pts = [(x["latency_ratio"], x["measured_ratio"]) for x in rows if x["flags"] == flags]
        ax.plot(*zip(*pts, strict=True), "o-", label=f"measured after / before {flags or '(default blocks)'}")
    ax.plot(ratios, ratios, "k:", label="target r")
    ax.plot(ratios, [1.05 * r for r in ratios], "r--", label="r x 1.05")
    label_axes(ax, "--latency-ratio r", "measured latency ratio")
    save_plot(fig, args.out, "budget", args.quick)


if __name__ == "__main__":
    main()
