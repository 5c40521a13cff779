"""Reports that keep the test tiers honest (a pytest plugin, loaded by tests/conftest.py).

    pytest -n 0 --cpu-durations 20  the 20 tests that used the most CPU time (0: all)
    pytest -n 0 --module-report ... which fast_ast_jax modules the run exercised

Both count one process: with pytest-xdist workers (-n 2) they refuse to run.

CPU time (user + system, of the pytest process and the subprocesses it waited for; a test's
module-scoped fixtures count for the first test that uses them) is what the tiers are sized
by: on a machine shared with other work, wall times say more about the neighbours.

"Exercised" means at least one function or method defined in the module was called
(module and class bodies run at import do not count; code run in subprocesses is not seen), so
`pytest -n 0 -m "not slow" --module-report` shows that the fast tier touches every module. It
lists each module with the number of its functions that ran; a module with none makes a
passing run fail.
"""
from __future__ import annotations

import inspect
import resource
import sys
import threading
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fast_ast_jax"
_CPU = pytest.StashKey[dict]()
_CALLED = pytest.StashKey[set]()


def pytest_addoption(parser):
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                     help="list the N tests that used the most CPU time (this process and "
                          "its subprocesses; setup, call and teardown; 0: all)")
    parser.addoption("--module-report", action="store_true",
                     help="list the fast_ast_jax modules whose functions the run called; "
                          "fail when one was never called")


def _cpu_seconds() -> float:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = _cpu_seconds()
    yield
    item.config.stash.setdefault(_CPU, {})[item.nodeid] = _cpu_seconds() - start


def pytest_configure(config):
    wanted = [o for o in ("--cpu-durations", "--module-report") if config.getoption(o)
              not in (None, False)]
    if wanted and (getattr(config.option, "numprocesses", None)
                   or hasattr(config, "workerinput")):
        raise pytest.UsageError(f"{' and '.join(wanted)}: a report of one process; run with "
                                "-n 0 (no pytest-xdist workers)")
    if not config.getoption("--module-report"):
        return
    called: dict[str, set[str]] = {}  # file -> names of its functions that ran
    root = str(PACKAGE)
    seen: set = set()

    def profile(frame, event, arg):  # one set lookup per call after a code's first call
        if event == "call" and frame.f_code not in seen:
            code = frame.f_code
            seen.add(code)
            # functions only: module and class bodies run at import (no CO_NEWLOCALS)
            if code.co_filename.startswith(root) and code.co_flags & inspect.CO_NEWLOCALS:
                called.setdefault(code.co_filename, set()).add(code.co_qualname)

    config.stash[_CALLED] = called
    sys.setprofile(profile)
    threading.setprofile(profile)


def _modules() -> list[Path]:
    """The package's modules that define a function."""
    return sorted(p for p in PACKAGE.rglob("*.py") if "def " in p.read_text())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if _CALLED in session.config.stash:
        sys.setprofile(None)
        threading.setprofile(None)
        called = session.config.stash[_CALLED]
        if exitstatus == 0 and any(str(p) not in called for p in _modules()):
            session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.getoption("--cpu-durations")
    if n is not None:
        cpu = config.stash.get(_CPU, {})
        terminalreporter.write_sep("=", f"CPU time per test (total {sum(cpu.values()):.1f} s)")
        for nodeid, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])[:n or None]:
            terminalreporter.write_line(f"{seconds:8.2f}s cpu  {nodeid}")
    if _CALLED in config.stash:
        called, modules = config.stash[_CALLED], _modules()
        ran = [p for p in modules if str(p) in called]
        terminalreporter.write_sep("=", f"fast_ast_jax modules exercised: {len(ran)} of "
                                        f"{len(modules)} (functions called)")
        for p in modules:
            count = len(called.get(str(p), ()))
            terminalreporter.write_line(f"{count:5d}  {p.relative_to(PACKAGE.parent)}"
                                        + ("" if count else "   <- NOT EXERCISED"))
