"""bench/time_to_safety.py must keep running and keep its ordering (figures live in docs)."""

from .loader import load_bench


def load():
    return load_bench("time_to_safety")


def test_the_bench_runs_and_brokerguard_is_never_slower_than_the_seed(capsys):
    """Both tables print; compliance is never later than the seed's blind-sleep design."""
    bench = load()
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "First failure to trading blocked" in out
    for settle in (0.2, 1.0, 2.5, 5.0):
        ours, _ = bench.time_to_compliance_brokerguard(settle)
        seed, _ = bench.time_to_compliance_seed(settle)
        assert ours <= seed
    assert bench.time_to_block(failure_threshold=3, max_attempts=1) < bench.time_to_block(
        failure_threshold=5, max_attempts=3
    )
