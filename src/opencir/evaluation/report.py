"""``opencir report``: one self-contained HTML page of a run, an evaluation or a demo.

Sections: results table (protocol and gallery convention named), comparison with the
baselines, training curves (``metrics.jsonl``), shortcut analysis, per-type breakdowns,
paraphrase robustness, and the best and the worst queries as image grids. Pictures are
inline PNG data URIs and the page has no scripts or external links: it opens offline.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .outputs import EvalDir, is_eval_dir, read_eval_dir

SUMMARY_METRICS = 6


@dataclass
class ReportInputs:
    """Everything a report shows; any part may be missing (its section says so)."""

    title: str
    table: dict[str, dict[str, float]] = field(default_factory=dict)
    spread: dict[str, dict[str, float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    evaluation: EvalDir | None = None
    method_label: str = ""
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs_under(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.parent.name: _records(p) for p in sorted(folder.glob("*/metrics.jsonl"))}


def _run_of(ev: EvalDir) -> dict[str, list[dict[str, Any]]]:
    model = ev.description.get("model", {})
    for candidate in (model.get("run"), Path(model["model"]).parent if model.get("model") else None, ev.path.parent):
        if candidate and (Path(candidate) / "metrics.jsonl").is_file():
            return {Path(candidate).name: _records(Path(candidate) / "metrics.jsonl")}
    return {}


def _from_eval(ev: EvalDir, title: str) -> ReportInputs:
    label = ev.description.get("model", {}).get("label") or ev.description.get("model", {}).get("method") or ev.path.name
    table = {**ev.analysis.get("baselines", {}), label: ev.metrics}
    return ReportInputs(title, table, evaluation=ev, method_label=label, runs=_run_of(ev))


def collect(path: str | Path) -> ReportInputs:
    """Read a demo folder (``results.json``), an evaluation folder or a training run."""
    path = Path(path)
    if (path / "results.json").is_file():
        results = json.loads((path / "results.json").read_text())
        seeds = results.get("seeds", [0])
        main = results.get("main_row", list(results["table"])[-1])
        folder = Path(results.get("eval_dirs", {}).get(main, path / "missing"))
        ev = read_eval_dir(folder) if is_eval_dir(folder) else None
        runs = _runs_under(Path(results["runs_dir"])) if results.get("runs_dir") else {}
        return ReportInputs(f"opencir demo: {path}", results["table"], results.get("std", {}) if len(seeds) > 1 else {},
                            seeds, ev, main, runs)
    if path.is_dir() and is_eval_dir(path):
        return _from_eval(read_eval_dir(path), f"evaluation: {path}")
    if (path / "metrics.jsonl").is_file():
        inputs = ReportInputs(f"training run: {path}", runs={path.name: _records(path / "metrics.jsonl")})
        if is_eval_dir(path / "eval"):
            evaluated = _from_eval(read_eval_dir(path / "eval"), inputs.title)
            evaluated.runs = inputs.runs
            return evaluated
        return inputs
    raise FileNotFoundError(f"{path} is neither a demo folder (results.json), an evaluation folder (metrics.json + "
                            "rankings.json, from `opencir eval --out`) nor a training run (metrics.jsonl)")


# ----------------------------------------------------------------------------- html pieces

def _png_uri(draw: Callable[[io.BytesIO], Any]) -> str:
    buffer = io.BytesIO()
    draw(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], testid: str) -> str:
    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table data-testid="{testid}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}" data-testid="section-{key}"><h2>{html.escape(title)}</h2>{body}</section>'


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _metric_names(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    first = next(iter(table.values()), {})
    summary = [m for m, v in first.items() if isinstance(v, (int, float)) and ("/" not in m or m.startswith("avg/"))]
    return summary[:SUMMARY_METRICS]


def protocol_line(ev: EvalDir | None) -> str:
    """"cir-shapes test: RecallProtocol (ks 1, 5, 10, 50; reference kept in the ranking) ..."."""
    if ev is None or not ev.description:
        return "protocol not recorded (evaluate with `opencir eval --out` to record it)"
    d = ev.description["protocol"]
    parts = []
    for name, p in d["parts"].items():
        ks = ", ".join(str(k) for k in p.get("ks", []))
        ref = "reference removed from the ranking" if p.get("exclude_reference") else "reference kept in the ranking"
        extra = f", subset ks {p['subset_ks']}" if p.get("subset_ks") else ""
        parts.append(f"{name}: {p['protocol']} (k = {ks}; {ref}{extra}; gallery {p['gallery_size']} images, "
                     f"{p['queries']} queries)")
    return f"{d['dataset']} / {d['split']}; gallery convention: {d['gallery_convention']}; " + "; ".join(parts)


def _results(inputs: ReportInputs) -> str:
    if not inputs.table:
        return _missing("no evaluation found: run `opencir eval --model RUN/best ... --out RUN/eval`")
    metrics = _metric_names(inputs.table)
    rows = []
    for name, row in inputs.table.items():
        if inputs.spread:
            rows.append([name, *[f"{row[m]:.2f} ± {inputs.spread[name][m]:.2f}" for m in metrics]])
        else:
            rows.append([name, *[row.get(m, float("nan")) for m in metrics]])
    note = f"<p>mean ± sample standard deviation over seeds {inputs.seeds}</p>" if inputs.spread else ""
    return (f'<p data-testid="protocol">{html.escape(protocol_line(inputs.evaluation))}</p>{note}'
            + _table(["model", *metrics], rows, "results-table"))


def _baselines(inputs: ReportInputs) -> str:
    names = [n for n in ("image-only", "text-only", "sum") if n in inputs.table]
    if not names or inputs.method_label not in inputs.table:
        return _missing("no baseline results next to this evaluation")
    metrics = _metric_names(inputs.table)
    method = inputs.table[inputs.method_label]
    rows = [[f"{inputs.method_label} - {n}", *[method[m] - inputs.table[n][m] for m in metrics]] for n in names]
    return (f"<p>{html.escape(inputs.method_label)} minus each baseline, same queries and protocol "
            "(points; `opencir compare` gives intervals)</p>" + _table(["difference", *metrics], rows, "baselines-table"))


def _curves(inputs: ReportInputs) -> str:
    runs = {k: v for k, v in inputs.runs.items() if v}
    if not runs:
        return _missing("no metrics.jsonl found for this result")
    from .plots import training_curves

    uri = _png_uri(lambda buf: training_curves(runs, buf))
    return f'<img data-testid="curves" alt="training curves" src="{uri}">'


def _shortcuts(inputs: ReportInputs) -> str:
    summary = (inputs.evaluation.analysis if inputs.evaluation else {}).get("shortcuts")
    if not summary:
        return _missing("no shortcut analysis (only composition methods get one; `opencir eval --out` runs it)")
    rows = [[k, r["method_recall"], r["image_only_solves"], r["text_only_solves"], r["either_solves"],
             r["composition_only_queries"], r["method_recall_composition_only"], r["composition_gain"]]
            for k, r in summary["at"].items()]
    return (f"<p>subset <b>{html.escape(summary['subset'])}</b> over {summary['queries']} queries; rule: "
            f'<span data-testid="rule">{html.escape(summary["rule"])}</span></p>'
            + _table(["k", "method R@k", "image-only solves %", "text-only solves %", "either solves %",
                      "composition-only queries", "method R@k on them", "composition gain"], rows, "shortcut-table"))


def _breakdown(inputs: ReportInputs) -> str:
    breakdown = (inputs.evaluation.analysis if inputs.evaluation else {}).get("breakdown", {})
    groups = {g for rows in breakdown.values() for g in rows}
    if not groups:
        return _missing("this dataset has no per-query breakdown")
    models = list(breakdown)
    metrics = [m for m in next(iter(next(iter(breakdown.values())).values())) if m != "queries"][:3]
    header = ["group", "queries", *[f"{model} {m}" for model in models for m in metrics]]
    rows = []
    for g in sorted(groups):
        first = next(rows_[g] for rows_ in breakdown.values() if g in rows_)
        rows.append([g, first["queries"], *[breakdown[model].get(g, {}).get(m, float("nan"))
                                            for model in models for m in metrics]])
    return _table(header, rows, "breakdown-table")


def _paraphrases(inputs: ReportInputs) -> str:
    para = (inputs.evaluation.analysis if inputs.evaluation else {}).get("paraphrases")
    if not para:
        return _missing("no paraphrase robustness for this dataset or method")
    metrics = list(para["spread"])
    rows = [[f"wording {j}: {para['example_texts'][j]}", *[v[m] for m in metrics]] for j, v in enumerate(para["variants"])]
    rows.append(["standard deviation", *[para["spread"][m]["std"] for m in metrics]])
    rows.append(["max - min", *[para["spread"][m]["max"] - para["spread"][m]["min"] for m in metrics]])
    return (f"<p>{html.escape(para['rule'])}; {para['templates_per_edit']} generated templates per edit type</p>"
            + _table(["query wording (first query shown)", *metrics], rows, "paraphrase-table"))


def _target_rank(ranking: Sequence[str], targets: Sequence[str]) -> int:
    return next((i for i, g in enumerate(ranking) if g in targets), len(ranking) + 1)


def _queries(inputs: ReportInputs, count: int) -> str:
    ev = inputs.evaluation
    if ev is None or not ev.description.get("dataset"):
        return _missing("no evaluation with a recorded dataset: cannot draw queries")
    from ..data import load_dataset
    from .plots import retrieval_grid

    ds = ev.description["dataset"]
    try:
        dataset = load_dataset(ds["name"], ds["root"], ds["split"], **ds.get("options", {}))
    except (FileNotFoundError, ValueError) as err:
        return _missing(f"the dataset images are not available here ({err})")
    scored = [t for t in dataset.triplets if t.target_ids and t.query_id in ev.rankings]
    ranks = {t.query_id: _target_rank(ev.rankings[t.query_id], t.target_ids) for t in scored}
    best = sorted(scored, key=lambda t: (ranks[t.query_id], t.query_id))[:count]
    worst = sorted(scored, key=lambda t: (-ranks[t.query_id], t.query_id))[:count]
    body = []
    for key, chosen, text in (("best", best, "best queries (target ranked highest)"),
                              ("worst", worst, "worst queries (target ranked lowest or not in the top list)")):
        uri = _png_uri(lambda buf: retrieval_grid(dataset, ev.rankings, [t.query_id for t in chosen], buf))
        body.append(f"<h3>{text}</h3><img data-testid=\"{key}-grid\" alt=\"{key} queries\" src=\"{uri}\">")
    return "<p>each row: query image and text, top-5 results, the target framed in green</p>" + "".join(body)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}.missing{color:#a33}section{margin-bottom:2em}"""


def render_html(inputs: ReportInputs, grid_queries: int = 4) -> str:
    """The whole page as one string."""
    sections = [
        _section("results", "Results", _results(inputs)),
        _section("baselines", "Comparison with the baselines", _baselines(inputs)),
        _section("curves", "Training curves", _curves(inputs)),
        _section("shortcuts", "Shortcut and composition analysis", _shortcuts(inputs)),
        _section("breakdown", "Breakdown by query type", _breakdown(inputs)),
        _section("paraphrases", "Paraphrase robustness", _paraphrases(inputs)),
        _section("queries", "Best and worst queries", _queries(inputs, grid_queries)),
    ]
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(inputs.title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(inputs.title)}</h1>{''.join(sections)}</body></html>")


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Collect ``path`` and write the HTML page (default ``<path>/report.html``)."""
    out = Path(out) if out else Path(path) / "report.html"
    text = render_html(collect(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
