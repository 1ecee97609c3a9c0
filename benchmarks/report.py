"""Result files, plots and the generated tables of docs/performance.md.

    python -m benchmarks.report [--results DIR] [--from FILE] [--doc PATH] [--readme PATH]

rewrites the tables between docs/performance.md's perf-table markers, and
the README's line between its gpu-table markers, from the newest result file
in benchmarks/results/ (a GPU file wins over a host-emulation file whatever
their dates) or from --from FILE. The README shows a GPU result's end-to-end
table; until one exists, a line that says so and points to the emulator's
timings in docs/performance.md.

Every output of a host run says it is an emulation: CPU timings of the CUDA
emulator against PyTorch on the CPU, never GPU numbers.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

from fcn_cuda.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = ROOT / "README.md"
PERFORMANCE = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- perf-table:begin -->", "<!-- perf-table:end -->"
GPU_BEGIN, GPU_END = "<!-- gpu-table:begin -->", "<!-- gpu-table:end -->"
NO_GPU_RESULT = ("No GPU result exists yet: no GPU has been lent to this project. The\n"
                 "emulator's CPU timings, which say nothing about a GPU, are in\n"
                 "[docs/performance.md](docs/performance.md#emulator-timings).")
EMULATION_LABEL = ("HOST EMULATION: CPU timings of the CUDA emulator (fcn_cuda._host) against PyTorch on the CPU; "
                   "not GPU numbers")
TOP_KEYS = ("device", "date", "commit", "backend", "emulation", "peaks", "config", "rows", "skipped", "failed")
ROW_KEYS = ("name", "kind", "ours_ms", "ref_ms", "ratio", "tflops", "gbps", "pct_of_peak")


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def result_stem(result):
    """<device>[-quick]-<yyyymmdd>: host runs are named host-emulation-..."""
    device = "host-emulation" if result["emulation"] else slug(result["device"])
    quick = "-quick" if result["config"]["name"].endswith("quick") else ""
    return f"{device}{quick}-{result['date'].replace('-', '')}"


def _atomic_text(path, text):
    atomic_write(path, [text.encode()])


def _run_summary(result):
    return {k: result.get(k) for k in ("timestamp", "commit", "only", "elapsed_s", "peaks")}


def merge(old, new):
    """`new`'s rows added to `old` (same device and config; a row measured
    again replaces the old one). Every row's % of peak is recomputed against
    the newest run's peaks; each run's own peaks stay listed under `runs`."""
    from .suite import pct_of_peak

    for key in ("device", "backend"):
        if old[key] != new[key]:
            raise ValueError(f"cannot append a run on {new[key]!r} to a result from {old[key]!r}")
    if old["config"]["name"] != new["config"]["name"]:
        raise ValueError(f"cannot append config {new['config']['name']!r} to {old['config']['name']!r}")
    names = {r["name"] for r in new["rows"]}
    merged = dict(new)
    merged["rows"] = [r for r in old["rows"] if r["name"] not in names] + new["rows"]
    done = {r["name"] for r in merged["rows"]}
    new_skips = {s["name"] for s in new["skipped"]}
    merged["skipped"] = [s for s in old["skipped"] if s["name"] not in new_skips | done] + new["skipped"]
    merged["failed"] = [f for f in old["failed"] + new["failed"] if f["name"] not in done]
    merged["runs"] = old.get("runs", [_run_summary(old)]) + [_run_summary(new)]
    merged["only"] = sorted(set(old.get("only") or []) | set(new.get("only") or []))
    merged["elapsed_s"] = round(sum(r.get("elapsed_s") or 0 for r in merged["runs"]), 1)
    merged["commit"] = new["commit"] if old["commit"] == new["commit"] else f"{old['commit']}..{new['commit']}"
    for r in merged["rows"]:
        r["pct_of_peak"] = pct_of_peak(r["ours_ms"], r["flops"], r["bytes"], new["peaks"], "fp32")
        r["ref_pct_of_peak"] = pct_of_peak(r["ref_ms"], r["flops"], r["bytes"], new["peaks"], r["ref_precision"])
    return merged


# ---------------------------------------------------------------- formatting
def _ms(v):
    return "" if v is None else (f"{v:.3f}" if v < 100 else f"{v:.1f}")


def _rate(row, prefix=""):
    tf, gb = row.get(prefix + "tflops"), row.get(prefix + "gbps")
    if tf is not None:
        return f"{tf:.3g} TFLOP/s" if tf >= 0.1 else f"{tf * 1e3:.3g} GFLOP/s"
    return "" if gb is None else f"{gb:.3g} GB/s"


def _pct(v):
    return "" if v is None else f"{v:.1f}%"


def _err(err):
    names = {"rel_l2": "rel", "label_mismatch": "labels", "nonfinite": "NON-FINITE"}
    return ", ".join(f"{names.get(k, k)} {v:.1e}" for k, v in (err or {}).items())


def _peaks_lines(peaks):
    lines = [f"- where: {peaks.get('where', '')}",
             f"- copy bandwidth (read + write, {peaks['copy_bytes'] / 2**20:.0f} MiB moved): "
             f"{peaks['copy_gbps']:.1f} GB/s"]
    for prec in ("fp32", "tf32", "bf16"):
        v = peaks.get(f"matmul_{prec}_tflops")
        if v is not None:
            m = peaks["matmul_size"]
            lines.append(f"- matmul {m}x{m}x{m} {prec}: {v:.2f} TFLOP/s")
    return lines


def markdown(result):
    """The full report: every row, grouped by kind and input."""
    emu = result["emulation"]
    out = [f"# fcn_cuda vs PyTorch: {result['device']}, {result['date']}", ""]
    if emu:
        out += [f"**{EMULATION_LABEL}.**", ""]
    cfg = result["config"]
    out += [f"- commit `{result['commit']}`, backend `{result['backend']}`, config `{cfg['name']}`: {cfg['note']}",
            f"- timing: {result['timing']}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in result.get('versions', {}).items())}",
            "- ratio = ref ms / ours ms (> 1: fcn_cuda is faster); % peak = roofline fraction "
            "max(flops / matmul peak, bytes / copy bandwidth) / time, against the peaks below (ours: the fp32 "
            "matmul; ref: the matmul of its precision); above 100% where an op beats the measured matmul or copy",
            "- rate: useful flops (2 x MACs; skip scores on the cropped window only) or fewest bytes moved, over "
            "the median time; err: ours vs ref outputs (relative L2, or the fraction of differing labels)",
            "", "## Measured peaks (same run)", ""] + _peaks_lines(result["peaks"]) + [""]
    if result.get("runs"):
        out += [f"Merged from {len(result['runs'])} runs (--append); % peak is against the last run's peaks:", ""]
        out += [f"- {r['timestamp']}, commit `{r['commit']}`, --only {r['only']}: copy {r['peaks']['copy_gbps']:.1f} GB/s, "
                f"fp32 matmul {r['peaks']['matmul_fp32_tflops']:.3g} TFLOP/s" for r in result["runs"]]
        out.append("")
    header = ("| input | layer | ours | ref | ours ms | ref ms | ratio | ours rate | ref rate | ours % peak "
              "| ref % peak | err | shape |")
    rule = "|" + "---|" * 13
    titles = {"end_to_end": "End to end", "layer": "FCN-8s layers", "kernel": "Kernels", "train_step": "Training step",
              "dispatch": "Through PyTorch: torch.ops.fcn_cuda (ours) against the direct fcn_cuda.ops call (ref), "
                          "the same kernels"}
    for kind in ("end_to_end", "layer", "kernel", "train_step", "dispatch"):
        rows = [r for r in result["rows"] if r["kind"] == kind]
        if not rows:
            continue
        out += [f"## {titles[kind]}", "", header, rule]
        for r in rows:
            out.append(f"| {r['config']} | {r['layer']} | {r['ours']} | {r['ref']} | {_ms(r['ours_ms'])} | "
                       f"{_ms(r['ref_ms'])} | {r['ratio']:.2f} | {_rate(r)} | {_rate(r, 'ref_')} | "
                       f"{_pct(r['pct_of_peak'])} | {_pct(r['ref_pct_of_peak'])} | {_err(r['err'])} | "
                       f"{r['shape']}{'; ' + r['note'] if r.get('note') else ''} |")
        out.append("")
    if result["skipped"] or result["failed"]:
        out += ["## Not measured", ""]
        out += [f"- `{s['name']}`: {s['reason']}" for s in result["skipped"]]
        out += [f"- FAILED `{f['name']}`: {f['error']}" for f in result["failed"]]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- summaries
def summary_rows(result, config=None):
    """One row per layer for one input (the first by default): the fastest of
    our variants against the fp32 reference (cuDNN / torch with TF32 off,
    eager for the end-to-end rows); the dispatch rows, which compare
    fcn_cuda with itself, stay in the .md."""
    rows = result["rows"]
    if not rows:
        return []
    config = config or rows[0]["config"]
    best = {}
    for r in rows:
        if r["config"] != config or r["ref_precision"] != "fp32" or "compile" in r["ref"] or r["kind"] == "dispatch":
            continue
        key = (r["kind"], r["layer"])
        if key not in best or r["ours_ms"] < best[key]["ours_ms"]:
            best[key] = r
    order = {"end_to_end": 0, "layer": 1, "kernel": 2, "train_step": 3}
    return sorted(best.values(), key=lambda r: order[r["kind"]])


def end_to_end_lines(result):
    lines = ["| input | op | ref | fcn_cuda ms | ref ms | ratio | fcn_cuda % peak |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["kind"] == "end_to_end":
            lines.append(f"| {r['config']} | {r['layer']} | {r['ref']} | {_ms(r['ours_ms'])} | {_ms(r['ref_ms'])} | "
                         f"{r['ratio']:.2f} | {_pct(r['pct_of_peak'])} |")
    return lines


def readme_block(result, source):
    """The README's lines between the gpu-table markers: a GPU result's end-to-end
    table, or for an emulator result the line that says no GPU result exists."""
    if result["emulation"]:
        return NO_GPU_RESULT
    return "\n".join([f"On {result['device']} ({result['date']}, commit `{result['commit']}`; `{source}`), "
                      "the whole network against PyTorch:", ""] + end_to_end_lines(result) +
                     ["", "ratio = ref ms / fcn_cuda ms (> 1: fcn_cuda is faster). Per layer and kernel: "
                      "[docs/performance.md](docs/performance.md#benchmark-tables)."])


def tables(result, source):
    """docs/performance.md's lines between the perf-table markers."""
    emu = result["emulation"]
    configs = list(dict.fromkeys(r["config"] for r in result["rows"]))
    lines = [f"Generated by `python -m benchmarks.report` from `{source}` "
             f"({result['device']}, {result['date']}, commit `{result['commit']}`; config: {result['config']['note']})."]
    if emu:
        lines[0] = f"**{EMULATION_LABEL}.** " + lines[0]
    lines += ["", "End to end (every input measured; eager and compiled PyTorch):", ""] + end_to_end_lines(result)
    if configs:
        lines += ["", f"Per layer at input {configs[0]}: the fastest fcn_cuda variant against the reference "
                  "with TF32 off (all variants, TF32 and the other inputs: the .md beside the JSON):", "",
                  "| layer | kind | fcn_cuda variant | ref | fcn_cuda ms | ref ms | ratio | fcn_cuda rate "
                  "| fcn_cuda % peak |", "|---|---|---|---|---|---|---|---|---|"]
        for r in summary_rows(result, configs[0]):
            if r["kind"] != "end_to_end":
                lines.append(f"| {r['layer']} | {r['kind']} | {r['ours']} | {r['ref']} | {_ms(r['ours_ms'])} | "
                             f"{_ms(r['ref_ms'])} | {r['ratio']:.2f} | {_rate(r)} | {_pct(r['pct_of_peak'])} |")
    lines += ["", "ratio = ref ms / fcn_cuda ms (> 1: fcn_cuda is faster); % peak against the peaks measured in "
              "the same run: " + "; ".join(line[2:] for line in _peaks_lines(result["peaks"])[1:]) + "."]
    reasons = {}
    for s in result["skipped"]:
        reasons.setdefault(s["reason"], []).append(f"`{s['name']}`")
    for reason, names in reasons.items():
        lines.append(f"Not measured ({reason}): {', '.join(names)}.")
    if result["failed"]:
        lines.append("FAILED: " + ", ".join(f"`{f['name']}`" for f in result["failed"]) + " (see the .md).")
    return "\n".join(lines)


def replace_between_markers(text, block, begin=BEGIN, end=END, where="the page"):
    b, e = text.find(begin), text.find(end)
    if b < 0 or e < 0 or e < b:
        raise ValueError(f"{where} lacks the markers {begin} ... {end}")
    return text[:b + len(begin)] + "\n" + block.rstrip() + "\n" + text[e:]


def load_result(path):
    with open(path) as f:
        result = json.load(f)
    missing = [k for k in TOP_KEYS if k not in result]
    if missing:
        raise ValueError(f"{path}: not a benchmark result (missing {missing})")
    return result


def newest_result(results_dir=RESULTS_DIR):
    """The newest result JSON; GPU results win over host emulation."""
    found = []
    for p in Path(results_dir).glob("*.json"):
        try:
            r = load_result(p)
        except (ValueError, json.JSONDecodeError):
            continue
        found.append(((not r["emulation"], r["date"], r.get("timestamp", "")), p))
    if not found:
        raise FileNotFoundError(f"no benchmark result in {results_dir}: run `python -m benchmarks` first")
    return max(found)[1]


def update_docs(doc_path=PERFORMANCE, readme_path=README, result_path=None, results_dir=RESULTS_DIR):
    """Rewrites the tables between doc_path's markers and the README's line
    between its own; returns the result file used. Both files are checked
    for their markers before either is written."""
    result_path = Path(result_path) if result_path else newest_result(results_dir)
    result = load_result(result_path)
    try:
        source = result_path.resolve().relative_to(ROOT)
    except ValueError:
        source = result_path.name
    doc = replace_between_markers(Path(doc_path).read_text(), tables(result, source), where=str(doc_path))
    readme = replace_between_markers(Path(readme_path).read_text(), readme_block(result, source),
                                     GPU_BEGIN, GPU_END, where=str(readme_path))
    _atomic_text(doc_path, doc)
    _atomic_text(readme_path, readme)
    return result_path


# -------------------------------------------------------------------- plots
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _title(result, what):
    t = f"{what}: {result['device']}, {result['date']}"
    return t + "\n(host emulation: CPU timings, not GPU numbers)" if result["emulation"] else t


def plot_roofline(result, path):
    """Achieved TFLOP/s against arithmetic intensity for the rows with both
    flops and bytes, under the measured roofs. Returns False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    peaks = result["peaks"]
    rows = [r for r in result["rows"] if r.get("flops") and r.get("bytes")]
    fig, ax = plt.subplots(figsize=(8, 6))
    intensities = [r["flops"] / r["bytes"] for r in rows] or [1.0]
    lo, hi = min(intensities) / 2, max(intensities) * 2
    xs = [lo * (hi / lo) ** (i / 99) for i in range(100)]
    bw = peaks["copy_gbps"] / 1e3  # TB/s
    for prec, style in (("fp32", "-"), ("tf32", "--"), ("bf16", ":")):
        p = peaks.get(f"matmul_{prec}_tflops")
        if p:
            ax.plot(xs, [min(p, x * bw) for x in xs], style, color="gray", label=f"roof: {prec} matmul, copy bw")
    for side, marker, color in (("", "o", "tab:blue"), ("ref_", "x", "tab:red")):
        pts = [(r["flops"] / r["bytes"], r[side + "tflops"]) for r in rows]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, label="fcn_cuda" if not side else "PyTorch reference")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flop / minimum byte)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(_title(result, "Roofline"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_ratios(result, path):
    """Per layer, ref ms / fcn_cuda ms of the fastest variant (log scale; > 1:
    fcn_cuda faster), one panel per input. Returns False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    configs = list(dict.fromkeys(r["config"] for r in result["rows"])) or ["none"]
    panels = [(c, summary_rows(result, c)) for c in configs]
    height = max(3.0, 0.28 * max(len(rows) for _, rows in panels) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), height), squeeze=False)
    for ax, (config, rows) in zip(axes[0], panels):
        labels = [f"{r['layer']} ({r['ours']})" for r in rows]
        ratios = [r["ratio"] for r in rows]
        colors = ["tab:green" if v >= 1 else "tab:red" for v in ratios]
        ax.barh(range(len(rows)), ratios, color=colors)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("ref ms / fcn_cuda ms (> 1: fcn_cuda faster)")
        ax.set_title(f"input {config}", fontsize=9)
    fig.suptitle(_title(result, "fcn_cuda vs PyTorch, TF32 off"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_all(result, out_dir, log=print):
    """Writes <stem>.json, .md, -roofline.png and -ratios.png; returns their paths."""
    out_dir = Path(out_dir)
    stem = result_stem(result)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    _atomic_text(paths["json"], json.dumps(result, indent=1, allow_nan=False) + "\n")
    _atomic_text(paths["md"], markdown(result) + "\n")
    for key, plot in (("roofline", plot_roofline), ("ratios", plot_ratios)):
        p = out_dir / f"{stem}-{key}.png"
        try:
            drawn = plot(result, p)
        except Exception as e:  # a plot never costs the measurements, which are already written
            log(f"note: {p.name} could not be drawn: {type(e).__name__}: {e}")
            continue
        if drawn:
            paths[key] = p
        else:
            log(f"note: matplotlib is not installed, so {p.name} was not drawn (pip install 'fcn_cuda[bench]')")
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(RESULTS_DIR), help="folder of result files")
    ap.add_argument("--from", dest="source", help="use this result JSON instead of the newest")
    ap.add_argument("--doc", default=str(PERFORMANCE), help="the page whose perf-table markers get the tables")
    ap.add_argument("--readme", default=str(README), help="the README whose gpu-table markers get its line")
    args = ap.parse_args(argv)
    used = update_docs(args.doc, args.readme, args.source, args.results)
    print(f"{args.doc} and {args.readme}: tables rewritten from {used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
