import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:  # the default run needs no PyTorch
    HAVE_TORCH = False

# CI sets NPRNN_REQUIRE_TORCH=1: there a live-parity test that skips fails the run.
REQUIRE_TORCH = os.environ.get("NPRNN_REQUIRE_TORCH") == "1"
# Minutes-long end-to-end tests run when NPRNN_RUN_SLOW=1 (CI sets it).
RUN_SLOW = os.environ.get("NPRNN_RUN_SLOW") == "1"
_skipped_torch = []
_skipped_slow = []


def pytest_configure(config):
    if REQUIRE_TORCH and not HAVE_TORCH:
        raise pytest.UsageError("NPRNN_REQUIRE_TORCH=1 but PyTorch cannot be imported")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "torch" in item.keywords and not HAVE_TORCH:
            item.add_marker(pytest.mark.skip(reason="PyTorch is not installed"))
        if "slow" in item.keywords and not RUN_SLOW:
            item.add_marker(pytest.mark.skip(reason="slow; set NPRNN_RUN_SLOW=1 to run"))


def pytest_runtest_logreport(report):
    if report.skipped and "torch" in report.keywords:
        _skipped_torch.append(report.nodeid)
    if report.skipped and "slow" in report.keywords:
        _skipped_slow.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE_TORCH and _skipped_torch:
        print(f"\nNPRNN_REQUIRE_TORCH=1 but {len(_skipped_torch)} live-parity test(s) were skipped", file=sys.stderr)
        session.exitstatus = 1
    if RUN_SLOW and _skipped_slow:
        print(f"\nNPRNN_RUN_SLOW=1 but {len(_skipped_slow)} slow test(s) were skipped", file=sys.stderr)
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and getattr(fuzz, "COUNTS", None):
        terminalreporter.write_sep("-", "fuzz cases by outcome")
        for key in ("clean errors", "raw errors", "silent acceptances", "crashes", "data lost"):
            fuzz.COUNTS.setdefault(key, 0)
        for key, n in sorted(fuzz.COUNTS.items()):
            terminalreporter.write_line(f"{key}: {n}")


@pytest.fixture
def config():
    """``config(num_threads=2, min_step_work=0, ...)`` changes nprnn.config settings for the
    rest of one test, through ``nprnn.config.override``; everything is restored after."""
    from contextlib import ExitStack

    import nprnn

    with ExitStack() as stack:
        yield lambda **changes: stack.enter_context(nprnn.config.override(**changes))
