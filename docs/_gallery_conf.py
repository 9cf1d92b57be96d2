"""Callables of the docs gallery (sphinx-gallery takes them by importable name, so the pickled
Sphinx environment holds strings, not objects defined in conf.py).

Each example is executed with ``--smoke --out docs/gallery/_smoke_out/<name>.png`` (fast sizes, the same code path
as a full run); the PNG it writes is the figure shown under its code, so the gallery shows exactly
what ``python examples/NAME.py --smoke --out NAME.png`` produces. torch runs on one thread, as
the examples' tests and the CLI do (two OpenMP threads on a busy 2-core machine are several times
slower).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

# The PNGs land in the generated gallery directory (git-ignored) and are moved into its images/
# by png_scraper; a repository-relative path, so the printed "wrote ..." line names no machine path.
_OUT = Path(__file__).resolve().parent / "gallery" / "_smoke_out"


def _png(src_file: str) -> str:
    _OUT.mkdir(parents=True, exist_ok=True)
    return str(_OUT / (Path(src_file).stem + ".png"))


def reset_argv(gallery_conf: dict, script_vars: dict) -> list:
    """``sys.argv[1:]`` of an example: ``--smoke --out docs/gallery/_smoke_out/<name>.png``."""
    import torch

    torch.set_num_threads(1)
    # relative to the example's directory, where sphinx-gallery runs it
    src = script_vars["src_file"]
    return ["--smoke", "--out", os.path.relpath(_png(src), os.path.dirname(os.path.abspath(src)))]


def png_scraper(block: Any, block_vars: dict, gallery_conf: dict) -> str:
    """Hand the PNG an example wrote to ``--out`` to sphinx-gallery as that example's figure."""
    from sphinx_gallery.scrapers import figure_rst

    png = _png(block_vars["src_file"])
    if not os.path.isfile(png):
        return ""
    target = next(block_vars["image_path_iterator"])
    shutil.move(png, target)
    return figure_rst([target], gallery_conf["src_dir"])
