"""`simulate --plot`: each scenario's figure shows its own story, read from the figure's structure.

No pixels are compared: the tests read the artists matplotlib would draw (lines, spans, limits,
legend boxes), so a plot that hides the story fails here.
"""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("matplotlib", reason="the plot extra: pip install 'brokerguard[plot]'")

from matplotlib.backends.backend_agg import FigureCanvasAgg

from brokerguard.cli import main
from brokerguard.sim.plot import build_figure, plot_runs
from brokerguard.sim.scenarios import SCENARIOS, simulate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_PANELS = {
    "incident": ["positions naive", "positions guarded"],
    "outage": ["positions naive", "positions guarded", "calls", "fallback"],
    "no-prices": ["positions naive", "positions guarded", "fallback"],
    "unsettled": ["positions naive", "positions guarded"],
    "flaky": ["positions naive", "positions guarded", "fallback", "duplicates"],
}


@pytest.fixture(scope="module")
def runs():
    return {name: simulate(name, seed=0) for name in SCENARIOS}


@pytest.fixture(scope="module")
def figures(runs):
    built = {}
    for name, scenario_runs in runs.items():
        figure = build_figure(scenario_runs, title=f"{name} (seed 0)", scenario=name)
        FigureCanvasAgg(figure).draw()  # lay out: legend and axes boxes get their real extents
        built[name] = figure
    return built


def _axes(figure, label):
    found = [ax for ax in figure.axes if ax.get_label() == label]
    assert len(found) == 1, (
        f"expected one {label!r} panel, got {[a.get_label() for a in figure.axes]}"
    )
    return found[0]


def _line(ax, gid):
    found = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, f"expected one line {gid!r} in {ax.get_label()!r}"
    return found[0]


def _span_x(patch):
    """The x-range of an axvspan (x in data units, y in axes units)."""
    box = patch.get_bbox()
    return (box.x0, box.x1)


def _patches(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_scenario_draws_the_panels_of_its_story(figures, scenario):
    """Positions for both runs, then the story: calls, fallback prices, duplicates."""
    assert [ax.get_label() for ax in figures[scenario].axes] == EXPECTED_PANELS[scenario]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_cap_line_is_inside_the_view_and_drawn_above_both_series(figures, runs, scenario):
    """On every positions panel: the cap inside the y-limits with room, over the series."""
    figure = figures[scenario]
    cap = runs[scenario]["naive"].cap
    for name in ("naive", "guarded"):
        ax = _axes(figure, f"positions {name}")
        cap_line = _line(ax, "cap")
        series = _line(ax, "positions")
        low, high = ax.get_ylim()
        assert set(cap_line.get_ydata()) == {cap}
        assert low < cap < high
        assert high > max(runs[scenario][name].max_positions, cap)  # nothing clipped at the top
        assert cap_line.get_zorder() > series.get_zorder()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_naive_and_guarded_positions_share_one_y_scale(figures, scenario):
    """37 and 8 must look like 37 and 8: the positions panels have identical y-limits."""
    figure = figures[scenario]
    naive = _axes(figure, "positions naive")
    guarded = _axes(figure, "positions guarded")
    assert naive.get_ylim() == guarded.get_ylim()
    assert guarded in naive.get_shared_y_axes().get_siblings(naive)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_legend_sits_outside_the_data_area(figures, scenario):
    """No legend box overlaps the axes it describes (so it never hides a series)."""
    figure = figures[scenario]
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        legend = ax.get_legend()
        assert legend is not None, ax.get_label()
        box = legend.get_window_extent(renderer)
        area = ax.get_window_extent(renderer)
        assert box.x0 >= area.x1 or not box.overlaps(area), ax.get_label()


def test_the_outage_panel_counts_the_calls_the_table_reports(figures, runs):
    """Calls per minute summed over the outage window equal the table's figure, for both runs."""
    ax = _axes(figures["outage"], "calls")
    start, end = SCENARIOS["outage"].outage
    for name in ("naive", "guarded"):
        (patch,) = _patches(ax, f"calls {name}")
        values, edges = patch.get_data().values, patch.get_data().edges
        during = sum(
            v for v, left in zip(values, edges, strict=False) if start / 60 <= left < end / 60
        )
        assert during == runs["outage"][name].broker_calls_during_outage
    naive, guarded = (runs["outage"][n].broker_calls_during_outage for n in ("naive", "guarded"))
    assert naive > 20 * guarded  # the story the panel exists for
    (shade,) = _patches(ax, "outage")
    assert _span_x(shade) == (start / 60, end / 60)


@pytest.mark.parametrize("scenario", ["outage", "no-prices"])
def test_fallback_priced_orders_rise_for_naive_and_stay_zero_for_guarded(figures, runs, scenario):
    """The made-up $1.00 orders, cumulative: naive ends at the table's count, guarded at zero."""
    ax = _axes(figures[scenario], "fallback")
    naive = _line(ax, "fallback naive").get_ydata()
    guarded = _line(ax, "fallback guarded").get_ydata()
    assert naive[-1] == runs[scenario]["naive"].fallback_priced_orders > 0
    assert list(naive) == sorted(naive)  # cumulative
    assert set(guarded) == {0}


def test_the_unsettled_halt_is_marked_at_its_time_on_the_guarded_panel_only(figures, runs):
    """A vertical line and an annotation at the halt's time; the halted span shaded."""
    figure = figures["unsettled"]
    halted_at = runs["unsettled"]["guarded"].halted_at_s
    assert halted_at is not None
    guarded = _axes(figure, "positions guarded")
    halt = _line(guarded, "halt")
    assert set(halt.get_xdata()) == {halted_at / 60}
    minutes, seconds = divmod(round(halted_at), 60)
    stamp = f"{minutes}:{seconds:02d}"
    assert any(stamp in text.get_text() and "halted" in text.get_text() for text in guarded.texts)
    assert f"HALTED at {stamp}" in guarded.get_title(loc="left")
    (span,) = _patches(guarded, "halted")
    assert _span_x(span)[0] == halted_at / 60
    naive = _axes(figure, "positions naive")
    assert not [line for line in naive.get_lines() if line.get_gid() == "halt"]
    assert "never halts" in naive.get_title(loc="left")


def test_the_flaky_panel_shows_the_intents_executed_twice(figures, runs):
    """Bars per number of executions: the naive duplicates add up to the table's figure."""
    ax = _axes(figures["flaky"], "duplicates")
    naive = runs["flaky"]["naive"]
    heights = [p.get_height() for p in _patches(ax, "duplicates naive")]
    executions = range(2, 2 + len(heights))
    assert sum((n - 1) * h for n, h in zip(executions, heights, strict=True)) == (
        naive.duplicate_orders
    )
    assert naive.duplicate_orders > 0
    assert {p.get_height() for p in _patches(ax, "duplicates guarded")} == {0}


def test_a_written_plot_is_a_real_png_of_a_readable_size(runs, tmp_path):
    """plot_runs writes a PNG: the signature, a plausible size, and dimensions from its header."""
    path = plot_runs(runs["outage"], tmp_path / "outage.png", title="outage", scenario="outage")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the signature
    assert width >= 800
    assert height >= 600
    assert 20_000 < len(data) < 2_000_000


def test_the_command_says_where_the_plot_went(capsys, tmp_path):
    """`simulate --plot` prints "plot written to PATH", on stderr under --json (stdout is JSON)."""
    plot = tmp_path / "no-prices.png"
    assert main(["simulate", "--scenario", "no-prices", "--plot", str(plot)]) == 0
    assert f"plot written to {plot}" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == PNG_MAGIC

    plot.unlink()
    assert main(["simulate", "--scenario", "no-prices", "--plot", str(plot), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "plot written" not in out
    assert f"plot written to {plot}" in err
    assert plot.exists()
