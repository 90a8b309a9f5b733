"""Every backend on every case: agreement with the reference first, then forward, backward, both.

A backend that disagrees with the float64 reference (testing.compare_backend
on a small version of the case) fails. Speed is reported by pytest-benchmark,
never asserted; each group holds one case and phase, so every backend sits
beside `reference` and `merged` in the same run. torch.compile of the
reference compiles per case (seconds on CPU, autotuning on GPU), so pytest
times it on one case under `-m slow`; the report times it on more.
"""
import pytest

from mixpath.ops import BACKEND_NAMES

from .cases import PHASES, PYTEST_DEVICES, PYTEST_ROUNDS, device_type, op_cases, pytest_scale
from .op_workload import COMPILE, OpWorkload, skip_reason
from .roofline import ideal_bytes, multiply_adds
from .timing import synchronize

CASES = [(device, case) for device in PYTEST_DEVICES for case in op_cases(device, pytest_scale(device))]


def bench(benchmark, backend, case, device, phase):
    work = OpWorkload(backend, case, device)
    target, setup = work.phase(phase)

    def timed(*args):
        target(*args)
        synchronize(device)

    def untimed():
        args = setup() if setup is not None else ()
        synchronize(device)
        return args, {}

    benchmark.group = f"{device} {case} {phase}"
    benchmark.extra_info.update(backend=backend, ideal_bytes=ideal_bytes(case)[phase],
                                multiply_adds=multiply_adds(case)[phase])
    benchmark.pedantic(timed, setup=untimed, iterations=1, **PYTEST_ROUNDS[device_type(device)])


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("device,case", CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_op(benchmark, agreement, device, case, backend, phase):
    reason = skip_reason(backend, device)
    if reason is not None:
        pytest.skip(f"{backend} on {device}: {reason}")
    if backend != "reference":  # the reference is the oracle's own computation
        problems = agreement(backend, case, device)
        assert not problems, f"{backend} disagrees with the reference on a small {case}:\n  " + "\n  ".join(problems)
    bench(benchmark, backend, case, device, phase)


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("device", PYTEST_DEVICES)
def test_compiled_reference(benchmark, device, phase):
    # the largest merged kernel, stride 1, float32, of the first shape: the same group as test_op's case
    case = next(c for c in op_cases(device, pytest_scale(device)) if len(c.kernels) == 4 and c.stride == 1)
    bench(benchmark, COMPILE, case, device, phase)
