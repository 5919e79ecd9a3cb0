"""Quiet, structured logs: repeats collapsed, and one JSON object per line for log shippers.

A guard that fails closed keeps failing closed on every pass: the same unusable price, the same
halt, the same over-cap cycle, every few seconds. Logged each time, one incident buries
everything else (the demo printed 75 identical CRITICAL lines; an unsettled simulation said
"TRADING HALTED" 104 times for one halt). The code that knows a state's edges logs the state once
on entry and once on exit; :class:`CollapsingHandler` is the safety net for everything else.

Collapsing (``window_s``, default 60 s). Records are the same when their logger, level,
message template, rendered message and context fields (``account``, ``broker``, ``symbol``,
``reason``, ``code``) are. The first record is written; the same record again within the
window is counted, not written, and one summary follows:
``<the message> ... repeated 74 times in 60 s``. The summary is written

- as soon as a different record arrives, when the repeats came one after the other;
- when the window ends (checked as records arrive), for repeats interleaved with others
  (a cycle ``A B C A B C ...`` is written once per window, each with its summary);
- when the handler is flushed by :meth:`CollapsingHandler.flush_repeats` or closed.

Time comes from an injected callable (default: each record's own ``created``), so tests move
it by hand instead of sleeping.

JSON format (``--log-format json``): one object per line, keys sorted, never a newline
inside. The field names are stable; a shipper may index them:

==================  ==========================================================================
``ts``              the record's time, ISO 8601 UTC with milliseconds (``2026-11-30T18:41:19.813Z``)
``level``           ``DEBUG`` / ``INFO`` / ``WARNING`` / ``ERROR`` / ``CRITICAL``
``logger``          the logger's name (``brokerguard.enforcer``, ``brokerguard.broker`` ...)
``msg``             the rendered message
``account``         the account id, when the call passed ``extra={"account": ...}``
``broker``          the broker's name, likewise
``symbol``          the symbol, likewise
``reason``          a reason code (SCREAMING_SNAKE, the same as the metric label), likewise
``code``            an error or exit code, likewise
``state``           ``entered`` / ``left`` for a state logged on its edges, likewise
``repeated``        on a summary line only: how many records were collapsed into it
``repeated_over_s`` on a summary line only: seconds from the first to the last of them
``exc``             the traceback, when the record carries one
==================  ==========================================================================

Every string written (message, fields, traceback), in both formats, is passed through
:func:`redact_text`: a URL's password and ``name=value`` secrets become ``***``.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from brokerguard._redact import redact_url

__all__ = [
    "CONTEXT_FIELDS",
    "CollapsingHandler",
    "JsonFormatter",
    "LogFormat",
    "StreamLogHandler",
    "TextFormatter",
    "configure_logging",
    "log_context",
    "redact_text",
    "repeat_key",
    "unconfigure_logging",
]

CONTEXT_FIELDS: Final = ("account", "broker", "symbol", "reason", "code", "state")
"""The ``extra=`` fields the JSON format carries when a log call passes them."""

DEFAULT_WINDOW_S: Final = 60.0
"""How long repeats of one record are counted before it is written again (seconds)."""

_TOKEN = re.compile(r"\S+")
_WHOLE_SECONDS_FROM: Final = 10.0  # a summary's duration: whole seconds from here, tenths below


class LogFormat(enum.Enum):
    """How log records are written: for people (``text``) or for log shippers (``json``)."""

    TEXT = "text"
    JSON = "json"


def redact_text(text: str) -> str:
    """Return `text` with every URL password and ``name=value`` secret in it masked.

    Word by word: :func:`~brokerguard._redact.redact_url` scans what follows a URL's scheme,
    and a log message may hold ``token=...`` before any URL.
    """
    return _TOKEN.sub(lambda m: redact_url(m.group(0)), text)


def log_context(
    *,
    account: str | None = None,
    broker: str | None = None,
    symbol: str | None = None,
    reason: str | None = None,
    code: str | int | None = None,
    state: str | None = None,
) -> dict[str, Any]:
    """Return the ``extra=`` of a log call: the context fields given, None left out.

    One spelling of the field names for every caller, so the JSON a shipper indexes is the
    same whoever logged it (``state``: ``entered`` or ``left`` for a state logged on its edges).
    """
    given = {
        "account": account,
        "broker": broker,
        "symbol": symbol,
        "reason": reason,
        "code": code,
        "state": state,
    }
    return {name: value for name, value in given.items() if value is not None}


def repeat_key(record: logging.LogRecord) -> tuple[Any, ...]:
    """Return what makes two records "the same" for collapsing.

    The template alone would merge two accounts' halts; the rendered message alone would merge
    two loggers' lines. Context fields count too: the same words about another broker differ.
    """
    context = tuple(str(getattr(record, name, "")) for name in CONTEXT_FIELDS)
    return (record.name, record.levelno, str(record.msg), record.getMessage(), context)


@dataclass
class _Run:
    """One record written, and the repeats of it counted since (mutable: the handler's own)."""

    first: logging.LogRecord
    first_at: float
    last_at: float
    last_created: float
    count: int = 0
    consecutive: bool = True  # no other record came between the first and its repeats


class CollapsingHandler(logging.Handler):
    """Write records to `target`, repeats collapsed into one summary line (see the module).

    `clock`: the time of a record arriving (default: the record's ``created``), a plain
    callable so a test can move it; `window_s`: how long repeats are counted.
    """

    def __init__(
        self,
        target: logging.Handler,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds, got {window_s!r}")
        super().__init__()
        self.target = target
        self.window_s = float(window_s)
        self._clock = clock
        self._runs: dict[tuple[Any, ...], _Run] = {}  # insertion order: first seen first
        self._last_key: tuple[Any, ...] | None = None
        self.previous_root_level: int | None = None  # restored by unconfigure_logging

    def emit(self, record: logging.LogRecord) -> None:
        """Write `record`, or count it as a repeat of one written within the window."""
        try:
            self._collapse(record)
        except Exception:  # noqa: BLE001 (logging's contract: a log call never raises)
            self.handleError(record)

    def _collapse(self, record: logging.LogRecord) -> None:
        now = record.created if self._clock is None else self._clock()
        key = repeat_key(record)
        last = self._last_key
        if last is not None and last != key:
            previous = self._runs.get(last)
            if previous is not None and previous.consecutive and previous.count:
                # A run of identical records ended: say so before what comes next.
                self._summarise(self._runs.pop(last))
        for other, pending in list(self._runs.items()):
            if other != key:
                if not pending.count:
                    pending.consecutive = False
                if now - pending.first_at >= self.window_s:
                    self._summarise(self._runs.pop(other))
        self._last_key = key
        run = self._runs.get(key)
        if run is not None and now - run.first_at >= self.window_s:
            self._summarise(self._runs.pop(key))
            run = None
        if run is None:
            self._runs[key] = _Run(record, now, now, record.created)
            self.target.handle(record)
        else:
            run.count += 1
            run.last_at = now
            run.last_created = record.created

    def flush_repeats(self) -> None:
        """Write the summary of every repeat counted so far, oldest first, and forget them."""
        with self._held():
            runs, self._runs, self._last_key = self._runs, {}, None
            for run in runs.values():
                self._summarise(run)

    def flush(self) -> None:
        """Flush the target (repeats are summarised by :meth:`flush_repeats` or on close)."""
        self.target.flush()

    def close(self) -> None:
        """Write the pending summaries, then close the target."""
        self.flush_repeats()
        self.target.close()
        super().close()

    def _summarise(self, run: _Run) -> None:
        if not run.count:
            return
        over = run.last_at - run.first_at
        summary = logging.makeLogRecord(dict(run.first.__dict__))
        summary.msg = (
            f"{run.first.getMessage()} ... repeated {run.count} "
            f"{'time' if run.count == 1 else 'times'} in {_seconds(over)} s"
        )
        summary.args = None
        summary.created = run.last_created  # the summary is as old as the last repeat
        summary.msecs = (run.last_created % 1) * 1000
        summary.exc_info = None
        summary.exc_text = None
        summary.stack_info = None
        summary.__dict__.update(repeated=run.count, repeated_over_s=round(over, 3))
        self.target.handle(summary)

    def _held(self) -> _Lock:
        return _Lock(self)


class _Lock:
    """The handler's own lock as a context manager (``Handler.lock`` may be None)."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler

    def __enter__(self) -> None:
        self.handler.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.handler.release()


def _seconds(value: float) -> str:
    """Whole seconds from ten on, tenths below (``0.4``, ``3``, ``60``)."""
    return f"{value:.0f}" if value >= _WHOLE_SECONDS_FROM else f"{value:.1f}".removesuffix(".0")


class StreamLogHandler(logging.Handler):
    """Write formatted records, one per line, to `stream` (default: ``sys.stderr`` *now*).

    Looking ``sys.stderr`` up at each record, not once, keeps a handler installed by one CLI
    call working when the stream is swapped later (test capture, a daemon's redirection).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line; a failure to write is reported by logging, never raised."""
        try:
            stream = self._stream if self._stream is not None else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 (logging's contract: a log call never raises)
            self.handleError(record)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message`` for a terminal, or ``ts= level= logger= msg=`` when piped.

    The piped form is logfmt (one record per line, the message quoted), with the context
    fields appended as ``account=...`` when the call passed them.
    """

    def __init__(self, *, structured: bool) -> None:
        super().__init__()
        self.structured = structured

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line (a traceback follows on its own lines), redacted."""
        message = redact_text(record.getMessage())
        if self.structured:
            line = (
                f"ts={_iso(record.created)} level={record.levelname} logger={record.name} "
                f"msg={message!r}"
            )
            for name in CONTEXT_FIELDS:
                value = getattr(record, name, None)
                if value is not None:
                    line += f" {name}={redact_text(str(value))!r}"
        else:
            line = f"{record.levelname} {record.name}: {message}"
        if record.exc_info:
            line += "\n" + redact_text(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; the fields are listed in the module docstring."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a single-line JSON object with redacted strings."""
        data: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for name in (*CONTEXT_FIELDS, "repeated", "repeated_over_s"):
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value if isinstance(value, int | float) else redact_text(str(value))
        if record.exc_info:
            data["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)


def _iso(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created * 1000) % 1000:03d}Z"


def configure_logging(
    log_format: LogFormat | str = LogFormat.TEXT,
    *,
    level: int = logging.WARNING,
    structured: bool = True,
    stream: TextIO | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    clock: Callable[[], float] | None = None,
) -> CollapsingHandler:
    """Install brokerguard's log handler on the root logger; return it.

    Replaces the handler an earlier call installed (and writes its pending summaries), and
    leaves every other handler alone. `structured`: logfmt text (piped) or the short terminal
    form; ignored for JSON. Raises ValueError for an unknown `log_format`.
    """
    chosen = LogFormat(log_format)
    target = StreamLogHandler(stream)
    target.setFormatter(
        JsonFormatter() if chosen is LogFormat.JSON else TextFormatter(structured=structured)
    )
    handler = CollapsingHandler(target, window_s=window_s, clock=clock)  # closed before target
    root = logging.getLogger()
    handler.previous_root_level = root.level
    for old in [h for h in root.handlers if isinstance(h, CollapsingHandler)]:
        root.removeHandler(old)
        old.close()
        if old.previous_root_level is not None:
            handler.previous_root_level = old.previous_root_level
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def unconfigure_logging() -> None:
    """Remove what :func:`configure_logging` installed: summaries written, root level restored.

    The CLI calls this when a command ends, so a process (or a test) that runs commands in turn
    is left as it was, and a command's last summaries come out before it exits.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, CollapsingHandler)]:
        root.removeHandler(old)
        old.close()
        if old.previous_root_level is not None:
            root.setLevel(old.previous_root_level)
