"""Builds mixpath and its compiled extension mixpath._C (csrc/).

The CPU kernels are always built. The CUDA kernels are built when torch has
CUDA and a toolkit is found, or when MIXPATH_FORCE_CUDA=1; MIXPATH_SKIP_CUDA=1
skips them; MIXPATH_CUDA_ARCHS picks the GPU architectures (default
"8.0;9.0"). MIXPATH_SKIP_EXT=1 skips the extension altogether (the `cpp` and
`cuda` backends are then reported unavailable). Install with
`pip install -e . --no-build-isolation` so the build sees the installed torch.
"""
import glob
import os

from setuptools import find_packages, setup


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _gencode(archs):
    """nvcc -gencode flags for MIXPATH_CUDA_ARCHS ("8.0;9.0": A100 and H100; "9.0" alone halves nvcc's time)."""
    flags = []
    for arch in filter(None, (a.strip() for a in archs.replace(",", ";").split(";"))):
        major, _, minor = arch.partition(".")
        if not (major.isdigit() and (minor or "0").isdigit()):
            raise ValueError(f"MIXPATH_CUDA_ARCHS={archs!r}: {arch!r} is not a compute capability; use e.g. '8.0;9.0'")
        cc = major + (minor or "0")
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
    if not flags:
        raise ValueError(f"MIXPATH_CUDA_ARCHS={archs!r} names no architecture; use e.g. '8.0;9.0'")
    return flags


def extensions():
    if _flag("MIXPATH_SKIP_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-march=native" if not _flag("MIXPATH_PORTABLE") else "-mavx2"]
    with_cuda = not _flag("MIXPATH_SKIP_CUDA") and (
        _flag("MIXPATH_FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None))
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-std=c++17", "--use_fast_math"] + _gencode(os.environ.get("MIXPATH_CUDA_ARCHS", "8.0;9.0"))
        ext = CUDAExtension("mixpath._C", sources, define_macros=[("MIXPATH_WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("mixpath._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    name="mixpath",
    version="0.1.0",
    description="Fast one-shot NAS over multi-path supernets (MixPath) with fused depthwise-conv + Shadow BN kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["mixpath", "mixpath.*"]) + ["mixpath.kernels"],
    package_dir={"mixpath.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.2",
        "tqdm>=4.60",
        "pillow>=9.0",
        "matplotlib>=3.6",
        "pymoo>=0.6",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest>=7", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["mixpath=mixpath.cli:main", "mixpath-train=mixpath.cli.train:main"]},
)
