"""Plots of latency tables (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from profiler_service.schemas import LutTable

MAX_CURVES = 4


def staircase_plot(table: LutTable, path: Path, marked_cout: int | None = None) -> Path:
    """Latency against cout for a few cin, with the p10-p90 band: the staircase of SPEC 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cins = sorted({p.cin for p in table.points})
    if len(cins) > MAX_CURVES:  # spread the curves over the range
        cins = [cins[round(i * (len(cins) - 1) / (MAX_CURVES - 1))] for i in range(MAX_CURVES)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for cin in cins:
        pts = sorted((p for p in table.points if p.cin == cin), key=lambda p: p.cout)
        xs = [p.cout for p in pts]
        line = ax.step(xs, [p.median_ms for p in pts], where="mid", label=f"cin={cin}")[0]
        ax.fill_between(
            xs, [p.p10_ms for p in pts], [p.p90_ms for p in pts], step="mid", alpha=0.2, color=line.get_color()
        )
    if marked_cout is not None:
        ax.axvline(marked_cout, color="k", linestyle="--", label=f"chosen cout={marked_cout}")
    ax.set_xlabel("output channels (cout)")
    ax.set_ylabel("latency (ms, median; band p10-p90)")
    ax.set_title(f"{table.shape}\n{table.backend} {table.fingerprint}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
