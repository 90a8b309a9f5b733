import pytest

from mixpath.ops.testing import compare_backend

from .cases import agreement_case


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    # also registered by tests/conftest.py; repeated here for `pytest benchmarks/` alone
    config.addinivalue_line("markers", "slow: longer sweeps, run with `pytest -m slow`")
    # Four columns keep the default run's hundreds of small tables readable; --benchmark-columns overrides.
    asked = any(a.startswith("--benchmark-columns") for a in config.invocation_params.args)
    if hasattr(config.option, "benchmark_columns") and not asked:
        config.option.benchmark_columns = ["min", "median", "max", "rounds"]


@pytest.fixture(scope="session")
def agreement():
    """problems(backend, case, device): testing.compare_backend on the case's small version, once per session."""
    found = {}

    def problems(backend, case, device):
        key = (backend, agreement_case(case), device)
        if key not in found:
            found[key] = compare_backend(backend, key[1], device)
        return found[key]

    return problems
