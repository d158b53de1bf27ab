"""The summary keys of a results file, derived from its scenarios by fixed rules, and the
targets they are held against (issue #16's "Targets", and issue #7's rows that still
apply). A key is present only when the scenario it comes from ran and measured it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HOLDS_30FPS = 28.5
"""Delivered fps per session that counts as holding a 30 fps camera."""

OFFLINE = "offline clip throughput"
ENGINE = "engine-internal"
E2E = "end to end over loopback WebRTC"
STARTUP = "server start to /healthz ok"

SCOPES: dict[str, str] = {
    "paper_b8_fps": OFFLINE,
    "cached_prompt_b8_fps": OFFLINE,
    "paper_point_fps": OFFLINE,
    "naive_fps": OFFLINE,
    "naive_matched_fps": OFFLINE,
    "speedup_vs_naive_matched": OFFLINE,
    "interactive_p50_ms": ENGINE,
    "interactive_p99_ms": ENGINE,
    "max_sessions_at_30fps": ENGINE,
    "sessions_12_fps": ENGINE,
    "sessions_16_fps": ENGINE,
    "many_sessions_p50_ms": ENGINE,
    **{f"e2e_{q}_ms_{n}": E2E for q in ("p50", "p95", "p99") for n in (1, 8)},
    "e2e_codec_1": E2E,
    "e2e_codec_8": E2E,
    "warmup_first_start_s": STARTUP,
    "warmup_second_start_s": STARTUP,
}


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    """'>=', '<=' or 'report' (no target: reported beside the others)."""
    goal: float | None
    source: str


TARGETS: tuple[Target, ...] = (
    Target("max_sessions_at_30fps", ">=", 12, "#16"),
    Target("sessions_16_fps", ">=", 24, "#16"),
    Target("paper_b8_fps", ">=", 220, "#16"),
    Target("cached_prompt_b8_fps", ">=", 360, "#16"),
    Target("paper_point_fps", "report", None, "#16; the paper: 74.1 fps on an RTX 5090, GPU step only"),
    Target("e2e_p50_ms_1", "<=", 50, "#16"),
    Target("e2e_p50_ms_8", "<=", 120, "#16"),
    Target("warmup_second_start_s", "<=", 60, "#16 (buckets 1-16)"),
    Target("warmup_first_start_s", "report", None, "#16"),
    Target("speedup_vs_naive_matched", ">=", 25, "#7, like for like (#14)"),
    Target("interactive_p50_ms", "<=", 40, "#7"),
    Target("interactive_p99_ms", "<=", 80, "#7"),
    Target("many_sessions_p50_ms", "<=", 100, "#7"),
)


def _rows_by(section: dict[str, Any] | None, key: str) -> dict[Any, dict[str, Any]]:
    return {r[key]: r for r in (section or {}).get("rows", [])}


def summarize(scenarios: dict[str, Any], gpu: str) -> dict[str, Any]:
    sc = scenarios
    s: dict[str, Any] = {"gpu": gpu}

    def put(key: str, value: Any) -> None:
        if value is not None:
            s[key] = value

    put("paper_b8_fps", _rows_by(sc.get("paper"), "B").get(8, {}).get("fps"))
    put("cached_prompt_b8_fps", _rows_by(sc.get("cached_prompt"), "B").get(8, {}).get("fps"))
    put("paper_point_fps", (sc.get("paper_point") or {}).get("row", {}).get("fps"))
    put("naive_fps", (sc.get("naive") or {}).get("fps"))
    put("naive_matched_fps", (sc.get("naive_matched") or {}).get("fps"))
    if "paper_b8_fps" in s and s.get("naive_matched_fps"):
        s["speedup_vs_naive_matched"] = round(s["paper_b8_fps"] / s["naive_matched_fps"], 1)

    live = _rows_by(sc.get("sessions"), "sessions")
    one = live.get(1, {}).get("latency", {})
    put("interactive_p50_ms", one.get("p50_ms"))
    put("interactive_p99_ms", one.get("p99_ms"))
    if live:
        holding = [n for n, r in live.items() if r["delivered_fps_min"] >= HOLDS_30FPS]
        s["max_sessions_at_30fps"] = max(holding, default=0)
        if holding:
            put("many_sessions_p50_ms", live[max(holding)]["latency"].get("p50_ms"))
    for n in (12, 16):
        put(f"sessions_{n}_fps", live.get(n, {}).get("delivered_fps_min"))

    for n in (1, 8):
        rows = [r for r in (sc.get("webrtc") or {}).get("rows", []) if r["clients"] == n and r["e2e"]["count"]]
        if rows:  # the slower codec, so the key holds for both
            worst = max(rows, key=lambda r: r["e2e"]["p50_ms"])
            s[f"e2e_codec_{n}"] = worst["codec"]
            for q in ("p50", "p95", "p99"):
                s[f"e2e_{q}_ms_{n}"] = worst["e2e"][f"{q}_ms"]

    warmup = sc.get("warmup") or {}
    for start in ("first", "second"):
        put(f"warmup_{start}_start_s", (warmup.get(start) or {}).get("ready_s"))
    return s


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target whose metric this summary has."""
    rows = []
    for t in TARGETS:
        if t.metric not in summary:
            continue
        value = summary[t.metric]
        row: dict[str, Any] = {"metric": t.metric, "op": t.op, "value": value, "source": t.source}
        if t.goal is not None:
            met = value >= t.goal if t.op == ">=" else value <= t.goal
            gap = abs(value - t.goal)
            row.update(goal=t.goal, met=met)
            if not met:
                row.update(shortfall=round(gap, 2), shortfall_pct=round(100 * gap / t.goal, 1))
        rows.append(row)
    return rows
