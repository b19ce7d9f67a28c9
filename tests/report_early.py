"""A pytest plugin (loaded by conftest.py): a failure's report is printed the moment the
test fails, not only in the summary at the end, so that a run cut short (CI stops a run
at 90 minutes, and a stopped pytest prints no summary) still shows why each test that
failed before the cut failed. A failing test that used a server (a `ServerProcess`
fixture) gets the end of that server's log attached, vLLM's periodic stats lines included
(requests running and waiting, KV cache usage), without the access log."""

from __future__ import annotations

import pytest

from loadtests.servers import ServerProcess

LIMIT = 6000  # characters of each report: its end, where the assertion and its message are
LOG_LINES = 40  # of each server's log
_config = []


def pytest_configure(config: pytest.Config) -> None:
    _config[:] = [config]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = (yield).get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, ServerProcess) and value.log_path.exists():
            lines = [line for line in value.log_path.read_text(errors="replace").splitlines()
                     if not line.startswith("INFO:     127.0.0.1")]
            report.sections.append((f"server log ({name}), last {LOG_LINES} lines",
                                    "\n".join(lines[-LOG_LINES:])))


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
    for title, content in report.sections:
        if title.startswith("server log"):
            terminal.write_sep("-", title)
            terminal.write_line(content)
    terminal.write_sep("!", "the run goes on")
