"""Markdown from results files, so no number in the docs is typed by hand.

Each table comes from the newest valid file (by its recorded date) that holds the
scenario, names its scope and card, and links that file. Files that fail the schema are
listed as not used, with their first problem.

    python -m bench.report                          # every section, from bench/results/
    python -m bench.report --update README.md docs/performance.md
    python -m bench.report --check README.md docs/performance.md   # exit 1 if stale

--update rewrites the blocks between `<!-- bench-report: SECTION -->` and
`<!-- /bench-report -->` in each file; CI runs --check.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import schema
from bench.provenance import REPO
from bench.summary import E2E, ENGINE, OFFLINE, SCOPES, STARTUP, TARGETS

RESULTS = REPO / "bench" / "results"
BLOCK = re.compile(r"(<!-- bench-report: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /bench-report -->)", re.S)


@dataclass(frozen=True)
class Result:
    path: Path
    report: dict[str, Any]

    @property
    def date(self) -> str:
        return str(self.report["meta"]["date"])

    def card(self) -> str:
        device = self.report["meta"]["device"]
        gpu = device.get("gpu")
        if gpu is None:
            return f"the CPU ({self.report['meta']['host']['cpu']}), no GPU"
        driver = f", driver {device['driver']}" if "driver" in device else ""
        return f"one {gpu} ({device['torch']}{driver})"

    def origin(self) -> str:
        git = self.report["meta"]["git"]
        if git["commit"] is None:
            return "commit unknown"
        return f"commit {git['commit'][:10]}{' with local changes' if git['dirty'] else ''}"


def load_results(paths: list[Path]) -> tuple[list[Result], list[tuple[Path, str]]]:
    """(valid results, newest first; (path, first problem) of the others)."""
    good, bad = [], []
    for path in sorted(paths):
        report, problems = schema.load(path)
        if problems:
            bad.append((path, f"fails the schema: {problems[0]}"))
        else:
            good.append(Result(path, report))
    good.sort(key=lambda r: (r.date, r.path.name), reverse=True)
    return good, bad


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def lat(block: dict[str, Any], key: str) -> str:
    return fmt(block.get(key)) if block.get("count") else "-"


def text_mode(text: dict[str, Any]) -> str:
    which = "one frame" if text["representative_frame"] else "every frame"
    when = {"every": "every step", "refresh": f"every {text['refresh']} steps"}.get(text["mode"], text["mode"])
    return f"{when}, {which}, {text['image_size']} px / {text['tokens']} tokens"


def p50_p99(row: dict[str, Any]) -> list[str]:
    return [lat(row["latency"], "p50_ms"), lat(row["latency"], "p99_ms")]


def naive_speed(row: dict[str, Any]) -> list[str]:
    return [fmt(row["fps"], 2), fmt(row["p50_ms"])]


def fps_p50(row: dict[str, Any]) -> list[str]:
    return [fmt(row["fps"]), lat(row["latency"], "p50_ms")]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


class Context:
    """The results a document's blocks are made from, and links relative to the document."""

    def __init__(
        self, results: list[Result], bad: list[tuple[Path, str]], doc_dir: Path, switches: list[Result] | None = None
    ) -> None:
        self.results = results
        self.bad = bad
        self.doc_dir = doc_dir
        self.switches = switches or []
        """Runs with speed switches set (bench/results/switches/): compared, never headline."""

    def link(self, result: Result) -> str:
        return f"[{result.path.name}]({os.path.relpath(result.path, self.doc_dir)})"

    def newest(self, scenario: str) -> Result | None:
        return next((r for r in self.results if scenario in r.report["scenarios"]), None)

    def with_key(self, key: str) -> Result | None:
        return next((r for r in self.results if key in r.report["summary"]), None)

    def source(self, result: Result, scope: str) -> str:
        return f"Scope: {scope}; {result.card()}; file {self.link(result)} ({result.origin()}, {result.date[:10]})."


def missing(what: str) -> str:
    return f"No committed results file holds {what} yet (see Reproduce)."


HEADLINE = (
    ("max_sessions_at_30fps", "{v} sessions at 30 fps each ({scope})"),
    ("paper_b8_fps", "{v} fps with the text encoder on every frame at B=8 ({scope})"),
    (
        "paper_point_fps",
        "{v} fps at the paper's operating point ({scope}; the paper: 74.1 fps on an RTX 5090, GPU step)",
    ),
    ("e2e_p50_ms_1", "one session {v} ms p50 ({scope})"),
    ("warmup_second_start_s", "a restarted server ready in {v} s ({scope})"),
)


def headline(ctx: Context) -> str:
    by_file: dict[Path, list[str]] = {}
    for key, text in HEADLINE:
        r = ctx.with_key(key)
        if r is not None:
            by_file.setdefault(r.path, []).append(text.format(v=fmt(r.report["summary"][key]), scope=SCOPES[key]))
    if not by_file:
        return "No benchmark results of the current format are committed yet (docs/performance.md: Reproduce)."
    parts = []
    for path, items in by_file.items():
        r = next(x for x in ctx.results if x.path == path)
        parts.append(f"on {r.card()} ({ctx.link(r)}): " + "; ".join(items))
    return "Measured " + "; ".join(parts) + "."


def targets_table(ctx: Context) -> str:
    rows = []
    for t in TARGETS:
        r = ctx.with_key(t.metric)
        goal = "reported" if t.goal is None else f"{t.op} {t.goal:g}"
        if r is None:
            rows.append([f"`{t.metric}`", SCOPES[t.metric], goal, "not measured yet", "", t.source])
            continue
        row = next(x for x in r.report["targets"] if x["metric"] == t.metric)
        verdict = "" if "met" not in row else "met" if row["met"] else f"missed by {row['shortfall_pct']:g} %"
        rows.append(
            [f"`{t.metric}`", SCOPES[t.metric], goal, f"{fmt(row['value'])} ({ctx.link(r)})", verdict, t.source]
        )
    return table(["metric", "scope", "target", "measured", "", "from"], rows)


def engine(ctx: Context) -> str:
    r = ctx.newest("paper") or ctx.newest("cached_prompt") or ctx.newest("paper_point")
    if r is None:
        return missing("offline clip throughput")
    sc = r.report["scenarios"]
    sections = [(name, sc[name]) for name in ("paper", "cached_prompt") if name in sc]
    sections += [(f"{name}, one stream", section) for name, section in sc.get("serial", {}).items()]
    rows = [
        [name, text_mode(section["text"]), str(row["B"]), fmt(row["fps"]), *p50_p99(row)]
        for name, section in sections
        for row in section["rows"]
    ]
    if "paper_point" in sc:
        pp, adapter = sc["paper_point"], sc["paper_point"]["adapter"]
        text = f"{text_mode(pp['text'])}; LLLite {adapter['sites']} sites, refresh {adapter['refresh']}"
        rows.append(["paper_point", text, str(pp["row"]["B"]), fmt(pp["row"]["fps"]), *p50_p99(pp["row"])])
    out = [ctx.source(r, OFFLINE), table(["scenario", "text encoder", "B", "fps", "p50 ms", "p99 ms"], rows)]
    naive = [sc[n] for n in ("naive", "naive_matched") if n in sc]
    if naive:
        header = ["diffusers' pipeline per frame", "text image", "text tokens", "fps", "p50 ms"]
        rows = [
            [n["operating_point"], str(n["text_image_size"]), str(n["text_sequence_tokens"]), *naive_speed(n)]
            for n in naive
        ]
        out.append(table(header, rows))
    if "speedup_vs_naive_matched" in r.report["summary"]:
        speedup = fmt(r.report["summary"]["speedup_vs_naive_matched"])
        out.append(
            f"Speed-up, like for like (paper B=8 over the pipeline at the engine's operating point): {speedup}x."
        )
    return "\n\n".join(out)


def components(ctx: Context) -> str:
    r = ctx.newest("components")
    if r is None:
        return missing("the component breakdown")
    comp = r.report["scenarios"]["components"]
    paper, cached = comp["stage_ms_mean"], comp.get("cached_prompt_stage_ms_mean", {})
    rows = [[s, fmt(paper.get(s), 2), fmt(cached.get(s), 2)] for s in sorted(set(paper) | set(cached))]
    if "text_stream_ms_per_launch" in comp:
        rows.append(["text stream, per launch", fmt(comp["text_stream_ms_per_launch"], 2), ""])
    note = f"B={comp['B']}. {comp['scope']}."
    return "\n\n".join([ctx.source(r, ENGINE), table(["stage", "paper ms", "cached prompt ms"], rows), note])


def sessions(ctx: Context) -> str:
    r = ctx.newest("sessions")
    if r is None:
        return missing("the sessions scenario")
    s = r.report["scenarios"]["sessions"]
    rows = [
        [str(x["sessions"]), fmt(x["delivered_fps_min"]), fmt(x["delivered_fps_mean"])]
        + [lat(x["latency"], k) for k in ("p50_ms", "p95_ms", "p99_ms")]
        + [str(x["dropped_in"])]
        for x in s["rows"]
    ]
    head = f"Each session fed at {fmt(s['fed_fps'], 0)} fps for {fmt(s['seconds'])} s"
    head += f"; text encoder {text_mode(s['text'])}."
    header = ["sessions", "fps/session min", "mean", "p50 ms", "p95 ms", "p99 ms", "dropped"]
    return "\n\n".join([ctx.source(r, ENGINE), head, table(header, rows)])


def adapter(ctx: Context) -> str:
    r = ctx.newest("adapter")
    if r is None:
        return missing("the adapter sweep")
    a = r.report["scenarios"]["adapter"]
    rows = [
        [x["adapter"]["blocks"], str(x["adapter"]["sites"]), str(x["adapter"]["refresh"]), *fps_p50(x["row"])]
        for x in a["rows"]
    ]
    head = f"B=8, text encoder {text_mode(a['text'])}; the adapter off is the cached_prompt row."
    header = ["adapter", "sites", "refresh every", "fps", "p50 ms"]
    return "\n\n".join([ctx.source(r, OFFLINE), head, table(header, rows)])


WEBRTC_NOTE = (
    "Latency by pts, client send -> client receive of the same frame; engine: the server's own frame latency "
    "over the same run (the change of its /metrics histogram); transport: the difference of the means; server "
    "cores: the server process's CPU time over the run / its wall time; loop cores: the same for its main "
    "thread, the asyncio event loop (at most 1); with media processes, server cores sum the engine's server and "
    "every media process, and loop cores are the busiest media process's loop; step: the engine's step time "
    "and mean frames per step (both "
    "from /metrics; '-' in files written before they were recorded); stamps: frames whose pixel stamp agrees "
    "with the pts match / stamps readable (none with random weights)."
)


def switch_settings(result: Result) -> str:
    harness = next(p for p in result.report["meta"]["processes"] if p["role"] == "harness")
    given = [f"`{name}={int(v) if isinstance(v, bool) else v}`" for name, v in harness["config"].get("switches") or []]
    label = ", ".join(given) or "defaults"
    mode = harness["config"].get("compile", "auto")
    return label if mode == "auto" else f"{label} (`compile={mode}`)"


def b8_speeds(result: Result) -> tuple[float | None, float | None]:
    """(paper B=8 fps, cached_prompt B=8 fps) of a file, None where it has no such row."""
    sc = result.report["scenarios"]
    paper = next((x["fps"] for x in sc.get("paper", {}).get("rows", []) if x["B"] == 8), None)
    cached = sc["cached_prompt"]["rows"][0]["fps"] if "cached_prompt" in sc else None
    return paper, cached


def gpu_of(result: Result) -> str | None:
    return result.report["meta"]["device"].get("gpu")


def change(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{(value / base - 1) * 100:+.1f} %"


def speed_switches(ctx: Context) -> str:
    """B=8 throughput of each speed-switch run beside the newest defaults file of the same
    card (a ratio across cards would measure the card, not the switch)."""
    engine_files = [r for r in ctx.results if "cached_prompt" in r.report["scenarios"]]
    if not ctx.switches or not engine_files:
        return missing("a speed-switch run")
    base_of: dict[str | None, Result] = {}
    for r in engine_files:  # newest first: the first file of each card is its base
        base_of.setdefault(gpu_of(r), r)
    rows = []
    for r in [*base_of.values(), *ctx.switches]:
        base = base_of.get(gpu_of(r))
        paper, cached = b8_speeds(r)
        ref = b8_speeds(base) if base is not None and base is not r else (None, None)
        warm = r.report["scenarios"].get("engine_warmup", {}).get("main", {})
        buckets = ", ".join(map(str, warm.get("buckets", []))) or "-"
        vs = "-" if ref == (None, None) else f"{change(paper, ref[0])} / {change(cached, ref[1])}"
        warm_s, source = f"{fmt(warm.get('seconds'))} ({buckets})", f"{ctx.link(r)} ({r.origin()})"
        rows.append([switch_settings(r), gpu_of(r) or "CPU", fmt(paper), fmt(cached), vs, warm_s, source])
    note = (
        "Scope: offline clip throughput at B=8; each row names its card, and a switch run is compared only "
        "with the newest defaults file of the same card (the first rows). Text encoder as in the engine table "
        "(paper: every frame; cached_prompt: every 16 steps, one frame). Warm-up: the in-process engine's "
        "start of the buckets named (a cold compile for the switch runs unless their graphs were stored)."
    )
    header = ["switches", "card", "paper B=8 fps", "cached_prompt B=8 fps", "vs defaults, same card"]
    return "\n\n".join([note, table([*header, "warm-up s", "file"], rows)])


def serve_buckets(result: Result) -> str:
    """The bucket set of the server a webrtc file measured (from its recorded argv)."""
    for process in result.report["meta"]["processes"]:
        argv = process["argv"]
        if process["role"] == "server" and "--buckets" in argv[:-1]:
            return argv[argv.index("--buckets") + 1].replace(",", ", ")
    return "-"


def webrtc(ctx: Context) -> str:
    """One table over every file with the scenario: each (codec, sessions) row from the
    newest file that has it (a later run of some rows, e.g. one that had failed, takes
    their place), each row naming its file."""
    sources = [r for r in ctx.results if "webrtc" in r.report["scenarios"]]
    if not sources:
        return missing("the webrtc scenario")
    # One row per codec, sessions and layout (media processes, 0 = the engine's own server).
    chosen: dict[tuple[str, int, int], tuple[int, dict[str, Any]]] = {}
    for n, r in enumerate(sources):
        media = int(r.report["scenarios"]["webrtc"].get("media_processes", 0))
        for x in r.report["scenarios"]["webrtc"]["rows"]:
            chosen.setdefault((x["codec"], x["clients"], media), (n, x))
    used = sorted({n for n, _ in chosen.values()})
    label = {n: str(i) for i, n in enumerate(used, 1)}
    order = sorted(chosen, key=lambda k: (k[0] != "VP8", k[0], k[1], k[2]))
    rows = []
    for key in order:
        n, x = chosen[key]
        rows.append(
            [x["codec"], str(x["clients"]), str(key[2] or "-"), f"{x['completed']}/{x['clients']}"]
            + [fmt(x.get("delivered_fps_min"))]
            + [lat(x["e2e"], k) for k in ("p50_ms", "p95_ms", "p99_ms")]
            + [lat(x["engine"], "p50_ms"), fmt(x.get("transport_mean_ms")), fmt(x["server_cpu_cores"], 2)]
            + [fmt(max(x.get("media_loop_cores") or [x.get("server_loop_cores")]), 2)]
            + [lat(x.get("engine_step", {}), "p50_ms"), fmt(x.get("batch_mean"))]
            + [f"{x['stamps']['agree']}/{x['stamps']['read']}", label[n]]
        )
    blocks = []
    for n in used:
        r = sources[n]
        w = r.report["scenarios"]["webrtc"]
        media = w.get("media_processes", 0)
        layout = (
            f", the clients spread round robin over {media} media processes (`livestyle serve --engine-socket`) "
            "that feed its engine over a Unix socket,"
            if media
            else ""
        )
        blocks.append(
            f"File {label[n]}: " + ctx.source(r, E2E) + f" `livestyle serve` ({w['engine']} engine, buckets "
            f"{serve_buckets(r)}){layout} and one aiortc client process per session over loopback, each sending a "
            f"DAVIS clip at {fmt(w['fed_fps'], 0)} fps, {fmt(w['seconds'])} s measured."
        )
    header = ["codec", "sessions", "media processes", "done", "fps/session min", "e2e p50 ms", "p95", "p99"]
    header += ["engine p50 ms"]
    header += ["transport mean ms", "server cores", "loop cores", "step p50 ms", "batch", "stamps", "file"]
    parts = ["\n".join(f"- {b}" for b in blocks), WEBRTC_NOTE, table(header, rows)]
    failed = []
    for n, x in (chosen[key] for key in order):
        if x["completed"] < x["clients"]:
            first = (x.get("errors") or ["none recorded"])[0][:200]
            failed.append(
                f"- {x['codec']} x{x['clients']} (file {label[n]}): {x['clients'] - x['completed']} "
                f"client(s) failed, first error: {first}"
            )
    if failed:
        parts.append("Rows whose clients failed (their numbers are not measurements):\n\n" + "\n".join(failed))
    return "\n\n".join(parts)


def warmup(ctx: Context) -> str:
    r = ctx.newest("warmup")
    if r is None:
        return missing("the warmup scenario")
    w = r.report["scenarios"]["warmup"]
    rows = []
    for start in ("first", "second"):
        if (rec := w.get(start)) is not None:
            done = fmt(rec["ready_s"]) if "ready_s" in rec else f"failed: {rec['error'][:80]}"
            rows.append([start, done, fmt(rec.get("port_bound_s")), str(len(rec["progress"]))])
    buckets = ", ".join(map(str, w["buckets"])) or "-"
    head = f"{w['engine']} engine, buckets {buckets}; the second start reuses the first's on-disk caches."
    header = ["start", "ready s", "port bound s", "health states seen"]
    return "\n\n".join([ctx.source(r, STARTUP), head, table(header, rows)])


def files(ctx: Context) -> str:
    lines = [f"- {ctx.link(r)}: {r.card()}, {r.origin()}, {r.date}" for r in [*ctx.results, *ctx.switches]]
    lines += [f"- `{os.path.relpath(p, ctx.doc_dir)}`: not used ({why[:160]})" for p, why in ctx.bad]
    return "\n".join(lines) or "No results files are committed."


SECTIONS: dict[str, Callable[[Context], str]] = {
    "headline": headline,
    "targets": targets_table,
    "engine": engine,
    "components": components,
    "sessions": sessions,
    "adapter": adapter,
    "webrtc": webrtc,
    "warmup": warmup,
    "switches": speed_switches,
    "files": files,
}


def section(name: str, ctx: Context) -> str:
    if name not in SECTIONS:
        raise ValueError(f"unknown report section {name!r}; known: {', '.join(SECTIONS)}")
    return SECTIONS[name](ctx)


def render_doc(text: str, ctx: Context) -> str:
    return BLOCK.sub(lambda m: m.group(1) + section(m.group("name"), ctx) + "\n" + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--update", nargs="+", type=Path, metavar="DOC", help="rewrite the report blocks in DOC")
    mode.add_argument("--check", nargs="+", type=Path, metavar="DOC", help="exit 1 if a report block is stale")
    args = p.parse_args(argv)
    results, bad = load_results(list(args.results_dir.glob("*.json")))
    switches, bad_switches = load_results(list((args.results_dir / "switches").glob("*.json")))
    bad += bad_switches
    docs = args.update or args.check
    if not docs:
        ctx = Context(results, bad, Path.cwd(), switches)
        print("\n\n".join(f"## {name}\n\n{fn(ctx)}" for name, fn in SECTIONS.items()))
        return 0
    stale = []
    for doc in docs:
        text = doc.read_text()
        fresh = render_doc(text, Context(results, bad, doc.resolve().parent, switches))
        if fresh != text:
            stale.append(str(doc))
            if args.update:
                doc.write_text(fresh)
    if args.check and stale:
        print(f"stale report blocks in {', '.join(stale)}: run python -m bench.report --update", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
