"""What every benchmark records about the machine it ran on, and how it saves its figures."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine(load_before: float | None = None) -> dict[str, Any]:
    """Platform, CPU model and count, and the 1-minute load average before (when given)
    and now: other work on the machine skews every figure."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }
    if load_before is not None:
        info["load_average_1m_before"] = load_before
    info["load_average_1m_after"] = os.getloadavg()[0]
    return info


def save_json(result: dict[str, Any], path: Path) -> Path:
    """Write ``result`` as indented JSON to ``path`` (creating its folder); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
