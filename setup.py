"""Only the compiled part of the build; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

# optional: without a C compiler the install still succeeds and sessionflow runs the pure-Python
# sessionizer (sessionflow.core.native says which one is in use).
NATIVE = Extension("sessionflow.core._native", ["src/sessionflow/core/_native.pyx"], optional=True)

setup(ext_modules=cythonize([NATIVE], compiler_directives={"language_level": "3"}, quiet=True))
