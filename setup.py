"""Only the compiled part of the build; everything else is in pyproject.toml.

Two kinds of compiled modules, all optional (without a C compiler the install still succeeds and
sessionflow runs as pure Python, with the same results):

* ``sessionflow.core._native``: the sessionizer with native data structures (``_native.pyx``, its
  state in ``_state.pyx``), and ``sessionflow.runtimes.local._blocks``, the embedded runner's
  Arrow blocks for it;
* the per-record modules of the core, compiled by Cython from their own ``.py`` source: the same
  code, about a fifth faster; and ``rules.py``, typed by ``rules.pxd`` beside it, so the compiled
  sessionizer cimports the session rules and calls them as C functions. A compiled module
  shadows its ``.py``: ``core/_compiled.json``
  notes which source each was built from, and a test fails when a source changed since (make
  install rebuilds).
"""

import hashlib
import json
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent
CORE = Path("src/sessionflow/core")
SAME_SOURCE = ("refine", "cleaning", "pipeline", "rules")
# The compiled sessionizer (its state layout, its loops) and the local runtime's block format for it.
NATIVE = {
    "sessionflow.core._state": CORE / "_state.pyx",
    "sessionflow.core._native": CORE / "_native.pyx",
    "sessionflow.runtimes.local._blocks": Path("src/sessionflow/runtimes/local/_blocks.pyx"),
}

extensions = [Extension(name, [str(path)], optional=True) for name, path in NATIVE.items()]
extensions += [Extension(f"sessionflow.core.{name}", [str(CORE / f"{name}.py")], optional=True) for name in SAME_SOURCE]

manifest = {
    f"sessionflow.core.{name}": hashlib.sha256((ROOT / CORE / f"{name}.py").read_bytes()).hexdigest()
    for name in SAME_SOURCE
}
(ROOT / CORE / "_compiled.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

compiled = cythonize(
    extensions,
    # annotation_typing off: the annotations stay hints, so the compiled code accepts exactly
    # what the Python code does (a float where an int is annotated, say).
    compiler_directives={"language_level": "3", "annotation_typing": False},
    include_path=["src"],  # where the .pxd files one module cimports from another are
    quiet=True,
)
for extension in compiled:
    extension.optional = True  # cythonize() builds new Extension objects and drops the flag

setup(ext_modules=compiled)
