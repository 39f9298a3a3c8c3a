#!/usr/bin/python3
"""Whole models, dynconv vs PyTorch on this machine, and the targets of the speed issue.

Run it with /usr/bin/python3 (Debian's python3-torch, python3-torchvision; the plot needs
python3-matplotlib) after building bench_models:

    cmake --build build --target bench_models
    /usr/bin/python3 benchmarks/compare_pytorch.py [--bench-models build/benchmarks/bench_models]
        [--bench-models-plain build-plain/benchmarks/bench_models] [--no-od]
        [--rounds 3] [--quick] [--all-models] [--out-md FILE] [--out-json FILE]
        [--plot docs/benchmarks.svg] [--rss [--dynconv-run PATH]] [--times-table]
        [--export-torchscript DIR]

What runs, in ROUNDS rounds, model by model (each base model M with its dynamic twin dy_M),
alternating the two sides (even rounds PyTorch first, odd rounds dynconv first), so that both
see the same machine state:

  dynconv        bench_models (a subprocess, --benchmark_filter for M and dy_M,
                 --benchmark_format=json, --benchmark_repetitions): Model/<name>/batch:B/
                 threads:T through dynconv::Session, real time; one sample per repetition
                 (the mean over that repetition's iterations)
  PyTorch, torch.set_num_threads(T), torch.no_grad(), float32, one sample per call:
    eager_static   tools/dynconv_torch.py build_model(M) (= the torchvision model), eval()
    frozen_static  torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(
                   model.eval()))) of that model: oneDNN, BatchNorm folded, weights prepacked;
                   the fastest static path PyTorch 1.13 offers on CPU
    eager_dynamic  build_model(dy_M) (the same policy as dynconv's dy_M, K = 4), eval(), each
                   DynamicConv2d running the usual batched dynamic convolution (--dynamic-path
                   grouped, the default): attention, the N aggregated kernels as one matmul
                   [N, K] x [K, Cout*Cin/g*kh*kw], then ONE F.conv2d of x viewed as
                   [1, N*Cin, H, W] with groups = N*groups (the batch folded into the groups).
                   dynconv_torch's own forward() is the per-sample loop (--dynamic-path loop);
                   its training path (set_batched, --dynamic-path batched) is the grouped conv
                   with two shortcuts (bmm for dense 1x1 convs, output mixing for outputs of
                   <= 4 pixels).
In the same bench_models step, dy_M with its experts stored as BF16 and F16 (Model/dy_M:bfloat16
and :float16, the opt-in of target 7; batch 1 and 8, one thread).
Then, per round, the ODConv models of target 4 (od_resnet18, od_mobilenet_v2_x1_0 at K = 4:
bench_models Model/od_<name>, and PyTorch's eager look-alike of the official OSVAI model,
dynconv_torch.build_od_model, one thread), unless --no-od. With --bench-models-plain (a
bench_models built without -march: cmake -DDYNCONV_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release, as a
downstream project compiles the headers) the dynamic models also run on that build, next to the
native one in every round (target 5).

Every case has a warm-up (3 calls PyTorch, one forward in bench_models) in every round; the
reported time is the median of all samples of all rounds. Weights are freshly initialised
(timing does not depend on them), the input is random with a fixed seed.

Output: ONE markdown table, one line per target of the issue with the two times, the ratio,
the limit and PASS/FAIL (n/a: not measured), after a header with the date,
the CPU (lscpu), the FMA peak bench_models measured, the versions (torch, torchvision,
Eigen from Macros.h) and the git commit. --times-table adds every measured time as a second
table. --out-json keeps every sample. --plot FILE.svg|png draws the latencies (log scale).

--rss: peak memory of `dynconv-run --model dy_mobilenet_v3_small` on one 224x224 input
(1000 classes, float32 weights exported from a fresh PyTorch model with
tools/export_safetensors.py), measured with /usr/bin/time -v (maximum resident set size),
against the limit 2 x the float weights (4 bytes x parameters) + 32 MiB; it adds a line to
the table. dynconv-run is an example (DYNCONV_BUILD_EXAMPLES); default path: next to
bench_models, ../examples/dynconv-run. --rss-only skips the timings.

--export-torchscript DIR writes the models for benchmarks/bench_libtorch.cpp: DIR/<M>.script.pt
(torch.jit.script of the static eval() model: bench_libtorch freezes and optimises it for
inference, as the frozen_static variant here), DIR/dy_<M>.b<B>.traced.pt (torch.jit.trace of
the eager_dynamic model at batch B) and DIR/manifest.json, then exits.
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dynconv_torch as dt  # noqa: E402

# oneDNN's frozen graphs resize their own output buffers (PyTorch 1.13): harmless, and noisy.
warnings.filterwarnings("ignore", message="An output with one or more elements was resized")

MAIN_MODELS = ["mobilenet_v3_small", "mobilenet_v2_x1_0", "resnet18"]
# The ODConv models of target 4 (K = 4) and their static twins.
OD_MODELS = {"od_resnet18": "resnet18", "od_mobilenet_v2_x1_0": "mobilenet_v2_x1_0"}
EXTRA_MODELS = ["mobilenet_v2_x0_75", "mobilenet_v2_x0_5", "mobilenet_v2_x0_35", "resnet10"]
BATCHES = (1, 8)
THREADS = (1, 2)
PT_VARIANTS = ("frozen_static", "eager_static", "eager_dynamic")
# The opt-in expert storages of target 7 (bench_models: Model/dy_<M>:<precision>/...).
LOW_PRECISIONS = ("bfloat16", "float16")
SIZE = 224
SEED = 20261125


# ---- PyTorch side ----------------------------------------------------------------------------

def grouped_forward(self, x):
    """DynamicConv2d.forward as the usual PyTorch implementations write it: the batch folded
    into the groups of one conv2d (dynconv_torch.convolve_aggregated without its bmm shortcut
    for 1x1 convs). The same function as the per-sample loop."""
    pi = self.attention(x)
    n, cin, h, w = x.shape
    k = self.kernels
    weight = (pi @ self.weight.reshape(k, -1)).reshape(
        n * self.out_channels, self.in_channels // self.groups, *self.kernel_size)
    bias = None if self.bias is None else (pi @ self.bias).reshape(-1)
    y = F.conv2d(x.reshape(1, n * cin, h, w), weight, bias, self.stride, self.padding,
                 self.dilation, self.groups * n)
    return y.reshape(n, self.out_channels, y.shape[-2], y.shape[-1])


def dynamic_model(base, path):
    """dy_<base> in eval mode, its DynamicConv2d layers running `path`."""
    model = dt.build_model("dy_" + base).eval()
    if path == "grouped":
        for _, m in dt.dynamic_layers(model):
            m.forward = types.MethodType(grouped_forward, m)
    elif path == "batched":
        dt.set_batched(model, True)
    elif path != "loop":
        raise ValueError(path)
    return model


def frozen(model):
    return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model.eval())))


def pytorch_models(base, dynamic_path):
    torch.manual_seed(SEED)
    static = dt.build_model(base).eval()
    return {"eager_static": static, "frozen_static": frozen(static),
            "eager_dynamic": dynamic_model(base, dynamic_path)}


def make_input(batch):
    gen = torch.Generator().manual_seed(SEED + batch)
    return torch.randn(batch, 3, SIZE, SIZE, generator=gen)


def time_calls(fn, x, warmup, min_reps, max_reps, min_seconds):
    """Seconds of single calls after `warmup` untimed ones: at least min_reps calls and
    min_seconds in all, at most max_reps."""
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        start = time.perf_counter()
        while len(times) < max_reps and (len(times) < min_reps
                                          or time.perf_counter() - start < min_seconds):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return times


# ---- dynconv side ----------------------------------------------------------------------------

CASE_RE = re.compile(r"^Model/([^/]+)/batch:(\d+)/threads:(\d+)")


def run_bench_models(exe, names, batches, threads, repetitions, min_time):
    """{(name, B, T): {"ms": [per repetition], "peak_frac": [...], "madds": m}}, context."""
    pattern = "^Model/({})/batch:({})/threads:({})/".format(
        "|".join(re.escape(n) for n in names), "|".join(map(str, batches)),
        "|".join(map(str, threads)))
    cmd = [exe, f"--benchmark_filter={pattern}", "--benchmark_format=json",
           f"--benchmark_repetitions={repetitions}", f"--benchmark_min_time={min_time}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_pytorch: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    out = proc.stdout
    data = json.loads(out[out.index("{"):])
    results = {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        m = CASE_RE.match(b["name"])
        if not m:
            continue
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        r = results.setdefault((m.group(1), int(m.group(2)), int(m.group(3))),
                               {"ms": [], "peak_frac": [], "gflops": [], "madds": b.get("MAdds")})
        r["ms"].append(b["real_time"] * scale)
        r["peak_frac"].append(b.get("peak_frac"))
        r["gflops"].append(b.get("GFLOPS", 0) / 1e9)
    missing = [(n, bb, t) for n in names for bb in batches for t in threads
               if (n, bb, t) not in results]
    if missing:
        sys.exit(f"compare_pytorch: bench_models did not report {missing} "
                 f"(filter {pattern!r})")
    return results, data.get("context", {})


# ---- Environment -----------------------------------------------------------------------------

def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        name = fields.get("Model name", "?").strip()
        cpus = fields.get("CPU(s)", "?").strip()
        return f"{name}, {cpus} CPUs"
    except OSError:
        return "?"


def eigen_version():
    try:
        with open("/usr/include/eigen3/Eigen/src/Core/util/Macros.h") as f:
            text = f.read()
        parts = [re.search(rf"#define EIGEN_{k}_VERSION (\d+)", text).group(1)
                 for k in ("WORLD", "MAJOR", "MINOR")]
        return ".".join(parts)
    except (OSError, AttributeError):
        return "?"


def git_commit():
    try:
        sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                                "include"], capture_output=True, text=True).stdout.strip()
        return sha + (" (include/ modified)" if dirty else "")
    except OSError:
        return "?"


def torchvision_version():
    try:
        import torchvision
        return torchvision.__version__
    except ImportError:
        return "?"


# ---- Peak RSS --------------------------------------------------------------------------------

def measure_rss(dynconv_run, threads=1):
    """Max RSS of dynconv-run on dy_mobilenet_v3_small, batch 1, float32 weights."""
    from export_safetensors import export  # tools/
    if not (os.path.isfile(dynconv_run) and os.access(dynconv_run, os.X_OK)):
        sys.exit(f"compare_pytorch: no dynconv-run at {dynconv_run}: build the examples "
                 "(cmake -DDYNCONV_BUILD_EXAMPLES=ON, target dynconv-run) or pass "
                 "--dynconv-run PATH")
    name = "dy_mobilenet_v3_small"
    torch.manual_seed(SEED)
    model = dt.build_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="dynconv-rss-") as tmp:
        weights = os.path.join(tmp, name + ".safetensors")
        export(model, weights, dtype="f32")
        x = os.path.join(tmp, "input.safetensors")
        dt.save_safetensors(x, {"input": make_input(1)})
        cmd = ["/usr/bin/time", "-v", dynconv_run, "--model", name, "--weights", weights,
               "--input", x, "--top", "1", "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"compare_pytorch: {' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss = int(m.group(1)) * 1024
        weights_bytes = os.path.getsize(weights)
    limit = 2 * 4 * params + 32 * 2**20
    return {"model": name, "batch": 1, "threads": threads, "max_rss_bytes": rss,
            "params": params, "float_weight_bytes": 4 * params,
            "weights_file_bytes": weights_bytes, "limit_bytes": limit,
            "pass": rss <= limit, "command": " ".join(cmd[2:]),
            "dynconv_run_stdout": proc.stdout.strip().splitlines()[-3:]}


# ---- Targets ---------------------------------------------------------------------------------

def med(values):
    return statistics.median(values) if values else None


def targets(models, dc, pt, peak_gflops, rss, plain, od_models):
    """The speed issue's target lines: dicts with id, target, case, a_ms, ref, ref_ms, ratio,
    limit, op ('<=' or '>='), result. plain: {(name, B, T): {"ms": [...]}} of the bench_models
    built without -march (or None: target 5 not measured)."""
    rows = []

    def dms(name, b, t, source=None):
        r = (dc if source is None else source).get((name, b, t))
        return med(r["ms"]) if r else None

    def pms(variant, base, b, t):
        return med(pt.get((variant, base, b, t), []))

    def add(tid, target, case, a_ms, ref, ref_ms, ratio, limit, op, note=""):
        if ratio is None:
            result = "n/a"
        else:
            ok = ratio <= limit if op == "<=" else ratio >= limit
            result = "PASS" if ok else "FAIL"
        rows.append(dict(id=tid, target=target, case=case, a_ms=a_ms, ref=ref, ref_ms=ref_ms,
                         ratio=ratio, limit=limit, op=op, result=result, note=note))

    def div(a, b):
        return None if a is None or b is None else a / b

    for base in models:
        for b, t in ((1, 1), (8, 1), (8, 2)):
            a, r = dms("dy_" + base, b, t), pms("frozen_static", base, b, t)
            add("1", "dynconv dynamic / PyTorch frozen static", f"{base} b{b} t{t}", a,
                "PyTorch frozen static", r, div(a, r), 1.0, "<=")
    for base in models:
        for b in BATCHES:
            a, r = dms(base, b, 1), pms("frozen_static", base, b, 1)
            add("2", "dynconv static / PyTorch frozen static", f"{base} b{b} t1", a,
                "PyTorch frozen static", r, div(a, r), 0.8, "<=")
    for base in models:
        for b in BATCHES:
            a, r = dms("dy_" + base, b, 1), dms(base, b, 1)
            add("3", "dynconv dynamic / static", f"{base} b{b} t1", a, "dynconv static", r,
                div(a, r), 1.10, "<=")
    for od, base in od_models.items():
        for b in BATCHES:
            a, r = dms(od, b, 1), dms(base, b, 1)
            add("4", "ODConv (K = 4) / static", f"{od} b{b} t1", a, f"dynconv {base}", r,
                div(a, r), 1.25, "<=")
            r = pms("eager_official", od, b, 1)
            add("4", "official ODConv eager / dynconv", f"{od} b{b} t1", a,
                "PyTorch eager ODConv", r, div(r, a), 5.0, ">=")
    if plain is not None:
        for base in models:
            for b in BATCHES:
                a, r = dms("dy_" + base, b, 1, plain), dms("dy_" + base, b, 1)
                add("5", "no -march build / -march=native", f"dy_{base} b{b} t1", a,
                    "dynconv native", r, div(a, r), 1.10, "<=")
    names = [n for base in models for n in (base, "dy_" + base)] + list(od_models)
    for name in names:
        t1, t2 = dms(name, 8, 1), dms(name, 8, 2)
        add("6", "b8 throughput, 2 threads / 1", f"{name} b8", t2, "dynconv 1 thread", t1,
            div(t1, t2), 1.8, ">=")
    for name in ("dy_resnet18", "dy_mobilenet_v2_x1_0"):
        if name[3:] in models:
            t1, t2 = dms(name, 1, 1), dms(name, 1, 2)
            add("6", "b1 latency, 2 threads / 1", f"{name} b1", t2, "dynconv 1 thread", t1,
                div(t2, t1), 0.6, "<=")
    slower = []
    for name in names:
        for b in BATCHES:
            t1, t2 = dms(name, b, 1), dms(name, b, 2)
            if t1 is not None and t2 is not None and t2 > t1:
                slower.append((name, b, t1, t2))
    for name, b, t1, t2 in slower:
        rows.append(dict(id="6", target="2 threads slower than 1", case=f"{name} b{b}", a_ms=t2,
                         ref="dynconv 1 thread", ref_ms=t1, ratio=t2 / t1, limit=1.0, op="<=",
                         result="FAIL", note=""))
    if not slower:
        rows.append(dict(id="6", target="2 threads slower than 1", case="(no case)", a_ms=None,
                         ref="", ref_ms=None, ratio=None, limit=1.0, op="<=", result="PASS",
                         note=""))
    for base in models:
        for p in LOW_PRECISIONS:
            a, r = dms(f"dy_{base}:{p}", 1, 1), dms(base, 1, 1)
            add("7", f"{p} experts: dynamic / static", f"{base} b1 t1", a, "dynconv static", r,
                div(a, r), 1.05, "<=")
    if rss:
        mib = 2**20
        rows.append(dict(id="8", target="peak RSS <= 2 x float weights + 32 MiB",
                         case=f"dynconv-run {rss['model']} b1", a_ms=None,
                         ref=f"limit {rss['limit_bytes'] / mib:.1f} MiB", ref_ms=None,
                         ratio=rss["max_rss_bytes"] / rss["limit_bytes"], limit=1.0, op="<=",
                         result="PASS" if rss["pass"] else "FAIL",
                         note=f"max RSS {rss['max_rss_bytes'] / mib:.1f} MiB, weights "
                              f"{rss['float_weight_bytes'] / mib:.1f} MiB"))
    return rows


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def markdown(header, rows, models, dc, pt, times_table, plain=None, od_models=()):
    lines = list(header)
    lines.append("")
    lines.append("| # | target | case | dynconv ms | vs | ms | ratio | limit | result |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        if r["note"]:
            ratio += f" ({r['note']})"
        lines.append(f"| {r['id']} | {r['target']} | {r['case']} | {fmt_ms(r['a_ms'])} | "
                     f"{r['ref']} | {fmt_ms(r['ref_ms'])} | {ratio} | {r['op']} {r['limit']:g} | "
                     f"**{r['result']}** |")
    counts = {k: sum(r["result"] == k for r in rows) for k in ("PASS", "FAIL", "n/a")}
    lines.append("")
    lines.append(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['n/a']} not measured.")
    if times_table:
        lines.append("")
        lines.append("| model | batch | threads | dynconv static | dynconv dynamic | "
                     "PyTorch frozen static | PyTorch eager static | PyTorch eager dynamic |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for base in models:
            for b in BATCHES:
                for t in THREADS:
                    cells = [dc.get((base, b, t)), dc.get(("dy_" + base, b, t))]
                    cells = [fmt_ms(med(c["ms"])) if c else "-" for c in cells]
                    cells += [fmt_ms(med(pt.get((v, base, b, t), []))) for v in PT_VARIANTS]
                    lines.append(f"| {base} | {b} | {t} | " + " | ".join(cells) + " |")
        for od in od_models:
            for b in BATCHES:
                for t in THREADS:
                    c = dc.get((od, b, t))
                    official = pt.get(("eager_official", od, b, t), [])
                    lines.append(f"| {od} (K = 4) | {b} | {t} | - | {fmt_ms(med(c['ms'])) if c else '-'} | - | - | "
                                 f"{fmt_ms(med(official)) if official else '-'} (official, eager) |")
        for base in models:
            for p in LOW_PRECISIONS:
                for b in BATCHES:
                    c = dc.get((f"dy_{base}:{p}", b, 1))
                    lines.append(f"| {base}, {p} experts | {b} | 1 | - | {fmt_ms(med(c['ms'])) if c else '-'} "
                                 "| - | - | - |")
        for (name, b, t), v in sorted((plain or {}).items()):
            lines.append(f"| {name[3:]}, no -march build | {b} | {t} | - | {fmt_ms(med(v['ms']))} | - | - | - |")
        lines.append("")
        lines.append("(milliseconds, medians)")
    return "\n".join(lines)


# ---- Plot ------------------------------------------------------------------------------------

def plot(path, models, dc, pt, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    plt.rcParams["svg.hashsalt"] = "dynconv"  # stable ids: the SVG diffs as text
    plt.rcParams["svg.fonttype"] = "none"     # text stays text
    series = [("dynconv static", lambda base, b, t: dc.get((base, b, t)), "#9ecae1"),
              ("dynconv dynamic", lambda base, b, t: dc.get(("dy_" + base, b, t)), "#08519c"),
              ("PyTorch frozen static", lambda base, b, t: pt.get(("frozen_static", base, b, t)),
               "#fdae6b"),
              ("PyTorch eager static", lambda base, b, t: pt.get(("eager_static", base, b, t)),
               "#e6550d"),
              ("PyTorch eager dynamic", lambda base, b, t: pt.get(("eager_dynamic", base, b, t)),
               "#a63603")]
    panels = [(1, 1), (8, 1), (8, 2)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8))
    width = 0.8 / len(series)
    for ax, (b, t) in zip(axes, panels):
        values = []
        for i, (label, get, color) in enumerate(series):
            xs, ys = [], []
            for j, base in enumerate(models):
                v = get(base, b, t)
                v = med(v["ms"] if isinstance(v, dict) else v) if v else None
                if v is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(v)
            values += ys
            bars = ax.bar(xs, ys, width, label=label, color=color)
            for bar, y in zip(bars, ys):
                ax.text(bar.get_x() + bar.get_width() / 2, y * 1.05, fmt_ms(y), ha="center",
                        va="bottom", fontsize=6, rotation=90)
        ax.set_yscale("log")
        if values:
            ax.set_ylim(min(values) / 2, max(values) * 3)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, fontsize=7)
        ax.set_title(f"batch {b}, {t} thread{'s' if t > 1 else ''}")
        ax.set_ylabel("latency per batch, ms (log)")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(series), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.endswith(".svg") else None)
    plt.close(fig)


# ---- TorchScript export (for bench_libtorch) -------------------------------------------------

def export_torchscript(directory, models, dynamic_path):
    os.makedirs(directory, exist_ok=True)
    manifest = {"size": SIZE, "batches": list(BATCHES), "dynamic_path": dynamic_path,
                "torch": torch.__version__, "models": []}
    for base in models:
        torch.manual_seed(SEED)
        static = dt.build_model(base).eval()
        script = f"{base}.script.pt"
        torch.jit.script(static).save(os.path.join(directory, script))
        dyn = dynamic_model(base, dynamic_path)
        traced = {}
        for b in BATCHES:
            with torch.no_grad():
                module = torch.jit.trace(dyn, make_input(b), check_trace=False)
            traced[str(b)] = f"dy_{base}.b{b}.traced.pt"
            module.save(os.path.join(directory, traced[str(b)]))
        manifest["models"].append({"name": base, "static_script": script,
                                   "dynamic_traced": traced})
        print(f"exported {base}: {script}, " + ", ".join(traced.values()), flush=True)
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


# ---- Main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring for what is measured.")
    ap.add_argument("--bench-models", default=os.path.join("build", "benchmarks", "bench_models"),
                    help="bench_models executable (default build/benchmarks/bench_models, "
                         "relative to the current directory, else to the repository)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; "
                    "--quick: 1)")
    ap.add_argument("--quick", action="store_true",
                    help="one round, fewer samples: checks the tools, not a measurement")
    ap.add_argument("--all-models", action="store_true",
                    help=f"also {', '.join(EXTRA_MODELS)}")
    ap.add_argument("--models", nargs="+", metavar="M",
                    help=f"base models to run (default {' '.join(MAIN_MODELS)})")
    ap.add_argument("--dynamic-path", choices=("grouped", "batched", "loop"), default="grouped",
                    help="PyTorch eager dynamic forward (default grouped: the batch folded "
                         "into the groups of one conv2d per layer)")
    ap.add_argument("--out-md", metavar="FILE", help="also write the markdown here")
    ap.add_argument("--out-json", metavar="FILE", help="every sample, the targets, the context")
    ap.add_argument("--plot", metavar="FILE", nargs="?", const=os.path.join(ROOT, "docs",
                    "benchmarks.svg"), help="latency plot, .svg or .png (default "
                    "docs/benchmarks.svg)")
    ap.add_argument("--times-table", action="store_true",
                    help="print every measured time as a second table")
    ap.add_argument("--rss", action="store_true",
                    help="also measure dynconv-run's peak RSS on dy_mobilenet_v3_small b1")
    ap.add_argument("--rss-only", action="store_true", help="only the RSS measurement")
    ap.add_argument("--dynconv-run", metavar="PATH",
                    help="dynconv-run executable (default: ../examples/dynconv-run next to "
                         "bench_models' directory)")
    ap.add_argument("--bench-models-plain", metavar="PATH",
                    help="a bench_models built without -march (cmake -DDYNCONV_NATIVE=OFF "
                         "-DCMAKE_BUILD_TYPE=Release): target 5, timed in the same rounds")
    ap.add_argument("--no-od", action="store_true",
                    help="skip target 4 (the ODConv models and PyTorch's eager ODConv)")
    ap.add_argument("--export-torchscript", metavar="DIR",
                    help="write TorchScript models for bench_libtorch into DIR and exit")
    args = ap.parse_args()
    if args.plot:
        try:  # before the run, not after ten minutes of it
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("--plot needs matplotlib: install python3-matplotlib (Debian) or drop --plot")

    models = args.models or (MAIN_MODELS + (EXTRA_MODELS if args.all_models else []))
    for m in models:
        if m not in dt.ZOO:
            ap.error(f"unknown model {m}; the static zoo: {', '.join(dt.ZOO)}")

    if args.export_torchscript:
        export_torchscript(args.export_torchscript, models, args.dynamic_path)
        return

    exe = args.bench_models
    if not os.path.isfile(exe) and not os.path.isabs(exe):
        exe = os.path.join(ROOT, exe)
    exe = os.path.abspath(exe)
    run_exe = args.dynconv_run or os.path.join(os.path.dirname(os.path.dirname(exe)),
                                               "examples", "dynconv-run")

    rss = None
    if args.rss or args.rss_only:
        rss = measure_rss(run_exe)
        mib = 2**20
        print(f"peak RSS of {rss['command']}: {rss['max_rss_bytes'] / mib:.1f} MiB; limit 2 x "
              f"{rss['float_weight_bytes'] / mib:.1f} MiB float weights ({rss['params']} params)"
              f" + 32 MiB = {rss['limit_bytes'] / mib:.1f} MiB: "
              f"{'PASS' if rss['pass'] else 'FAIL'}", flush=True)
        if args.rss_only:
            if args.out_json:
                with open(args.out_json, "w") as f:
                    json.dump({"rss": rss}, f, indent=1)
            return
    if not os.access(exe, os.X_OK):
        sys.exit(f"compare_pytorch: no bench_models at {exe} (cmake --build <build> --target "
                 "bench_models; --bench-models PATH)")

    rounds = args.rounds or (1 if args.quick else 3)
    if args.quick:
        pt_reps = {1: (3, 10, 0.2), 8: (2, 3, 0.3)}  # min reps, max reps, min seconds
        dc_reps, dc_min_time = 2, 0.05
    else:
        pt_reps = {1: (10, 40, 1.0), 8: (3, 10, 1.5)}
        dc_reps, dc_min_time = 5, 0.2

    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    print(f"compare_pytorch: {rounds} round(s), models {', '.join(models)}, bench_models {exe}",
          file=sys.stderr, flush=True)

    pt = {}  # (variant, base, B, T) -> [ms]
    dc = {}  # (name, B, T) -> {"ms": [...], "peak_frac": [...], ...}
    context = {}
    peaks = []  # each bench_models run's fma_peak_gflops
    inputs = {b: make_input(b) for b in BATCHES}
    plain_exe = None
    if args.bench_models_plain:
        plain_exe = os.path.abspath(args.bench_models_plain)
        if not os.access(plain_exe, os.X_OK):
            sys.exit(f"compare_pytorch: no bench_models at {plain_exe} (--bench-models-plain)")
    plain = {} if plain_exe else None  # (name, B, T) -> {"ms": [...]}
    od_models = {} if args.no_od else {od: base for od, base in OD_MODELS.items() if base in models}
    torch_models = {}
    default_threads = torch.get_num_threads()
    for rnd in range(rounds):
        for base in models:
            if base not in torch_models:
                torch_models[base] = pytorch_models(base, args.dynamic_path)

            def run_pytorch():
                for t in THREADS:
                    torch.set_num_threads(t)
                    for b in BATCHES:
                        for variant in PT_VARIANTS:
                            lo, hi, secs = pt_reps[b]
                            s = time_calls(torch_models[base][variant], inputs[b], 3, lo, hi, secs)
                            pt.setdefault((variant, base, b, t), []).extend(v * 1e3 for v in s)
                torch.set_num_threads(default_threads)

            def run_dynconv():
                nonlocal context
                res, context = run_bench_models(exe, [base, "dy_" + base], BATCHES, THREADS,
                                                dc_reps, dc_min_time)
                peaks.append(float(context.get("fma_peak_gflops", "nan")))
                low, _ = run_bench_models(exe, [f"dy_{base}:{p}" for p in LOW_PRECISIONS],
                                          BATCHES, (1,), dc_reps, dc_min_time)
                res.update(low)
                for key, r in res.items():
                    slot = dc.setdefault(key, {"ms": [], "peak_frac": [], "gflops": [],
                                               "madds": r["madds"]})
                    for field in ("ms", "peak_frac", "gflops"):
                        slot[field].extend(r[field])

            def run_plain():
                res, _ = run_bench_models(plain_exe, ["dy_" + base], BATCHES, (1,), dc_reps,
                                          dc_min_time)
                for key, r in res.items():
                    plain.setdefault(key, {"ms": []})["ms"].extend(r["ms"])

            order = (run_pytorch, run_dynconv) if rnd % 2 == 0 else (run_dynconv, run_pytorch)
            if plain_exe:  # native and plain builds next to each other
                order = order + (run_plain,) if rnd % 2 == 0 else (run_plain,) + order
            for step in order:
                step()
            print(f"  round {rnd + 1}/{rounds}: {base} done", file=sys.stderr, flush=True)
        for od in od_models:
            if od not in torch_models:
                torch.manual_seed(SEED)
                torch_models[od] = {"eager_official": dt.build_od_model(od, kernels=4).eval()}

            def run_pytorch_od():
                torch.set_num_threads(1)
                for b in BATCHES:
                    lo, hi, secs = pt_reps[b]
                    s = time_calls(torch_models[od]["eager_official"], inputs[b], 1, min(lo, 3),
                                   min(hi, 5), secs)
                    pt.setdefault(("eager_official", od, b, 1), []).extend(v * 1e3 for v in s)
                torch.set_num_threads(default_threads)

            def run_dynconv_od():
                res, _ = run_bench_models(exe, [od], BATCHES, THREADS, dc_reps, dc_min_time)
                for key, r in res.items():
                    slot = dc.setdefault(key, {"ms": [], "peak_frac": [], "gflops": [],
                                               "madds": r["madds"]})
                    for field in ("ms", "peak_frac", "gflops"):
                        slot[field].extend(r[field])

            order = (run_pytorch_od, run_dynconv_od) if rnd % 2 == 0 else (run_dynconv_od,
                                                                           run_pytorch_od)
            for step in order:
                step()
            print(f"  round {rnd + 1}/{rounds}: {od} done", file=sys.stderr, flush=True)

    peak = med(peaks)
    samples_pt = min(len(v) for v in pt.values())
    samples_dc = min(len(v["ms"]) for v in dc.values())
    title = (f"dynconv {git_commit()} vs PyTorch {torch.__version__}, "
             f"{started:%Y-%m-%d %H:%M %Z}, {cpu_model()}")
    header = [
        f"Whole models, 224x224, float32: {started:%Y-%m-%d %H:%M %Z}; CPU {cpu_model()}; "
        f"FMA peak measured by bench_models {peak:.0f} GFLOP/s per core (median of "
        f"{len(peaks)} runs, {min(peaks):.0f}-{max(peaks):.0f}); dynconv {git_commit()}, "
        f"Eigen {eigen_version()}; PyTorch {torch.__version__}, torchvision "
        f"{torchvision_version()}; load average {load_start[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end.",
        f"Medians over {rounds} alternating round(s) (>= {samples_dc} bench_models repetitions, "
        f">= {samples_pt} PyTorch calls per case). PyTorch frozen static = optimize_for_inference"
        f"(freeze(script(model))); eager dynamic = dynconv_torch dy_ model, "
        f"{args.dynamic_path} path (batch folded into conv groups), no_grad; "
        f"torch.set_num_threads(T). t = threads, b = batch."]
    rows = targets(models, dc, pt, peak, rss, plain, od_models)
    md = markdown(header, rows, models, dc, pt, args.times_table, plain, od_models)
    print(md)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md + "\n")
    if args.out_json:
        out = {"date": started.isoformat(), "cpu": cpu_model(), "torch": torch.__version__,
               "torchvision": torchvision_version(), "eigen": eigen_version(),
               "commit": git_commit(), "fma_peak_gflops": peak, "fma_peaks": peaks,
               "rounds": rounds,
               "dynamic_path": args.dynamic_path, "bench_models_context": context,
               "load_average": [load_start[0], os.getloadavg()[0]],
               "dynconv": [{"name": k[0], "batch": k[1], "threads": k[2], **v}
                           for k, v in sorted(dc.items())],
               "pytorch": [{"variant": k[0], "model": k[1], "batch": k[2], "threads": k[3],
                            "ms": v} for k, v in sorted(pt.items())],
               "plain": [{"name": k[0], "batch": k[1], "threads": k[2], **v}
                         for k, v in sorted((plain or {}).items())],
               "targets": rows, "rss": rss}
        with open(args.out_json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        plot(args.plot, models, dc, pt, title)
        print(f"\nplot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
