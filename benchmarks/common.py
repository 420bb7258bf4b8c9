"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software() -> str:
    """Python, TensorFlow and Keras versions, for a results file's machine line."""
    import keras
    import tensorflow as tf

    return f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}"
