"""Draw a naive-vs-guarded run: positions over time against the cap, the circuit as a band."""

from __future__ import annotations

from pathlib import Path

from brokerguard.sim.scenarios import RunStats

__all__ = ["plot_runs"]

_BAND = {"open": "#f4b6b6", "half_open": "#f7e3a3"}


def plot_runs(runs: dict[str, RunStats], path: str | Path, *, title: str) -> Path:
    """Write a PNG with one panel per run; needs matplotlib (``brokerguard[plot]``)."""
    import matplotlib as mpl  # noqa: PLC0415 (optional dependency)

    mpl.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), sharex=True)
    for ax, (name, stats) in zip(axes, runs.items(), strict=True):
        minutes = [t / 60 for t, _, _ in stats.timeline]
        held = [n for _, n, _ in stats.timeline]
        states = [s for _, _, s in stats.timeline]
        for i, state in enumerate(states[:-1]):
            if state in _BAND:
                ax.axvspan(minutes[i], minutes[i + 1], color=_BAND[state], linewidth=0)
        ax.step(minutes, held, where="post", color="#0969da", label="positions held")
        ax.axhline(stats.cap, color="#cf222e", linestyle="--", label=f"cap ({stats.cap})")
        ax.set_ylabel("positions")
        ax.set_title(
            f"{name}: max {stats.max_positions}, {stats.cap_violations} steps over the cap, "
            f"{stats.fallback_priced_orders} fallback-priced, {stats.duplicate_orders} duplicates"
        )
        ax.legend(loc="upper left")
    axes[-1].set_xlabel("minutes (shaded: read circuit open / half-open)")
    figure.suptitle(title)
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
