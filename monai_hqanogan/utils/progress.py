"""Progress bars of the long steps: one switch, one rule for when a bar shows.

Every step with a bar (training, calibration, evaluation, folder inference) takes a ``progress`` switch (``progress:
true`` in the bundle's configs, ``--progress false`` on ``python -m monai.bundle run``, ``--no-progress`` on the main
job). On, a bar shows when its output, stderr, is a terminal, as tqdm does by default (``disable=None``): a log
file, a pipe or a notebook cell that captures stderr gets none, so logs stay free of carriage-return lines without a
flag. Off, no bar shows anywhere. Bars never write to stdout or to the files a step writes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

from monai_hqanogan.utils.validation import as_bool

__all__ = ["progress_disable", "progress_shown", "progress_bar"]


def _switch(progress: Any) -> bool:
    # MONAI's command line gives ``--progress false`` as the string "false"; as_bool reads it and refuses the rest
    return bool(as_bool(progress, "progress"))


def progress_disable(progress: Any = True) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` switch: None when on (tqdm hides the bar unless stderr is a terminal),
    True when off.

    Args:
        progress: True or False, or the strings ``"true"``/``"false"`` (any case), as a command line gives them.

    Raises:
        ValueError: ``progress`` is anything else.
    """
    return None if _switch(progress) else True


def progress_shown(progress: Any = True) -> bool:
    """Whether a bar under the switch ``progress`` shows now (on, and stderr a terminal): for code whose own
    ``progress`` option is a plain show/hide flag, such as the baselines' ``fit``."""
    stream = sys.stderr
    return _switch(progress) and stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(iterable: Iterable | None = None, progress: Any = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr under the switch ``progress`` (see :func:`progress_disable`); it is cleared when closed
    unless ``leave=True`` is given.

    Args:
        iterable: what to iterate over (None: update the bar by hand).
        progress: the switch.
        kwargs: more of tqdm's arguments (``total``, ``desc``, ``unit``, ...).
    """
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=progress_disable(progress), **kwargs)
