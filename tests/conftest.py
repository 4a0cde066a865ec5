"""Test policy shared by every test: the `netns` marker and "no skips as root".

- `@pytest.mark.netns` marks a test that needs root and network namespaces.
  Run as a normal user, such tests are skipped with the reason below.
- Run as root (`sudo make test`, CI), every test must really run: a skipped
  test, for whatever reason, is reported as a failure, so a green run as root
  means that all tests ran.
"""
import os

import pytest

IS_ROOT = os.geteuid() == 0
NETNS_SKIP_REASON = "needs root and network namespaces: run `sudo make test`"


def pytest_configure(config):
    config.addinivalue_line("markers", "netns: needs root and network namespaces")


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip_netns = pytest.mark.skip(reason=NETNS_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("netns") is not None:
            item.add_marker(skip_netns)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IS_ROOT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped while running as root (every test must run as root): {reason}"
