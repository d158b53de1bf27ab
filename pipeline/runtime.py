"""How the engine runs, whatever its kind: step scheduling, the per-step text budget, the
step watchdog and restarts after a fatal error. Built by server/config.py (--schedule,
--text-budget, --step-timeout, --engine-restarts, --restart-backoff)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import ConfigError

Schedule = Literal["auto", "pipelined", "serial"]
SCHEDULES: tuple[str, ...] = ("auto", "pipelined", "serial")


@dataclass(frozen=True)
class RuntimeConfig:
    schedule: Schedule = "auto"
    """When a step is launched. 'serial': only on an idle device; 'pipelined': as soon as
    frames wait, also behind a step in flight (the next step's launch overlaps the device
    work, but every frame then waits a whole extra step); 'auto': serial with batch filling
    while the engine keeps up, pipelined just in time once throughput needs it."""
    text_budget: int = 2
    """Sessions per step that get a prompt change or their first conditioning (text-encoder
    work); the others keep their current conditioning for a step or two, so one session's
    prompt flood never slows the rest."""
    step_timeout_s: float = 10.0
    """A step (or command) still running after this many seconds counts as hung: the engine
    is abandoned and rebuilt. Warm-up is not timed."""
    restart_limit: int = 3
    """Rebuilds tried after consecutive engine failures before giving up (0 = never restart);
    the count starts over once an engine has run for a minute."""
    restart_backoff_s: float = 1.0
    """Wait before the first rebuild; doubled for each further consecutive failure (at most
    60 s)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule {self.schedule!r} is not known; use one of {', '.join(SCHEDULES)} (--schedule)"
            )
        if not 1 <= self.text_budget <= 16:
            raise ConfigError(f"text_budget {self.text_budget} is not allowed; use 1..16 (--text-budget)")
        if not 0.1 <= self.step_timeout_s <= 3600:
            raise ConfigError(
                f"step_timeout_s {self.step_timeout_s} is not allowed; use 0.1..3600 seconds (--step-timeout)"
            )
        if not 0 <= self.restart_limit <= 100:
            raise ConfigError(f"restart_limit {self.restart_limit} is not allowed; use 0..100 (--engine-restarts)")
        if not 0 <= self.restart_backoff_s <= 600:
            raise ConfigError(
                f"restart_backoff_s {self.restart_backoff_s} is not allowed; use 0..600 seconds (--restart-backoff)"
            )
