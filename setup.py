"""Build fastssl._C (C++17, pybind11 via torch.utils.cpp_extension, OpenMP, -O3).

The CUDA kernels in csrc/cuda/*.cu are compiled into the same extension only where torch was built with CUDA
and nvcc is found (set FASTSSL_NO_CUDA=1 to skip them). The top-level kernels/ folder (Triton) installs as
fastssl.kernels. FASTSSL_NO_NATIVE=1 drops -march=native (for building wheels that run on other CPUs).
FASTSSL_NO_EXTENSION=1 installs the Python package and the Triton kernels only (no fastssl._C: the cpp backends are
then unavailable and `fastssl info` says why); a GPU machine that needs only the Triton kernels installs in seconds.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("FASTSSL_NO_EXTENSION", "0") == "1":
        return []
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast"]
    if os.environ.get("FASTSSL_NO_NATIVE", "0") != "1":
        cxx_flags.append("-march=native")
    link_flags = ["-fopenmp"]
    with_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("FASTSSL_NO_CUDA", "0") != "1"
    )
    if with_cuda:
        nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        return [
            CUDAExtension(
                "fastssl._C",
                cpp_sources + cuda_sources,
                extra_compile_args={"cxx": cxx_flags + ["-DFASTSSL_WITH_CUDA"], "nvcc": nvcc_flags},
                extra_link_args=link_flags,
            )
        ]
    return [CppExtension("fastssl._C", cpp_sources, extra_compile_args=cxx_flags, extra_link_args=link_flags)]


def _cmdclass():
    if os.environ.get("FASTSSL_NO_EXTENSION", "0") == "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    packages=find_packages(include=["fastssl", "fastssl.*"]) + ["fastssl.kernels"],
    package_dir={"fastssl.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
