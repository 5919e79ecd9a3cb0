"""examples/ccxt_bot.py runs against the Kraken emulator with one command, guarded or bare."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "ccxt_bot.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ccxt_bot_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def outcome(text: str) -> tuple[str, int, int]:
    found = re.search(
        r"^(\w[\w ]*): positions: (\d+) \(cap 8\); executed twice: (\d+)$", text, re.MULTILINE
    )
    assert found, text
    return found[1], int(found[2]), int(found[3])


def test_the_guarded_example_stays_within_its_cap(example, capsys):
    """`--emulator`: the guarded bot buys, never past 8, never twice."""
    assert example.main(["--emulator", "--seconds", "1", "--interval", "0.02"]) == 0
    mode, positions, twice = outcome(capsys.readouterr().out)
    assert mode == "guarded"
    assert 1 <= positions <= 8
    assert twice == 0


def test_the_bare_example_runs_too(example, capsys):
    """`--bare`: the same bot without brokerguard, for comparison."""
    assert example.main(["--emulator", "--bare", "--seconds", "0.5", "--interval", "0.02"]) == 0
    mode, positions, _ = outcome(capsys.readouterr().out)
    assert mode == "bare ccxt"
    assert positions >= 1


def test_the_example_guards_in_one_line():
    """The bot's only brokerguard call is one guard(...) line."""
    source = EXAMPLE.read_text()
    calls = [
        line for line in source.splitlines() if re.search(r"\bguard\(", line) and "``" not in line
    ]
    assert len(calls) == 1, calls
