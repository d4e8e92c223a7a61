"""Build script: everything declarative lives in pyproject.toml; this file only adds the C++ sampler."""
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

# The sampler's sums and exp are plain IEEE float ops in a fixed order: no -ffast-math, and no FMA contraction, so a
# seed draws the same ids with every compiler and CPU.
_cxx_flags = ["/O2", "/fp:precise"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]

ext_modules = [
    Pybind11Extension(
        "engine._sampler",
        ["csrc/sampler.cpp"],
        depends=["csrc/sampler_row.h", "csrc/sampler_simd.h", "csrc/sampler_avx.h"],
        cxx_std=17,
        extra_compile_args=_cxx_flags,
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
