"""bench/jitter.py, bench/fleet.py and bench/outage.py keep running (figures live in docs)."""

from .loader import load_bench


def test_jitter_reproduces_the_articles_ordering_in_a_small_run(capsys):
    """Full jitter beats plain exponential on calls and time; every strategy prints a row."""
    jitter = load_bench("jitter")
    assert jitter.main(["--runs", "5", "--clients", "40"]) == 0
    out = capsys.readouterr().out
    for name in jitter.STRATEGIES:
        assert f"| {name}" in out
    full = jitter.measure(40, "brokerguard full", 5, 1)
    plain = jitter.measure(40, "brokerguard proportional, jitter 0 (= plain exponential)", 5, 1)
    assert full.calls < plain.calls
    assert full.completion < plain.completion


def test_fleet_runs_a_small_fleet_and_every_account_is_compliant(capsys):
    """A pass over a small fleet prints its time against the bound and memory per account."""
    fleet = load_bench("fleet")
    args = ["--accounts", "60", "--positions", "5", "--brokers", "3", "--rate", "1000"]
    assert fleet.main([*args, "--latency", "0.001", "--concurrency", "8", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out
    assert "| 60 | 0 |" in out  # all 60 accounts compliant, none unenforced
    assert "KiB per account" in out


def test_fleet_per_key_layout_shares_prices_per_venue(capsys):
    """One key per account: every account enforced, prices fetched per venue, not per account."""
    fleet = load_bench("fleet")
    args = ["--accounts", "30", "--positions", "3", "--brokers", "3", "--rate", "1000"]
    more = ["--latency", "0", "--concurrency", "4", "--passes", "1", "--layout", "per-key"]
    assert fleet.main([*args, *more]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6:8] == ["30", "0"]  # compliant, unenforced
    assert int(cells[8]) <= 6  # price calls: a few per venue, not one per account


def test_fleet_without_reads_ahead_enforces_every_account_too(capsys):
    """--no-reads-ahead: the pool reads for each account; the same accounts are compliant."""
    fleet = load_bench("fleet")
    args = ["--accounts", "30", "--positions", "3", "--brokers", "3", "--rate", "1000"]
    more = ["--latency", "0", "--concurrency", "4", "--passes", "1", "--no-reads-ahead"]
    assert fleet.main([*args, *more]) == 0
    out = capsys.readouterr().out
    assert "reads ahead off" in out
    row = next(line for line in out.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6:8] == ["30", "0"]


def test_fleet_table_makes_one_row_from_a_fleet_process():
    """bench/fleet_table.py runs bench/fleet.py: the median of the passes after the first."""
    table = load_bench("fleet_table")
    row = table.run((30, 0.001, "sqlite", "shared", True, 4), passes=3)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["30", "1 ms", "SQLite", "shared", "ahead"]
    assert cells[-1] == "0"  # unenforced, in any pass
    assert float(cells[5]) > 0
    low, high = (int(n) for n in cells[10].split("-"))
    assert low <= int(cells[9]) <= high  # the median lies within the steady passes' range


def test_outage_runs_every_strategy_against_the_emulator(capsys):
    """A one-second outage: every strategy recovers; breakers send far less than the loop."""
    outage = load_bench("outage")
    args = ["--clients", "3", "--outage", "1.5", "--warmup", "0.5", "--recovery-timeout", "0.5"]
    assert outage.main(args) == 0
    rows = {
        line.split("|")[1].strip(): line.split("|")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and "strategy" not in line
    }
    assert set(rows) == set(outage.STRATEGIES)
    for row in rows.values():
        assert row[4].strip() == "3/3"
    naive_calls = int(rows["naive retry loop"][2].replace(",", ""))
    guarded_calls = int(rows["brokerguard, one shared breaker"][2].replace(",", ""))
    assert guarded_calls < naive_calls


def test_shared_breaker_bench_measures_every_path(capsys, redis_namespace):
    """The fleet's per-call price is measured on the real Redis (figures live in docs)."""
    shared = load_bench("shared_breaker")
    assert shared.main(["--calls", "50"]) == 0
    out = capsys.readouterr().out
    for row in ("local breaker", "shared breaker, closed", "shared breaker, open", "Redis PING"):
        assert f"| {row}" in out


def test_pretrade_times_every_call_of_the_v1_api(capsys):
    """A short run over real HTTP: a row per call, and every reservation answered 201 or 409."""
    pretrade = load_bench("pretrade")
    assert pretrade.main(["--rounds", "20"]) == 0
    rows = {
        line.split("|")[1].strip(): line.split("|")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and "call" not in line
    }
    assert {"reserve", "gate"} <= set(rows)
    assert int(rows["reserve"][2].replace(",", "")) == 20
    answers = [a.strip() for a in rows["reserve"][8].split(",")]
    assert all(a.startswith(("201:", "409 ")) for a in answers), answers
    assert sum(int(a.rsplit(":", 1)[1]) for a in answers) == 20


def test_kept_orders_prints_the_cost_of_keeping_sent_orders(capsys):
    """A row per store, and keeping orders costs something (two durable writes an order)."""
    kept = load_bench("kept_orders")
    assert kept.main(["--orders", "40", "--no-pg"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "SQLite file" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "40"
    assert float(cells[3].replace(",", "")) > float(cells[2].replace(",", ""))
