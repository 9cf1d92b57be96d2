"""Sphinx configuration for sdesolve_gen.

Built with ``sphinx-build -n -W`` (every cross-reference must resolve, warnings are errors) and
fully offline: no intersphinx, MathJax served from the build directory.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

from sphinx.util.nodes import get_node_source

sys.path.insert(0, os.path.abspath(".."))

from sdesolve_gen._version import __version__

project = "sdesolve_gen"
author = "the sdesolve_gen developers"
copyright = "2026, the sdesolve_gen developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    # copies MathJax 3 into _static/mathjax and points mathjax_path at it: no CDN at view time
    "sphinx-mathjax-offline",
    # the gallery (docs/gallery, generated): every examples/*.py run in --smoke mode, its figure
    # shown with its code and printed output
    "sphinx_gallery.gen_gallery",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]

# ---------------------------------------------------------------------------------------------
# Gallery: docs/gallery is generated from examples/*.py, each run in --smoke mode with its figure
# and output shown under its code (callables in _gallery_conf.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "gallery",
    "filename_pattern": r".*\.py$",  # execute every example
    "ignore_pattern": r"__init__\.py",
    "reset_argv": "_gallery_conf.reset_argv",
    "image_scrapers": ("_gallery_conf.png_scraper",),
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_signature": False,
    "plot_gallery": "True",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "capture_repr": (),
    "within_subsection_order": "FileNameSortKey",
    "min_reported_time": 1,
    "write_computation_times": False,  # no generated docs/sg_execution_times.rst in the source tree
}
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover
    html_theme = "alabaster"

# ---------------------------------------------------------------------------------------------
# Cross-references: nitpicky, so a reference to a name that is not documented is an error.
nitpicky = True

# External packages. intersphinx would fetch their inventories over the network at build time
# (the docs must build offline, in CI too), so references to these packages' objects are left
# unlinked instead. The patterns name only those packages (and the standard-library modules that
# appear in signatures); every reference into sdesolve_gen must still resolve.
_EXTERNAL = r"(torch|numpy|np|torchsde|torchdiffeq|tqdm|matplotlib|sklearn|scipy|os|pathlib|argparse|typing|collections|types)"
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL + r"(\..+)?"),
]

# Short external names as they appear in annotations (``from torch import Tensor, nn``): each is
# checked to BE the external object in the referring module's namespace before it is left
# unlinked (see _resolve_external below), so an undocumented name of our own still fails.
_EXTERNAL_MODULES = tuple(_EXTERNAL.strip("()").split("|"))


def _import_dotted(name: str) -> Any | None:
    """The object a dotted name denotes (module attribute chain), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:  # not a module: try a shorter prefix
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            return None
        return obj
    return None


def _identity_key(obj: Any) -> int | None:
    # identity names an object for anything but interned/cached scalars and strings
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return None
    return id(obj)


def _documented_by_identity(env: Any) -> dict[int, str]:
    """Map id(object) -> the full name under which that object is documented here."""
    cache = getattr(env, "_sg_documented_by_identity", None)
    if cache is None:
        cache = {}
        for name, entry in env.get_domain("py").objects.items():
            if not name.startswith("sdesolve_gen") or getattr(entry, "aliased", False):
                continue
            obj = _import_dotted(name)
            key = _identity_key(obj) if obj is not None else None
            if key is not None:
                cache.setdefault(key, name)
        env._sg_documented_by_identity = cache
    return cache


def _context_modules(node: Any) -> list[str]:
    """Modules whose namespace an unqualified target is looked up in: the module of the docstring
    the reference sits in (autodoc marks it ``docstring of sdesolve_gen.mod.obj``; an object
    documented at the top level keeps its own module's namespace), then the current module."""
    mods: list[str] = []
    source = get_node_source(node) if node.parent is not None else node.source
    m = re.search(r"docstring of (sdesolve_gen[\w.]*)", source or "")
    if m:
        parts = m.group(1).split(".")
        for i in range(len(parts), 0, -1):
            name = ".".join(parts[:i])
            if isinstance(sys.modules.get(name), types.ModuleType):
                mods.append(name)
                break
    if node.get("py:module"):
        mods.append(node["py:module"])
    return mods


def _candidates(node: Any) -> list[str]:
    target = node.get("reftarget", "")
    if target.startswith("sdesolve_gen"):
        return [target]
    return [f"{mod}.{target}" for mod in _context_modules(node)] + [target]


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a reference to an object of ours under another of its names.

    The public API is documented at its top-level names (``sdesolve_gen.sdeint``); prose and
    docstrings also use the defining module's name (``sdesolve_gen.integrate.sdeint``) or a name
    imported into a module (``NonFiniteError`` inside ``sdesolve_gen.samplers``). Such a reference
    is resolved to the documented name of the *same object*. A name that imports to nothing, or to
    an object that is not documented, is left unresolved (and fails the nitpicky build).
    """
    if node.get("refdomain") != "py":
        return None
    documented = _documented_by_identity(env)
    domain = env.get_domain("py")
    for name in _candidates(node):
        obj = _import_dotted(name)
        if obj is None:
            continue
        key = _identity_key(obj)
        if key is None or key not in documented:
            continue
        return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], documented[key], node, contnode)
    return None


def _resolve_external(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Leave unlinked a short name that, in the referring module, IS an external package's object
    (``Tensor`` for ``torch.Tensor``, ``nn.Module``): same policy as nitpick_ignore_regex above."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    names = _candidates(node)
    if "." not in target or target.split(".")[0] in ("nn", "np", "F"):
        # a type hint rendered in a field list carries the documenting module (sdesolve_gen), not
        # the defining one: accept the name if it denotes one and the same object in every module
        # of ours that defines it
        found = {id(o): o for o in (_import_dotted(f"{m}.{target}") for m in _package_modules()) if o is not None}
        if len(found) == 1:
            names.append(next(iter(found.values())))
    for name in names:
        obj = _import_dotted(name) if isinstance(name, str) else name
        if obj is None:
            continue
        mod = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if isinstance(mod, str) and mod.split(".")[0] in _EXTERNAL_MODULES:
            return contnode
    return None


def _package_modules() -> list[str]:
    return sorted(n for n, m in list(sys.modules.items()) if n.split(".")[0] == "sdesolve_gen" and isinstance(m, types.ModuleType))


# Exact targets that cannot resolve, each for a stated reason. Listed exactly (no patterns), so
# any new dead reference still fails the build.
nitpick_ignore = [
    # torch.nn.Module.forward's docstring (inherited by our nets' forward methods) says :class:`Module`
    ("py:class", "Module"),
]


def _skip_reexported(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """In a submodule's section, skip the members documented at the top level (api.rst documents
    ``sdesolve_gen``'s ``__all__`` first, with ``:imported-members:`` as its marker)."""
    if what != "module" or skip:
        return None
    if getattr(options, "imported_members", None) or (hasattr(options, "get") and options.get("imported-members")):
        return None
    import sdesolve_gen

    if not isinstance(obj, (type, types.FunctionType)):
        return None
    exported = {id(getattr(sdesolve_gen, n)) for n in getattr(sdesolve_gen, "__all__", []) if hasattr(sdesolve_gen, n)}
    if id(obj) in exported:
        return True
    return None


def _write_sampler_table(app: Any) -> None:
    """Write ``_generated/samplers.rst``, the sampler table, from the registry (its one owner)."""
    from sdesolve_gen.samplers import SAMPLERS

    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    rows = [
        ".. list-table:: Registered samplers (generated from ``sdesolve_gen.samplers.SAMPLERS``)",
        "   :header-rows: 1",
        "",
        "   * - name",
        "     - kind",
        "     - order",
        "     - NFE for n steps",
        "     - default grid",
        "     - what it is",
    ]
    for spec in SAMPLERS.values():
        kind = ("SDE" if spec.stochastic else "ODE") + (", adaptive" if spec.adaptive else "")
        if spec.nfe_per_step is None:
            nfe = "adaptive"
        else:
            nfe = f"{spec.nfe_per_step} n" + (f" {spec.nfe_extra:+d}".replace("+", "+ ").replace("-", "- ") if spec.nfe_extra else "")
        order = cell(spec.order) + (f" (strong {spec.strong_order})" if spec.strong_order is not None else "")
        rows += [f"   * - ``{spec.name}``", f"     - {kind}", f"     - {order}", f"     - {nfe}",
                 f"     - ``{spec.grid}``", f"     - {spec.summary}"]
    out = Path(app.srcdir) / "_generated"
    out.mkdir(exist_ok=True)
    text = "\n".join(rows) + "\n"
    target = out / "samplers.rst"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _write_sampler_table)
    app.connect("autodoc-skip-member", _skip_reexported)
    app.connect("missing-reference", _resolve_alias)
    app.connect("missing-reference", _resolve_external, priority=900)
    return {"parallel_read_safe": True}

