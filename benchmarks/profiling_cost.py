"""SPEC 7.5: what profiling a 30-step ResNet-50 run costs on the CPU backend at batch 1.

`halp profile` (a rehearsal of the 30-step schedule, measuring only the points it needs) against a
fresh local CPU service: wall time and number of measured points. Then 50 random stored points are
measured again by a second fresh service (same backend, same fingerprint): the tables' error, in ms
and (reference-timed services) in runs of each store's reference.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import parse_args, write

from pruning_client.demo import local_service
from pruning_client.remote import ProfilerClient, RemoteTarget
from pruning_client.workflow import Run, RunSettings


def main() -> None:
    args = parse_args(__doc__)
    model, size, steps, recheck = ("resnet20", 32, 3, 10) if args.quick else ("resnet50", 224, 30, 50)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with local_service(tmp / "a") as url:
            settings = RunSettings(targets=[url], model=model, data="imagenet", input_size=size, steps=steps,
                                   latency_ratio=0.5, cache_dir=tmp / "cache")  # fmt: skip
            start = time.perf_counter()
            (row,) = Run(settings).profile()
            seconds = time.perf_counter() - start
            with ProfilerClient(url) as client:
                stored = {s.shape: client.table(s.shape) for s in client.luts()}
                first_reference = client.device().reference_ms  # reference-timed stores: ms at their reference
        print(f"{model}: {row['points_measured']} points measured in {seconds:.0f} s over {len(stored)} shapes")
        rng = np.random.default_rng(0)
        population = [(k, p.cin, p.cout, p.median_ms) for k, t in stored.items() for p in t.points]
        sample = [population[i] for i in rng.choice(len(population), min(recheck, len(population)), replace=False)]
        with local_service(tmp / "b") as url2, ProfilerClient(url2) as client2:
            again = RemoteTarget(client2, cache=None)
            needed: dict[str, set] = {}
            for k, cin, cout, _ in sample:
                needed.setdefault(k, set()).add((cin, cout))
            remeasured = again.fetch(needed)
        errors = [(remeasured[k][(cin, cout)] - ms) / ms for k, cin, cout, ms in sample]
        # each store's points in runs of its reference: what the two measured of the layers themselves
        references = [first_reference, again.device.reference_ms]  # None, None: plainly timed
        rescale = (first_reference or 1.0) / (again.device.reference_ms or 1.0)
        ratio_errors = [(remeasured[k][(cin, cout)] * rescale - ms) / ms for k, cin, cout, ms in sample]
    abs_err, abs_ratio_err = np.abs(errors), np.abs(ratio_errors)
    body = {
        "model": model, "input": size, "steps": steps, "seconds": seconds, "points_measured": row["points_measured"],
        "shapes": len(stored), "recheck_points": len(sample), "recheck_errors": errors,
        "recheck_median_abs_error": float(np.median(abs_err)),
        "recheck_p90_abs_error": float(np.percentile(abs_err, 90)),
        "recheck_max_abs_error": float(abs_err.max()), "target_seconds": 900,
        "reference_ms": references,
        "recheck_in_reference_units": {
            "median_abs_error": float(np.median(abs_ratio_err)),
            "p90_abs_error": float(np.percentile(abs_ratio_err, 90)), "max_abs_error": float(abs_ratio_err.max()),
        },
    }  # fmt: skip
    print(f"re-measured {len(sample)} points: median |error| {body['recheck_median_abs_error']:.3f}, "
          f"p90 {body['recheck_p90_abs_error']:.3f}, max {body['recheck_max_abs_error']:.3f}; in reference units "
          f"{np.median(abs_ratio_err):.3f} / {np.percentile(abs_ratio_err, 90):.3f} / {abs_ratio_err.max():.3f} "
          f"(reference_ms {references[0]} vs {references[1]})")  # fmt: skip
    write(args.out, "profiling_cost", body, args.quick)


if __name__ == "__main__":
    main()
