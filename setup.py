"""setuptools needs cffi_modules in setup() itself; everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["cext/build_ffi.py:ffibuilder"])
