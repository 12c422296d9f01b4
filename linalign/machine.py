"""What a benchmark records about the machine it ran on.

Benchmarks compare only numbers measured side by side in one run, and the ranking of matrix
libraries changes between CPU models, so every result carries the CPU model and core count.
"""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name: ``lscpu``'s "Model name", else /proc/cpuinfo, else the platform's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """CPU model, visible cores and the 1-minute load average (None where the OS has none)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_1m": load}
