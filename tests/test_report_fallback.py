"""tests/report_fallback.py: a failure whose traceback has a frame without a line number
is reported with its message, and the run goes on (pytest alone stops with INTERNALERROR)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAILING = '''
import sys, types

def test_a_frame_without_a_line_number():
    with open(__file__):
        pass
    frame = sys._getframe()
    lasti = next(2 * i for i, pos in enumerate(frame.f_code.co_positions()) if pos[0] is None)
    tb = types.TracebackType(None, frame, lasti, -1)
    assert tb.tb_lineno is None
    try:
        raise KeyError("the cause")
    except KeyError as cause:
        raise AssertionError("the real failure").with_traceback(tb) from cause

def test_after_it():
    pass
'''


def test_a_frame_without_a_line_number_is_reported_and_the_run_goes_on(tmp_path):
    (tmp_path / "test_forged.py").write_text(FAILING)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.report_fallback", "test_forged.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert "INTERNALERROR" not in out, out
    assert done.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "AssertionError: the real failure" in out and "KeyError: 'the cause'" in out, out
