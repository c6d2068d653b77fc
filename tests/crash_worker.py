"""A warm fork server for the kill -9 tests (not a test module).

``python -m tests.crash_worker`` imports MONAI's bundle runner and this package once, prints ``ready`` and then
reads JSON lines on stdin: ``{"argv": [...], "log": path}`` forks a child that runs ``python -m <argv...>`` the way
the interpreter would (``runpy`` with ``sys.argv = argv``), its stdout and stderr going to ``log``, and answers
``{"pid": n}`` at once; ``{"wait": n}`` answers ``{"pid": n, "exitcode": c}`` when that child has ended (``-9`` when
it was killed with SIGKILL). Several children may run at the same time. Forking a warm interpreter skips the
seconds that importing torch and MONAI takes, so a test can kill many runs of the same command at random moments.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback


def _child(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code = 0
    try:
        sys.argv = list(argv)
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import fire  # noqa: F401
    import monai.bundle.scripts  # noqa: F401  (what monai.bundle's __main__ runs; not __main__ itself)
    import torch

    import monai_hqanogan.engines  # noqa: F401
    import monai_hqanogan.handlers  # noqa: F401
    import monai_hqanogan.workflows  # noqa: F401

    torch.set_num_threads(1)
    # what a bundle run would otherwise import lazily at its start, once per child: torch's optimiser machinery
    # (torch._dynamo, ...) and every module MONAI's component locator scans; no thread is started, so forking is safe
    from monai.bundle.config_item import ComponentLocator

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    ComponentLocator().get_component_module_name("DataLoader")
    import multiprocessing.dummy  # noqa: F401  (CacheDataset's thread pool)
    import threading

    assert threading.active_count() == 1, threading.enumerate()
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if "wait" in request:
            pid = int(request["wait"])
            _, status = os.waitpid(pid, 0)
            print(json.dumps({"pid": pid, "exitcode": os.waitstatus_to_exitcode(status)}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            _child(request["argv"], request["log"])
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    serve()
