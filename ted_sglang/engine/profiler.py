"""``/start_profile`` and ``/stop_profile``: ``torch.profiler`` over the engine's steps.

The request body is SGLang's ``ProfileReq`` (every field optional): ``output_dir``,
``start_step``, ``num_steps``, ``activities`` (``CPU``; ``GPU`` where CUDA runs),
``with_stack``, ``record_shapes``, ``profile_id``, ``profile_prefix``. The trace is a
Chrome trace, ``[<prefix>-]<profile_id>-TP-0.trace.json.gz`` as SGLang names it, which
Perfetto (ui.perfetto.dev) and chrome://tracing open. Traces are written only inside
the engine's profile directory; a profile left running stops itself after
``MAX_PROFILE_STEPS`` steps. The :class:`Profiler` lives on the scheduler thread.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ted_sglang.engine.errors import RequestError

logger = logging.getLogger("ted_sglang.engine")

MAX_PROFILE_STEPS = 2000  # a profile nobody stops ends (and is written) after this many steps
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
# ProfileReq fields this engine cannot honour: refused when set, never ignored.
_REFUSED = ("profile_by_stage", "profile_stages", "detailed_annotations")


@dataclass
class ProfileSettings:
    """One ``/start_profile`` request, checked."""

    output_dir: Path
    profile_id: str
    profile_prefix: str = ""
    start_step: int | None = None
    num_steps: int | None = None
    activities: tuple[str, ...] = ("CPU", "GPU")
    with_stack: bool = True
    record_shapes: bool = False

    @property
    def trace_path(self) -> Path:
        prefix = f"{self.profile_prefix}-" if self.profile_prefix else ""
        return self.output_dir / f"{prefix}{self.profile_id}-TP-0.trace.json.gz"


def parse_profile_request(body: Any, profile_dir: Path) -> ProfileSettings:
    """Check a ``/start_profile`` body (None or a JSON object); raises RequestError."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise RequestError("the profile request must be a JSON object")
    for name in _REFUSED:
        if body.get(name):
            raise RequestError(f"{name!r} is not supported by this engine")

    def typed(name: str, kind: type, default: Any) -> Any:
        value = body.get(name)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RequestError(f"{name} must be of type {kind.__name__}")
        return value

    settings = ProfileSettings(
        output_dir=_inside(profile_dir, typed("output_dir", str, None)),
        profile_id=_name("profile_id", typed("profile_id", str, None) or str(time.time())),
        profile_prefix=_name("profile_prefix", typed("profile_prefix", str, "") or "", empty=True),
        start_step=typed("start_step", int, None),
        num_steps=typed("num_steps", int, None),
        with_stack=typed("with_stack", bool, True),
        record_shapes=typed("record_shapes", bool, False),
    )
    activities = typed("activities", list, None)
    if activities is not None:
        if not all(isinstance(a, str) for a in activities):
            raise RequestError("activities must be a list of strings")
        settings.activities = tuple(activities)
    if settings.start_step is not None and settings.start_step < 0:
        raise RequestError(f"start_step must be >= 0, got {settings.start_step}")
    if settings.num_steps is not None and not 1 <= settings.num_steps <= MAX_PROFILE_STEPS:
        raise RequestError(f"num_steps must be in [1, {MAX_PROFILE_STEPS}]")
    return settings


def _inside(root: Path, path: str | None) -> Path:
    """``path`` (relative paths are taken from ``root``) if it lies inside ``root``."""
    root = root.expanduser().resolve()
    if path is None:
        return root
    try:
        resolved = (root / Path(path).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, a symlink loop, ...
        raise RequestError(f"output_dir is not a usable path: {exc}") from None
    if resolved != root and root not in resolved.parents:
        raise RequestError(f"output_dir must lie inside the engine's profile directory {root}")
    return resolved


def _name(field: str, value: str, empty: bool = False) -> str:
    if (empty and value == "") or _NAME.fullmatch(value):
        return value
    raise RequestError(f"{field} may hold only letters, digits, '.', '_' and '-' (1-128 chars)")


class Profiler:
    """At most one profile at a time; ``on_step`` after every engine step."""

    def __init__(self) -> None:
        self.settings: ProfileSettings | None = None
        self._profile: Any = None  # torch.profiler.profile while recording
        self._start_at: int | None = None  # step count at which recording starts
        self._stop_at: int | None = None  # step count after which it stops

    @property
    def in_progress(self) -> bool:
        return self.settings is not None

    def start(self, settings: ProfileSettings, num_steps_done: int) -> tuple[bool, str]:
        """Arm (``start_step``) or start recording; ``(ok, message)`` as SGLang answers."""
        if self.settings is not None:
            return False, "Profiling is already in progress. Call /stop_profile first."
        self.settings = settings
        self._start_at = num_steps_done
        if settings.start_step:
            self._start_at = max(settings.start_step, num_steps_done + 1)
        length = settings.num_steps or MAX_PROFILE_STEPS
        self._stop_at = self._start_at + length
        if self._start_at == num_steps_done:
            try:
                self._record()
            except RuntimeError as exc:
                self.settings = None
                return False, str(exc)
        return True, "Succeeded"

    def stop(self) -> tuple[bool, str]:
        """Stop and write the trace; ``(ok, message)``."""
        settings = self.settings
        if settings is None:
            return False, "Profiling is not in progress. Call /start_profile first."
        self.settings = None
        profile, self._profile = self._profile, None
        if profile is None:  # armed for a later step that never came
            return True, "Succeeded. Nothing was recorded: the start step was not reached."
        profile.stop()
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        profile.export_chrome_trace(str(settings.trace_path))
        logger.info("profile trace written to %s", settings.trace_path)
        return True, f"Succeeded. Trace: {settings.trace_path}"

    def on_step(self, num_steps_done: int) -> None:
        """Start an armed profile or end a finished one, by the engine's step count."""
        if self.settings is None:
            return
        try:
            if self._profile is None:
                if self._start_at is not None and num_steps_done >= self._start_at:
                    self._stop_at = num_steps_done + (self.settings.num_steps or MAX_PROFILE_STEPS)
                    self._record()
            elif self._stop_at is not None and num_steps_done >= self._stop_at:
                self.stop()
        except (RuntimeError, OSError) as exc:  # a profile must not stop the engine
            logger.error("profiling failed: %s", exc)
            self.settings, self._profile = None, None

    def _record(self) -> None:
        import torch

        assert self.settings is not None
        kinds = {"CPU": torch.profiler.ProfilerActivity.CPU}
        if torch.cuda.is_available():
            kinds["GPU"] = torch.profiler.ProfilerActivity.CUDA
        activities = [kinds[a] for a in self.settings.activities if a in kinds]
        if not activities:
            raise RuntimeError(
                f"none of the activities {list(self.settings.activities)} can be recorded here"
            )
        self._profile = torch.profiler.profile(
            activities=activities,
            with_stack=self.settings.with_stack,
            record_shapes=self.settings.record_shapes,
        )
        self._profile.start()
        logger.info("profiling %s", self.settings.profile_id)
