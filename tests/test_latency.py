import math

import pytest
import torch

from mixpath.latency import LatencyCache, measure_latency
from mixpath.nn import SuperNet
from mixpath.space import get_space


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return SuperNet(get_space("tiny"))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ARCH = "6:3,5|3:7|3:3|6:9"


def test_measure_latency_of_a_tiny_subnet(tiny_net):
    sub = tiny_net.subnet(tiny_net.space.parse(ARCH))
    sub.train()
    calls = []
    sub.register_forward_hook(lambda module, inputs, output: calls.append((inputs[0].shape, torch.is_grad_enabled(),
                                                                          module.training)))
    seconds = measure_latency(sub, (2, 3, 16, 16), "cpu", warmup=2, repeats=3)
    assert math.isfinite(seconds) and seconds > 0
    assert calls == [(torch.Size([2, 3, 16, 16]), False, False)] * 5  # warm-up + timed, eval, no autograd
    assert sub.training  # restored


@pytest.mark.parametrize("kw,match", [({"warmup": -1}, "warmup"), ({"repeats": 0}, "repeats"),
                                      ({"device": "meta"}, "'cpu' or 'cuda'")])
def test_measure_latency_rejects_bad_settings(tiny_net, kw, match):
    kw = {"device": "cpu", **kw}
    with pytest.raises(ValueError, match=match):
        measure_latency(tiny_net.subnet(tiny_net.space.parse(ARCH)), (1, 3, 16, 16), **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_measure_latency_without_cuda_says_so(tiny_net):
    with pytest.raises(ValueError, match="no CUDA device; use --device cpu"):
        LatencyCache(tiny_net.subnet, (1, 3, 16, 16), "cuda")


def test_latency_cache_measures_each_arch_once_and_persists(tiny_net, tmp_path):
    space = tiny_net.space
    built = []

    def build(arch):
        built.append(arch)
        return tiny_net.subnet(arch)

    path = tmp_path / "latency.json"
    cache = LatencyCache(build, (2, 3, 16, 16), "cpu", path=path, warmup=1, repeats=2)
    a, b = space.parse(ARCH), space.parse("3:3|3:3|3:3|3:3")
    first = cache(a)
    assert cache(a) == first and cache.n_measured == 1 and built == [a]  # a hit does not measure again
    cache(b)
    assert cache.n_measured == 2 and a in cache and b in cache
    # a new cache on the same file measures nothing it holds; another batch is another key
    again = LatencyCache(build, (2, 3, 16, 16), "cpu", path=path, warmup=1, repeats=2)
    assert again(a) == first and again.n_measured == 0 and len(built) == 2
    other_batch = LatencyCache(build, (4, 3, 16, 16), "cpu", path=path, warmup=1, repeats=2)
    assert a not in other_batch
    other_batch(a)
    assert other_batch.n_measured == 1 and len(built) == 3
    assert LatencyCache(build, (2, 3, 16, 16), "cpu", path=path)(b) == cache(b)  # both batches kept in the file
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=r"latency\.json: not a mixpath latency cache .*delete it"):
        LatencyCache(build, (2, 3, 16, 16), "cpu", path=path)
