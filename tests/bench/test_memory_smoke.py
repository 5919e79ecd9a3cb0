"""bench/memory.py keeps running (its 24-hour figures live in docs/benchmarks.md, not here)."""

from .loader import load_bench


def test_a_short_simulated_run_of_both_worlds_prints_a_verdict_and_samples(capsys):
    """Twelve simulated minutes of each world: a summary row and a heap sample per interval."""
    memory = load_bench("memory")
    args = ["--hours", "0.2", "--sample", "240", "--warmup", "240"]
    fleet = ["--accounts", "20", "--brokers", "2", "--interval", "60"]
    assert memory.main([*args, *fleet, "--top", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| embedded |", "| fleet |"))]
    assert [row.split("|")[1].strip() for row in rows] == ["embedded", "fleet"]
    assert "embedded: heap by simulated hour" in out
    assert "fleet: heap by simulated hour" in out
    assert "growth in embedded between warm-up and end" in out


def test_the_run_really_simulates_the_requested_time_and_passes():
    """The service loop runs on the fake clock for the whole span: one pass per interval."""
    memory = load_bench("memory")
    verdict, samples = memory.run_world(
        "fleet",
        hours=0.5,
        sample_s=600,
        warmup_s=600,
        accounts=5,
        brokers=1,
        interval=60,
        top=0,
    )
    assert samples[-1].at_s >= 1800
    assert 29 <= verdict.passes <= 31
    assert all(s.heap > 0 and s.rss > 0 for s in samples)
