"""Every Python code block in docs/*.rst and README.md runs as a test (parsed by sybil).

* reST: ``.. code-block:: python`` blocks run; ``bash``/``console``/``text`` blocks and ``::``
  literal blocks do not. Markdown: fenced blocks marked ``python`` run, others do not.
* The blocks of one page run in order in one namespace, as one test item named
  ``<page>::code-blocks``, so a block may use names defined by an earlier block on the same page
  and no test scheduler (pytest-xdist) can split a page. A failure shows the traceback into the
  page (``docs/page.rst:LINE``) and says which block failed.
* Each page runs in a fresh temporary working directory (files a snippet writes land there) with
  torch single-threaded, the global torch seed fixed and matplotlib on the Agg backend.
* A block that must not run is preceded by ``.. skip: next`` (reST) or ``<!-- skip: next -->``
  (Markdown); say why next to it. It is reported as skipped in the page's result.

The number of blocks executed is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Sybil
from sybil.evaluators.skip import Skipper
from sybil.parsers.markdown import PythonCodeBlockParser as MarkdownPython
from sybil.parsers.markdown import SkipParser as MarkdownSkip
from sybil.parsers.rest import PythonCodeBlockParser as RestPython
from sybil.parsers.rest import SkipParser as RestSkip

os.environ.setdefault("MPLBACKEND", "Agg")

_DOCS = Sybil(parsers=[RestPython(), RestSkip()], path="docs", patterns=["*.rst"], excludes=["_build/*"])
_README = Sybil(parsers=[MarkdownPython(), MarkdownSkip()], filenames=["README.md"], excludes=["*/*"])


class _PageEnvironment:
    """Temporary working directory, one torch thread, fixed seed, Agg; restored afterwards."""

    def __enter__(self) -> None:
        import torch

        self.cwd, self.threads = os.getcwd(), torch.get_num_threads()
        self.tmp = tempfile.mkdtemp(prefix="sg-doc-")
        os.chdir(self.tmp)
        torch.set_num_threads(1)
        torch.manual_seed(0)

    def __exit__(self, *exc: object) -> None:
        import torch

        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        os.chdir(self.cwd)
        shutil.rmtree(self.tmp, ignore_errors=True)
        torch.set_num_threads(self.threads)


class DocCodeBlocks(pytest.Item):
    """All code blocks of one page, run in order in one namespace."""

    def __init__(self, *, sybil: Sybil, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sybil = sybil
        self.current: Any | None = None

    def runtest(self) -> None:
        document = self.sybil.parse(self.path)
        ran = skipped = 0
        with _PageEnvironment():
            for example in document.examples():
                self.current = example
                is_block = not isinstance(example.region.evaluator, Skipper)
                try:
                    example.evaluate()
                except unittest.SkipTest:
                    skipped += is_block
                    continue
                ran += is_block
        self.current = None
        self.user_properties.append(("doc_code_blocks", ran))
        self.user_properties.append(("doc_code_blocks_skipped", skipped))

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        rep = super().repr_failure(excinfo, style)
        if self.current is not None and hasattr(rep, "addsection"):
            rep.addsection("failing code block", f"{self.path.name}, block starting at line {self.current.line}")
        return rep

    def reportinfo(self) -> Any:
        return self.path, 0, f"{self.path.name}::code-blocks"


class DocPage(pytest.File):
    def __init__(self, *, sybil: Sybil, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sybil = sybil

    def collect(self) -> Iterator[pytest.Item]:
        if any(True for _ in self.sybil.parse(self.path).examples()):
            yield DocCodeBlocks.from_parent(self, name="code-blocks", sybil=self.sybil)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> DocPage | None:
    for sybil in (_DOCS, _README):
        if sybil.should_parse(file_path):
            return DocPage.from_parent(parent, path=file_path, sybil=sybil)
    return None


_counts: dict[str, int] = {"ran": 0, "skipped": 0, "pages": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    props = dict(report.user_properties)
    if "doc_code_blocks" in props:
        _counts["ran"] += props["doc_code_blocks"]
        _counts["skipped"] += props["doc_code_blocks_skipped"]
        _counts["pages"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _counts["pages"]:
        terminalreporter.write_line(
            f"doc code blocks: {_counts['ran']} executed, {_counts['skipped']} skipped, "
            f"on {_counts['pages']} passing pages (docs/*.rst, README.md)"
        )
