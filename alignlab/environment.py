"""What a run ran on: the machine, the library versions and the source commit.

Two runs that differ in a few sampled answers may differ by seed or by machine (last-bit differences of the
arithmetic turn a few draws); recording the machine with every run lets a reader tell which. Benchmarks print the
same facts beside their figures.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def source_commit(folder: Path = SOURCE) -> str | None:
    """The git commit of ``folder``'s checkout, marked "(modified)" when tracked files differ from it; None when
    ``folder`` is not a checkout (an installed wheel) or git is missing."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + (" (modified)" if dirty.strip() else "")


def environment() -> dict[str, Any]:
    """The machine and software a run used: host name, CPU model, CPUs this process may use, torch threads,
    accelerator, Python, torch, transformers and Lightning versions, and the alignlab source commit."""
    import pytorch_lightning
    import torch
    import transformers

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"host": platform.node(), "cpu": cpu_model(), "cpus_available": cpus,
            "torch_threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "alignlab_commit": source_commit()}
