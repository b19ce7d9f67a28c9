"""A pytest plugin (loaded by conftest.py): a failure's report is printed the moment the
test fails, not only in the summary at the end, so that a run cut short (CI stops a run
at 90 minutes, and a stopped pytest prints no summary) still shows why each test that
failed before the cut failed."""

from __future__ import annotations

import pytest

LIMIT = 6000  # characters of each report: its end, where the assertion and its message are
_config = []


def pytest_configure(config: pytest.Config) -> None:
    _config[:] = [config]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    terminal = _config[0].pluginmanager.get_plugin("terminalreporter") if _config else None
    if terminal is None or not report.failed:
        return
    text = report.longreprtext
    if len(text) > LIMIT:
        text = f"[... {len(text) - LIMIT} characters before]\n{text[-LIMIT:]}"
    terminal.write_line("")
    terminal.write_sep("!", f"FAILED ({report.when}, {report.duration:.0f} s) {report.nodeid}")
    terminal.write_line(text)
    terminal.write_sep("!", "the run goes on")
