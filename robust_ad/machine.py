"""A one-line description of the machine, written next to every timing and benchmark number."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe() -> str:
    import torch

    parts = [f"{cpu_name()} ({len(os.sched_getaffinity(0))} usable cores)"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    parts.append(f"torch {torch.__version__}, {platform.system()} {platform.release()}")
    return "; ".join(parts)
