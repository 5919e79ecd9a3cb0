"""Draw a naive-vs-guarded run so that each scenario shows its own story, not just two lines.

Every figure starts with the positions of both runs, one panel each on one shared y-scale, the
cap drawn on top of both series and inside the view (a guarded run sits *on* the cap, so a cap
line under the series would vanish). Then the panels the scenario's story needs, chosen from
the data (and forced by the scenario's name, so a seed where nothing went wrong still shows the
zero):

- an outage: broker calls per minute, the outage window shaded (1,380 vs 8 is the story);
- fallback-priced orders: orders sized at the made-up $1.00, cumulative (naive) vs none;
- a halt: a vertical marker at the halt's time, annotated, and the halted span shaded;
- duplicate orders: intents the broker executed more than once, per run.

Legends sit outside the data area. :func:`build_figure` returns the Figure (tests read its
structure); :func:`plot_runs` writes it. Needs matplotlib (``brokerguard[plot]``), imported
lazily, and uses no pyplot (no global state, no window).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from brokerguard.sim.scenarios import FALLBACK_PRICE, RunStats

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["build_figure", "plot_runs"]

_BAND = {"open": "#f4b6b6", "half_open": "#f7e3a3"}
_BAND_LABEL = {"open": "read circuit open", "half_open": "read circuit half-open"}
_COLOUR = {"naive": "#bc4c00", "guarded": "#0969da"}
_CAP_COLOUR = "#cf222e"
_SERIES_Z = 2.0
_CAP_Z = 3.0  # above every series: the guarded run sits on the cap
_OUTAGE_COLOUR = "#d0d7de"
_HALT_COLOUR = "#6639ba"

_STORY_PANELS = {
    "outage": {"calls", "fallback"},
    "no-prices": {"fallback"},
    "unsettled": {"halt"},
    "flaky": {"duplicates"},
}
"""Panels a scenario always shows, even when a seed makes them zero: the zero is the point."""


def plot_runs(
    runs: dict[str, RunStats], path: str | Path, *, title: str, scenario: str | None = None
) -> Path:
    """Write the scenario's figure to `path` (the suffix names the format) and return it."""
    figure = build_figure(runs, title=title, scenario=scenario)
    out = Path(path)
    figure.savefig(out, dpi=110)
    return out


def build_figure(runs: dict[str, RunStats], *, title: str, scenario: str | None = None) -> Figure:
    """Build the figure: both runs' positions against the cap, then the story's panels."""
    from matplotlib.figure import Figure  # noqa: PLC0415 (optional dependency)

    story = _story(runs, scenario)
    panels = [f"positions {name}" for name in runs] + [
        p for p in ("calls", "fallback", "duplicates") if p in story
    ]
    figure = Figure(figsize=(11, 2.5 * len(panels) + 0.8), layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    by_label: dict[str, Axes] = {}
    for ax, label in zip(axes, panels, strict=True):
        ax.set_label(label)
        by_label[label] = ax
    timed = [ax for label, ax in by_label.items() if label != "duplicates"]
    for ax in timed[1:]:
        ax.sharex(timed[0])

    position_axes = [by_label[f"positions {name}"] for name in runs]
    for ax in position_axes[1:]:
        ax.sharey(position_axes[0])  # one scale: 37 and 8 must look like 37 and 8
    for ax, (name, stats) in zip(position_axes, runs.items(), strict=True):
        _positions(ax, name, stats, halt="halt" in story)
    top = max([s.cap for s in runs.values()] + [s.max_positions for s in runs.values()])
    position_axes[0].set_ylim(0, top * 1.15 + 1)  # the cap line always inside the view

    if "calls" in story:
        _calls(by_label["calls"], runs)
    if "fallback" in story:
        _fallback(by_label["fallback"], runs)
    if "duplicates" in story:
        _duplicates(by_label["duplicates"], runs)
    _shade_outage(timed, runs)
    for ax in by_label.values():
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    timed[-1].set_xlabel("minutes since start")
    figure.suptitle(title)
    return figure


def _shade_outage(axes: list[Axes], runs: dict[str, RunStats]) -> None:
    outage = next((s.outage_s for s in runs.values() if s.outage_s is not None), None)
    if outage is None:
        return
    for ax in axes:
        ax.axvspan(
            outage[0] / 60,
            outage[1] / 60,
            color=_OUTAGE_COLOUR,
            alpha=0.5,
            linewidth=0,
            zorder=0.5,
            label="broker outage",
            gid="outage",
        )


def _story(runs: dict[str, RunStats], scenario: str | None) -> set[str]:
    story = set(_STORY_PANELS.get(scenario or "", set()))
    stats = list(runs.values())
    if any(s.outage_s is not None for s in stats):
        story.add("calls")
    if any(s.fallback_priced_orders for s in stats):
        story.add("fallback")
    if any(s.halted_at_s is not None for s in stats):
        story.add("halt")
    if any(s.duplicate_orders for s in stats):
        story.add("duplicates")
    return story


def _positions(ax: Axes, name: str, stats: RunStats, *, halt: bool) -> None:
    minutes = [t / 60 for t, _, _ in stats.timeline]
    held = [n for _, n, _ in stats.timeline]
    end = stats.timeline[-1][0] / 60 if stats.timeline else 0.0
    labelled: set[str] = set()
    for state, start, stop in _spans(stats):
        if state in _BAND:
            ax.axvspan(
                start / 60,
                stop / 60,
                color=_BAND[state],
                linewidth=0,
                zorder=0.4,
                label=None if state in labelled else _BAND_LABEL[state],
            )
            labelled.add(state)
    ax.step(
        minutes,
        held,
        where="post",
        color=_COLOUR.get(name, "#57606a"),
        zorder=_SERIES_Z,
        linewidth=1.6,
        label=f"{name}: positions held",
        gid="positions",
    )
    ax.axhline(
        stats.cap,
        color=_CAP_COLOUR,
        linestyle="--",
        linewidth=1.8,
        zorder=_CAP_Z,
        label=f"cap ({stats.cap})",
        gid="cap",
    )
    ax.set_ylabel("positions")
    title = (
        f"{name}: max {stats.max_positions} positions, "
        f"{stats.cap_violations} steps over the cap of {stats.cap}"
    )
    if stats.halted_at_s is not None:
        at = stats.halted_at_s / 60
        ax.axvspan(
            at,
            max(end, at),
            color=_HALT_COLOUR,
            alpha=0.12,
            linewidth=0,
            zorder=0.3,
            label="halted: no new entries",
            gid="halted",
        )
        ax.axvline(
            at,
            color=_HALT_COLOUR,
            linewidth=2,
            zorder=_CAP_Z,
            label=f"HALT at {_clock(stats.halted_at_s)}",
            gid="halt",
        )
        ax.annotate(
            f"halted at {_clock(stats.halted_at_s)}: still over the cap after its sell cycles "
            "(sells never settle); trading stays halted until an operator resumes",
            xy=(at, stats.cap),
            xytext=(14, 40),
            textcoords="offset points",
            fontsize=8,
            color=_HALT_COLOUR,
            arrowprops={"arrowstyle": "->", "color": _HALT_COLOUR},
        )
        title += f", HALTED at {_clock(stats.halted_at_s)}"
    elif halt:
        title += ", never halts"
    ax.set_title(title, fontsize=10, loc="left")


def _spans(stats: RunStats) -> list[tuple[str, float, float]]:
    """Merge consecutive steps in one circuit state: one shaded span each, not one per step."""
    spans: list[tuple[str, float, float]] = []
    for (t, _, state), (t_next, _, _) in zip(stats.timeline, stats.timeline[1:], strict=False):
        if spans and spans[-1][0] == state and spans[-1][2] == t:
            spans[-1] = (state, spans[-1][1], t_next)
        else:
            spans.append((state, t, t_next))
    return spans


def _calls(ax: Axes, runs: dict[str, RunStats]) -> None:
    for name, stats in runs.items():
        counts = stats.calls_per_minute
        ax.stairs(
            counts,
            range(len(counts) + 1),
            color=_COLOUR.get(name, "#57606a"),
            linewidth=1.6,
            zorder=_SERIES_Z,
            gid=f"calls {name}",
            label=f"{name}: {stats.broker_calls_during_outage:,} calls during the outage",
        )
    ax.set_ylabel("calls / minute")
    ax.set_title(
        "broker calls per minute: the naive loop hammers the down broker, the breaker probes",
        fontsize=10,
        loc="left",
    )


def _fallback(ax: Axes, runs: dict[str, RunStats]) -> None:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 (optional dependency)

    for name, stats in runs.items():
        ax.step(
            [t / 60 for t, _, _ in stats.timeline],
            stats.fallback_priced_timeline,
            where="post",
            color=_COLOUR.get(name, "#57606a"),
            linewidth=1.6,
            zorder=_SERIES_Z,
            gid=f"fallback {name}",
            label=f"{name}: {stats.fallback_priced_orders} orders",
        )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("orders (cumulative)")
    ax.set_ylim(bottom=0, top=max(1, *(s.fallback_priced_orders for s in runs.values())) * 1.15)
    ax.set_title(
        f"orders sized at a made-up ${FALLBACK_PRICE} because no real price came back",
        fontsize=10,
        loc="left",
    )


def _duplicates(ax: Axes, runs: dict[str, RunStats]) -> None:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 (optional dependency)

    most = max([2, *(n for s in runs.values() for n in s.intents_by_orders)])
    executions = list(range(2, most + 1))
    width = 0.8 / len(runs)
    for i, (name, stats) in enumerate(runs.items()):
        ax.bar(
            [n + (i - (len(runs) - 1) / 2) * width for n in executions],
            [stats.intents_by_orders.get(n, 0) for n in executions],
            width=width,
            color=_COLOUR.get(name, "#57606a"),
            gid=f"duplicates {name}",
            label=f"{name}: {stats.duplicate_orders} duplicate orders",
        )
    ax.set_xticks(executions, [f"{n} orders" for n in executions])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("intents")
    ax.set_title(
        "intents the broker executed more than once (a retry without a lookup)",
        fontsize=10,
        loc="left",
    )


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"
