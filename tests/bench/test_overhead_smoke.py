"""bench/overhead.py must keep running (its figures live in docs/benchmarks.md, not in tests)."""

from .loader import load_bench


def load():
    return load_bench("overhead")


def test_every_probe_runs_and_the_table_has_every_row(capsys):
    """A quick run measures every path of every library and prints the verdicts."""
    overhead = load()
    assert overhead.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for path, name, _ in overhead.SYNC_PROBES:
        assert f"| {path} | {name} |" in out
    for name in ("brokerguard", "aiobreaker", "purgatory", "bare await"):
        assert f"| async | {name} |" in out
    for name in ("brokerguard", "tenacity", "stamina", "backoff"):
        assert f"| async-retry-ok | {name} |" in out
    assert "| async retry-ok (acall_with_circuit_breaker) / acall |" in out
    assert "| closed success path / bare call |" in out


def test_the_open_probes_really_measure_rejections():
    """Each 'open' probe must hit a rejection, or the benchmark would time the wrong thing."""
    overhead = load()
    env = overhead.build_env()
    for path, name, stmt in overhead.SYNC_PROBES:
        if path == "open":
            flag = {}
            body = stmt.replace("    pass", "    flag['rejected'] = True")
            exec(body, {**env, "flag": flag})  # noqa: S102 (our own probe text)
            assert flag == {"rejected": True}, name
