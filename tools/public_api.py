"""List every public callable of sdesolve_gen: the names in ``__all__`` of the package and of each submodule.

Used to walk the public API when auditing argument validation (each callable once, by its
defining module)::

    python tools/public_api.py
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Dict, List, Tuple

import sdesolve_gen


def public_callables() -> Dict[Tuple[str, str], List[str]]:
    """``{(defining module, qualified name): [modules whose __all__ export it]}``."""
    names = ["sdesolve_gen"] + [m.name for m in pkgutil.walk_packages(sdesolve_gen.__path__, "sdesolve_gen.")]
    seen: Dict[Tuple[str, str], List[str]] = {}
    for module_name in names:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if obj is None or inspect.ismodule(obj) or not callable(obj):
                continue
            key = (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", name))
            if not key[0].startswith("sdesolve_gen"):
                continue  # re-exported typing helpers and the like
            seen.setdefault(key, []).append(module_name)
    return seen


def main() -> None:
    found = public_callables()
    for module, qualname in sorted(found):
        print(f"{module}.{qualname}")
    print(f"{len(found)} public callables")


if __name__ == "__main__":
    main()
