"""Quiet, structured logs: repeats collapse into one summary; JSON lines carry the context."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerguard.brokers.paper import FaultPlan, PaperBroker
from brokerguard.logs import (
    CollapsingHandler,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_context,
    redact_text,
    unconfigure_logging,
)
from brokerguard.risk import PositionCapEnforcer
from brokerguard.store import open_store
from brokerguard.testing import FakeClock
from tests.risk.worlds import coins, paper_account

SECRET = "hunter2-s3cr3t"  # noqa: S105 (a fake secret that must never be written)


class Recorder(logging.Handler):
    """The collapser's target: keeps what it was handed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Ticker:
    """A clock-ish callable the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_record(message: str, *args: object, level: int = logging.WARNING, **extra: object):
    record = logging.LogRecord("brokerguard.test", level, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def collapser(window_s: float = 60.0) -> tuple[CollapsingHandler, Recorder, Ticker]:
    target, ticker = Recorder(), Ticker()
    return CollapsingHandler(target, window_s=window_s, clock=ticker), target, ticker


def fail(message: str) -> None:
    raise RuntimeError(message)


def repeated(record: logging.LogRecord) -> int | None:
    return getattr(record, "repeated", None)


@given(n=st.integers(min_value=1, max_value=300), step=st.floats(min_value=0, max_value=0.19))
def test_n_identical_records_become_the_first_and_one_summary_of_n_minus_1(n, step):
    """N identical records within the window: the first, then exactly one summary (N-1)."""
    handler, target, ticker = collapser(window_s=60.0)
    for _ in range(n):
        handler.handle(make_record("price for %s is unusable", "DOGE/USD"))
        ticker.now += step
    handler.close()
    assert target.records[0].getMessage() == "price for DOGE/USD is unusable"
    assert repeated(target.records[0]) is None
    if n == 1:
        assert len(target.records) == 1
    else:
        assert len(target.records) == 2
        assert repeated(target.records[1]) == n - 1
        assert target.records[1].getMessage().startswith("price for DOGE/USD is unusable")
        times = "time" if n == 2 else "times"  # one repeat: "1 time"
        assert f"... repeated {n - 1} {times} in " in target.records[1].getMessage()


@given(
    keys=st.lists(st.sampled_from("ABCD"), min_size=1, max_size=80),
    steps=st.lists(st.floats(min_value=0, max_value=30), min_size=80, max_size=80),
)
def test_interleavings_keep_order_and_account_for_every_record(keys, steps):
    """Any interleaving, any timing: each record is written or counted exactly once.

    First occurrences keep their order, and a summary never precedes what it summarises.
    """
    handler, target, ticker = collapser(window_s=60.0)
    for key, step in zip(keys, steps, strict=False):
        handler.handle(make_record("message %s", key))
        ticker.now += step
    handler.close()
    written = [(r.getMessage().split()[1], repeated(r)) for r in target.records]
    accounted = Counter()
    for key, count in written:
        accounted[key] += count or 1
    assert accounted == Counter(keys)
    firsts = [key for key, count in written if count is None]
    assert list(dict.fromkeys(firsts)) == list(dict.fromkeys(keys))
    open_runs: set[str] = set()
    for key, count in written:
        if count is None:
            open_runs.add(key)
        else:
            assert key in open_runs, "a summary came before its first record"


def test_a_run_of_repeats_is_summarised_as_soon_as_another_record_arrives():
    """A A A B: A, its summary (2), then B, in that order."""
    handler, target, ticker = collapser()
    for _ in range(3):
        handler.handle(make_record("A happened"))
        ticker.now += 1
    handler.handle(make_record("B happened"))
    assert [r.getMessage() for r in target.records] == [
        "A happened",
        "A happened ... repeated 2 times in 2 s",
        "B happened",
    ]


def test_a_cycle_is_written_once_per_window_with_one_summary_each():
    """A B C A B C ... for 100 passes within the window: three lines and three summaries."""
    handler, target, ticker = collapser()
    for _ in range(100):
        for key in "ABC":
            handler.handle(make_record("cycle %s", key))
            ticker.now += 0.1
    handler.close()
    assert [(r.getMessage()[:7], repeated(r)) for r in target.records] == [
        ("cycle A", None),
        ("cycle B", None),
        ("cycle C", None),
        ("cycle A", 99),
        ("cycle B", 99),
        ("cycle C", 99),
    ]


def test_a_repeat_after_the_window_is_written_again_after_the_summary():
    """A state that persists is said again once a window: the summary, then the record."""
    handler, target, ticker = collapser(window_s=60.0)
    for _ in range(13):  # every 5 s for a minute
        handler.handle(make_record("still halted"))
        ticker.now += 5
    assert [(r.getMessage(), repeated(r)) for r in target.records] == [
        ("still halted", None),
        ("still halted ... repeated 11 times in 55 s", 11),
        ("still halted", None),
    ]


def test_records_differing_in_args_level_or_context_are_not_merged():
    """Two accounts' halts, or the same words at another level, are different records."""
    handler, target, _ = collapser()
    handler.handle(make_record("HALTED %s", "a"))
    handler.handle(make_record("HALTED %s", "b"))
    handler.handle(make_record("HALTED %s", "b", level=logging.ERROR))
    handler.handle(make_record("HALTED %s", "b", level=logging.ERROR, broker="kraken"))
    assert len(target.records) == 4


def test_the_window_must_be_positive():
    """A zero window would collapse nothing and hide that it does nothing: refused."""
    with pytest.raises(ValueError, match="window_s"):
        CollapsingHandler(Recorder(), window_s=0)


def test_json_lines_parse_and_carry_the_context_fields():
    """One object per line; ts, level, logger, msg always; account/broker/reason when given."""
    record = make_record(
        "TRADING HALTED for account %s",
        "acct",
        level=logging.CRITICAL,
        **log_context(account="acct", broker="paper", reason="FAILED_ENFORCEMENT"),
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "CRITICAL"
    assert data["logger"] == "brokerguard.test"
    assert data["msg"] == "TRADING HALTED for account acct"
    assert (data["account"], data["broker"], data["reason"]) == (
        "acct",
        "paper",
        "FAILED_ENFORCEMENT",
    )
    assert data["ts"].endswith("Z")
    assert "symbol" not in data  # not given: left out, never null


def test_a_summary_line_in_json_says_how_many_and_over_how_long():
    """The summary's object carries ``repeated`` and ``repeated_over_s`` as numbers."""
    target = Recorder()
    ticker = Ticker()
    handler = CollapsingHandler(target, clock=ticker)
    for _ in range(4):
        handler.handle(make_record("stale price", **log_context(symbol="ETH/USD")))
        ticker.now += 2
    handler.close()
    data = json.loads(JsonFormatter().format(target.records[-1]))
    assert (data["repeated"], data["repeated_over_s"], data["symbol"]) == (3, 6.0, "ETH/USD")


def test_secrets_never_reach_the_output_in_either_format():
    """A URL password, a token parameter or a secret in a traceback are masked."""
    try:
        fail(f"connect to redis://:{SECRET}@cache:6379 failed")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = make_record(
        "store postgresql://bg:%s@db/bg down; retry with api_key=%s",
        SECRET,
        SECRET,
        reason=f"token={SECRET}",
    )
    record.exc_info = exc_info
    outputs = [
        JsonFormatter().format(record),
        TextFormatter(structured=True).format(record),
        TextFormatter(structured=False).format(record),
    ]
    for output in outputs:
        assert SECRET not in output
        assert "***" in output
    assert json.loads(outputs[0])["exc"].startswith("Traceback")


def test_redact_text_leaves_plain_words_alone():
    """Only secrets are masked: account ids, symbols and numbers stay readable."""
    text = "account paper:main over cap 12/8 on BTC/USD at https://api.kraken.com/0/private"
    assert redact_text(text) == text


def test_configure_logging_replaces_its_handler_and_unconfigure_restores_the_root():
    """Two configurations leave one handler; unconfiguring flushes summaries and the level."""
    root = logging.getLogger()
    before_level, before = root.level, list(root.handlers)
    stream = io.StringIO()
    configure_logging("text", level=logging.INFO, stream=stream)
    configure_logging("json", level=logging.INFO, stream=stream)
    try:
        ours = [h for h in root.handlers if isinstance(h, CollapsingHandler)]
        assert len(ours) == 1
        for _ in range(3):
            logging.getLogger("brokerguard.test").warning("breaker open for %s", "paper")
    finally:
        unconfigure_logging()
    assert root.level == before_level
    assert root.handlers == before
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("repeated") for line in lines] == [None, 2]


def test_the_default_stream_is_stderr_at_the_time_of_the_record(capsys):
    """A handler installed earlier writes to whatever sys.stderr is now (capture, redirect)."""
    configure_logging("text", level=logging.WARNING, structured=False)
    try:
        capsys.readouterr()
        logging.getLogger("brokerguard.test").error("the store is down")
    finally:
        unconfigure_logging()
    assert "ERROR brokerguard.test: the store is down" in capsys.readouterr().err


def test_configure_logging_refuses_an_unknown_format():
    """A typo in the format is an error, not silently text."""
    with pytest.raises(ValueError, match="yaml"):
        configure_logging("yaml")


def test_an_unusable_price_is_logged_on_entering_and_on_leaving_only(caplog):
    """The same NaN on every pass: CRITICAL once; a valid price again: one line saying so."""
    plan = FaultPlan(bad_prices={"DOGE/USD": "NaN"})
    broker = PaperBroker(
        "paper", seed=1, clock=FakeClock(start=1e9), prices={"DOGE/USD": "0.1"}, fault_plan=plan
    )
    with caplog.at_level(logging.DEBUG, logger="brokerguard.broker"):
        for _ in range(5):
            assert broker.get_current_price("DOGE/USD") is None
        plan.bad_prices.clear()  # type: ignore[attr-defined]
        for _ in range(3):
            assert broker.get_current_price("DOGE/USD") is not None
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert (critical[0].symbol, critical[0].reason, critical[0].state) == (
        "DOGE/USD",
        "nan",
        "entered",
    )
    left = [r for r in caplog.records if getattr(r, "state", None) == "left"]
    assert len(left) == 1
    assert "usable again" in left[0].getMessage()


def test_a_halt_is_announced_once_however_many_passes_fail_again(clock, tmp_path, caplog):
    """Five failing passes on an unsettled account: one CRITICAL "TRADING HALTED", not five."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    prices = coins(10)
    broker = paper_account(
        clock,
        prices=prices,
        positions=dict.fromkeys(prices, "1"),
        plan=FaultPlan(unsettled_sells=True),
    )
    enforcer = PositionCapEnforcer(broker, 8, store=store)
    with caplog.at_level(logging.DEBUG, logger="brokerguard.enforcer"):
        for _ in range(5):
            assert enforcer.enforce_cap()[1]["status"] == "failed_enforcement"
    halts = [r for r in caplog.records if "TRADING HALTED" in r.getMessage()]
    assert [r.levelno for r in halts] == [logging.CRITICAL] + [logging.DEBUG] * 4
    assert (halts[0].account, halts[0].reason, halts[0].state) == (
        broker.account_id,
        "FAILED_ENFORCEMENT",
        "entered",
    )
    assert len(store.audit_log(broker.account_id, limit=100)) >= 5  # every pass still audited


def test_unknown_positions_are_logged_on_entering_and_on_leaving(clock, caplog):
    """Three blind passes: one ERROR; positions readable again: one line saying so."""
    prices = coins(3)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    enforcer = PositionCapEnforcer(broker, 8)
    with caplog.at_level(logging.DEBUG, logger="brokerguard.enforcer"):
        broker.read_breaker.force_open("exchange outage")
        for _ in range(3):
            assert enforcer.enforce_cap()[1]["status"] == "unverified"
        broker.read_breaker.force_closed()
        for _ in range(2):
            assert enforcer.enforce_cap()[1]["status"] == "compliant"
    blind = [r for r in caplog.records if "UNVERIFIED" in r.getMessage()]
    assert [r.levelno for r in blind] == [logging.ERROR] + [logging.DEBUG] * 2
    assert blind[0].reason == "POSITIONS_UNKNOWN"
    back = [r for r in caplog.records if getattr(r, "state", None) == "left"]
    assert len(back) == 1
    assert "known again" in back[0].getMessage()
