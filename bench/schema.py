"""The schema of a `livestyle bench` results file, and its validator.

Strict: an object rejects keys the harness does not write, numbers are finite (NaN and
Infinity fail already at parsing), an absent measurement is {"count": 0, "reason": ...} or
omitted by a stated rule, and `summary` and `targets` must be exactly what bench/summary.py
derives from the file's scenarios. CI checks every committed file and what the harness
writes in its tiny-model smoke test, so this schema is what the code writes.

    python -m bench.schema FILE...      # prints the problems; exit status 1 if any
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.spec import (
    Problems,
    any_of,
    array,
    boolean,
    const,
    integer,
    json_value,
    mapping,
    null,
    num,
    obj,
    one_of,
    string,
    tagged,
)
from bench.summary import SCOPES, TARGETS, summarize, targets

SCHEMA_VERSION = 1

N = num()
POS = num(0)
INT = integer(0)
COUNT = integer(1)
STR = string()

NO_SAMPLES = obj({"count": const(0), "reason": STR})
LATENCY = any_of(obj({"count": COUNT, "mean_ms": N, "p50_ms": N, "p95_ms": N, "p99_ms": N}), NO_SAMPLES)
HISTOGRAM_LATENCY = any_of(
    obj({"count": COUNT, "mean_ms": N, "p50_ms": N, "p95_ms": N, "p99_ms": N, "method": STR}), NO_SAMPLES
)
TEXT = obj(
    {
        "mode": one_of("every", "refresh", "once", "prompt"),
        "refresh": COUNT,
        "representative_frame": boolean,
        "image_size": COUNT,
        "tokens": COUNT,
    }
)
CLIP_ROW = obj(
    {"B": COUNT, "bucket": COUNT, "frames": COUNT, "seconds": POS, "fps": POS, "latency": LATENCY},
    {"peak_memory_mb": POS},
)
CLIP = obj({"text": TEXT, "rows": array(CLIP_ROW, 1)})
NAIVE = obj(
    {
        "operating_point": STR,
        "text_image_size": COUNT,
        "text_sequence_tokens": COUNT,
        "steps": COUNT,
        "size": COUNT,
        "frames": COUNT,
        "fps": POS,
        "p50_ms": POS,
        "p95_ms": POS,
    }
)
ENGINE_WARMUP = obj(
    {
        "seconds": POS,
        "buckets": array(COUNT, 1),
        "compile": STR,
        "dtype": STR,
        "events": array(obj({"t_s": POS, "message": STR})),
    }
)
ADAPTER = obj(
    {
        "blocks": one_of("down_blocks", "all"),
        "sites": COUNT,
        "refresh": COUNT,
        "refreshes_done": mapping(INT),
    }
)
SESSIONS_ROW = obj(
    {"sessions": COUNT, "delivered_fps_min": POS, "delivered_fps_mean": POS, "dropped_in": INT, "latency": LATENCY}
)
PROGRESS = obj({"t_s": POS, "status": STR}, {"progress": STR})
SERVE_START = any_of(
    obj({"ready_s": POS, "port_bound_s": POS, "engine": json_value, "progress": array(PROGRESS)}),
    obj({"error": STR, "progress": array(PROGRESS)}, {"port_bound_s": POS}),
)
WEBRTC_ROW = obj(
    {
        "codec": one_of("VP8", "H264"),
        "clients": COUNT,
        "completed": INT,
        "e2e": LATENCY,
        "engine": HISTOGRAM_LATENCY,
        "server_cpu_cores": POS,
        "anchor": obj({"probes_max": INT, "received": INT, "matched": INT}),
        "stamps": obj({"read": INT, "agree": INT}),
    },
    {
        "errors": array(STR),
        "delivered_fps_min": POS,
        "delivered_fps_mean": POS,
        "e2e_client_p50_ms": array(N),
        "transport_mean_ms": N,
        "server_loop_cores": POS,
        "media_loop_cores": array(POS),
        "engine_step": HISTOGRAM_LATENCY,
        "batch_mean": POS,
    },
)

SCENARIOS = obj(
    {},
    {
        "naive": NAIVE,
        "naive_matched": NAIVE,
        "engine_warmup": mapping(ENGINE_WARMUP),
        "compiled_vs_eager": obj({"max_abs_diff": POS, "mean_abs_diff": POS}),
        "paper": CLIP,
        "cached_prompt": CLIP,
        "components": obj(
            {"B": COUNT, "mode": STR, "stage_ms_mean": mapping(POS), "scope": STR},
            {"cached_prompt_stage_ms_mean": mapping(POS), "text_stream_ms_per_launch": POS, "peak_memory_mb": POS},
        ),
        "serial": obj({}, {"paper": CLIP, "cached_prompt": CLIP}),
        "sessions": obj(
            {"text": TEXT, "fed_fps": POS, "seconds": POS, "settle_s": POS, "rows": array(SESSIONS_ROW, 1)}
        ),
        "paper_point": obj({"text": TEXT, "adapter": ADAPTER, "steps": COUNT, "size": COUNT, "row": CLIP_ROW}),
        "adapter": obj({"text": TEXT, "rows": array(obj({"adapter": ADAPTER, "row": CLIP_ROW}), 1)}),
        "warmup": obj(
            {"engine": one_of("diffusion", "preview"), "buckets": array(COUNT), "first": SERVE_START},
            {"second": SERVE_START},
        ),
        "webrtc": obj(
            {
                "engine": one_of("diffusion", "preview"),
                "server": STR,
                "fed_fps": POS,
                "seconds": POS,
                "settle_s": POS,
                "rows": array(WEBRTC_ROW),
            },
            {"media_processes": COUNT},
        ),
    },
)

SUMMARY = obj(
    {"gpu": STR},
    {
        key: (STR if key.startswith("e2e_codec") else integer(0) if key == "max_sessions_at_30fps" else N)
        for key in SCOPES
    },
)
TARGET_ROW = obj(
    {"metric": one_of(*(t.metric for t in TARGETS)), "op": one_of(">=", "<=", "report"), "value": N, "source": STR},
    {"goal": N, "met": boolean, "shortfall": POS, "shortfall_pct": POS},
)
GIT = any_of(
    obj({"commit": string("[0-9a-f]{40}"), "dirty": boolean, "changed": array(STR)}, {"source": STR}),
    obj({"commit": null, "reason": STR}),
)
PROCESS = tagged(
    "role",
    {
        "harness": obj({"role": STR, "argv": array(STR), "config": json_value, "engines": mapping(json_value)}),
        "server": obj({"role": STR, "name": STR, "argv": array(STR), "env_removed": array(STR), "config": json_value}),
        "client": obj({"role": STR, "name": STR, "argv": array(STR), "count": COUNT}),
    },
)
META = obj(
    {
        "date": string(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"),
        "git": GIT,
        "device": obj(
            {"device": STR, "torch": STR, "diffusers": STR, "transformers": STR},
            {"gpu": STR, "gpu_memory_gb": POS, "cuda": STR, "sm_count": COUNT, "capability": STR, "driver": STR},
        ),
        "host": obj({"python": STR, "platform": STR, "cpu": STR, "cpu_count": INT, "libraries": mapping(STR)}),
        "processes": array(PROCESS, 1),
        "scopes": mapping(STR),
        "total_seconds": POS,
    }
)
REPORT = obj(
    {
        "schema": const(SCHEMA_VERSION),
        "summary": SUMMARY,
        "targets": array(TARGET_ROW),
        "scenarios": SCENARIOS,
        "skipped": array(obj({"scenario": STR, "reason": STR})),
        "meta": META,
    }
)


def validate(report: Any) -> Problems:
    """Every problem with a parsed results file (empty: valid)."""
    problems = REPORT(report, "$")
    if problems:
        return problems
    expected = summarize(report["scenarios"], report["summary"]["gpu"])
    if report["summary"] != expected:
        given = report["summary"]
        keys = sorted(set(expected) ^ set(given) | {k for k in expected if expected[k] != given.get(k)})
        problems.append(f"$.summary: differs from what the scenarios give, at {', '.join(keys)}")
    if report["targets"] != targets(expected):
        problems.append("$.targets: differ from the targets of the summary")
    if report["meta"]["scopes"] != {k: SCOPES[k] for k in expected if k in SCOPES}:
        problems.append("$.meta.scopes: differ from the scopes of the summary keys")
    return problems


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in a results file")


def load(path: Path) -> tuple[Any, Problems]:
    """Parse a results file (NaN/Infinity rejected) and validate it: (report, problems)."""
    try:
        report = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (OSError, ValueError) as exc:
        return None, [f"{path}: cannot be read as JSON: {exc}"]
    return report, validate(report)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    bad = 0
    for path in paths:
        _, problems = load(path)
        bad += bool(problems)
        print(f"{path}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems[:40]:
            print(f"  {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
