"""The README's first command runs this demo; it must tell the breaker's story correctly."""

import json
import subprocess
import sys

from brokerguard.demo import OUTAGE, main, run_demo


def test_demo_opens_during_the_outage_and_closes_after_it():
    """The circuit opens inside the outage, probes, and is closed and healthy at the end."""
    lines = run_demo(seed=7)
    transitions = [line for line in lines if "circuit" in line and "->" in line]
    assert "closed -> open" in transitions[0]
    first_open_at = float(transitions[0].split("t=")[1].split("s")[0])
    assert OUTAGE[0] <= first_open_at < OUTAGE[1]
    assert "half_open -> closed" in transitions[-1]
    closed_at = float(transitions[-1].split("t=")[1].split("s")[0])
    assert closed_at >= OUTAGE[1]
    status = json.loads(lines[-1].removeprefix("status: "))
    assert status["breakers"]["read"]["circuit_state"] == "closed"
    assert status["health_state"] == "healthy"
    assert status["trading_allowed"] is True
    assert status["data_quality"]["price.nan"] > 0


def test_demo_spares_the_broker_during_the_outage_and_invents_no_price():
    """Few calls reach the broker while it is down, and the NaN price stays null."""
    lines = run_demo(seed=7)
    done = next(line for line in lines if line.startswith("done:"))
    reached = int(done.split("during the outage ")[1].split(" call")[0])
    polls = int(done.split("broker for ")[1].split(" polls")[0])
    assert reached < polls / 3
    prices = json.loads(lines[-2].removeprefix("last prices: ").split("  (")[0])
    assert prices["DOGE/USD"] is None
    assert prices["BTC/USD"] is not None


def test_demo_is_reproducible_from_its_seed():
    """The same seed prints the same story."""
    assert run_demo(seed=3) == run_demo(seed=3)
    assert run_demo(seed=3) != run_demo(seed=4)


def test_demo_main_prints_and_exits_zero(capsys):
    """The entry point prints the lines and returns 0."""
    assert main(["--seed", "1", "--duration", "120"]) == 0
    assert "status:" in capsys.readouterr().out


def test_python_dash_m_brokerguard_runs():
    """`python -m brokerguard demo` replays the outage story."""
    done = subprocess.run(
        [sys.executable, "-m", "brokerguard", "demo", "--duration", "300"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "circuit closed -> open" in done.stdout
