"""A pytest plugin (loaded by conftest.py): a failure whose traceback holds a frame
without a line number is reported, instead of aborting the whole run.

CPython 3.11 gives some instructions no line number (in a `with` statement's exit path,
for one), so a traceback entry stopped there has `tb_lineno` None and pytest raises
TypeError while it formats the report. That is an INTERNALERROR: the session ends there,
the failure's message is lost and every test after it goes unrun. Here such an entry
gets the line of the nearest instruction before it that has one, and the report is
formatted again."""

from __future__ import annotations

import types

import pytest
from _pytest._code import ExceptionInfo
from _pytest.reports import TestReport


def _line(code: types.CodeType, lasti: int) -> int:
    positions = list(code.co_positions())[: lasti // 2 + 1]
    return next((p[0] for p in reversed(positions) if p[0] is not None), code.co_firstlineno)


def _with_lines(tb: types.TracebackType | None) -> types.TracebackType | None:
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for entry in reversed(entries):
        line = entry.tb_lineno
        if line is None:
            line = _line(entry.tb_frame.f_code, entry.tb_lasti)
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, line)
    return rebuilt


def give_lines(exc: BaseException | None, seen: set[int] | None = None) -> None:
    """Give every traceback entry of `exc`, its causes and contexts, a line number."""
    seen = set() if seen is None else seen
    if exc is None or id(exc) in seen:
        return
    seen.add(id(exc))
    exc.__traceback__ = _with_lines(exc.__traceback__)
    for inner in (exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())):
        give_lines(inner, seen)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    try:
        return (yield)
    except TypeError:
        if call.excinfo is None:
            raise
        give_lines(call.excinfo.value)
        call.excinfo = ExceptionInfo.from_exception(call.excinfo.value)
        return TestReport.from_item_and_call(item, call)
