"""Turn the tutorials' jupytext sources (``NN_name.py``, percent format) into executed notebooks (``NN_name.ipynb``).

    python tutorials/build_notebooks.py              # execute every notebook in the normal setting, save outputs
    python tutorials/build_notebooks.py 01 --small   # one notebook in the small (CI) setting
    python tutorials/build_notebooks.py --check      # only check that each .ipynb holds the code of its .py

The ``.py`` files are the sources (readable diffs, linted with ruff); the ``.ipynb`` files are generated from them
with their outputs (text and pictures) and should not be edited by hand. ``tests/test_tutorials.py`` executes every
notebook in the small setting with :func:`execute_notebook`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent
#: the environment variable that shrinks every notebook's sizes (epochs, kimg, image counts) for CI
SMALL_ENV = "HQANOGAN_TUTORIAL_SMALL"


def notebook_sources() -> list[Path]:
    """The jupytext sources of the tutorials, in order (``01_*.py``, ``02_*.py``, ...)."""
    return sorted(p for p in TUTORIALS.glob("[0-9][0-9]_*.py"))


def execute_notebook(
    source: str | os.PathLike,
    small: bool = False,
    timeout: int = 1800,
    env: Mapping[str, str] | None = None,
) -> tuple[nbformat.NotebookNode, float]:
    """Execute the jupytext source ``source`` in a fresh Python kernel (working folder: ``tutorials/``).

    Args:
        source: a ``NN_name.py`` file in percent format.
        small: set ``HQANOGAN_TUTORIAL_SMALL=1`` for the kernel (the CI setting).
        timeout: seconds allowed per cell.
        env: further environment variables for the kernel.

    Returns:
        ``(the executed notebook, seconds)``. A failing cell raises ``nbclient.exceptions.CellExecutionError``.
    """
    source = Path(source)
    notebook = jupytext.read(source)
    kernel_env = {**os.environ, **(env or {}), SMALL_ENV: "1" if small else "0"}
    kernel_env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no debugger warning on stderr
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(source.parent)}}
    )
    start = time.perf_counter()
    client.execute(env=kernel_env)
    return notebook, time.perf_counter() - start


def code_cells(notebook: nbformat.NotebookNode) -> list[str]:
    """The sources of the code cells, stripped: what must agree between a .py and its .ipynb."""
    return [cell.source.strip() for cell in notebook.cells if cell.cell_type == "code"]


def check_in_sync(source: Path) -> str | None:
    """None when ``source``'s .ipynb exists and holds the same cells as ``source``; otherwise what is wrong."""
    target = source.with_suffix(".ipynb")
    if not target.is_file():
        return f"{target.name} is missing: run python tutorials/build_notebooks.py {source.stem[:2]}"
    built, expected = nbformat.read(target, as_version=4), jupytext.read(source)
    texts = [[c.cell_type, c.source.strip()] for c in built.cells]
    if texts != [[c.cell_type, c.source.strip()] for c in expected.cells]:
        return f"{target.name} differs from {source.name}: run python tutorials/build_notebooks.py {source.stem[:2]}"
    if any(c.cell_type == "code" and c.get("execution_count") is None for c in built.cells):
        return f"{target.name} has cells that were not executed"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook numbers or names (default: all)")
    parser.add_argument("--small", action="store_true", help="the small (CI) setting")
    parser.add_argument("--check", action="store_true", help="only check that the .ipynb files match their sources")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)")
    args = parser.parse_args(argv)
    sources = [s for s in notebook_sources() if not args.names or any(s.stem.startswith(n) for n in args.names)]
    if not sources:
        print(f"no notebook matches {args.names}", file=sys.stderr)
        return 1
    if args.check:
        problems = [p for p in (check_in_sync(s) for s in sources) if p]
        print("\n".join(problems) or "all notebooks match their sources")
        return 1 if problems else 0
    for source in sources:
        notebook, seconds = execute_notebook(source, small=args.small, timeout=args.timeout)
        target = source.with_suffix(".ipynb")
        for cell in notebook.cells:
            cell.metadata.pop("execution", None)  # nbclient's timestamps: noise in every diff
        jupytext.write(notebook, target, fmt="ipynb")
        print(f"{target.name}: executed in {seconds:.0f} s ({'small' if args.small else 'normal'} setting)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
