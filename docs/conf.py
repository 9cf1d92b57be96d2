"""Sphinx configuration for sdesolve_gen."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "sdesolve_gen"
author = "sdesolve_gen developers"
copyright = "2026, sdesolve_gen developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover
    html_theme = "alabaster"
nitpicky = False
