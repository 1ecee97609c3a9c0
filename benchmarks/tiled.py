"""Peak memory and time of whole-image against tiled inference, against image size.

    python benchmarks/tiled.py [--sizes 512,1024,2048,4096] [--tiles 512,1024] [--out benchmarks/results/tiled]
                               [--backend host|cuda] [--tile-batch B] [--plot-only]
    python benchmarks/tiled.py --picture docs/tiled_shapes.png

--picture segments a 768 x 1024 mosaic of the synthetic shapes set in tiles
of 256 (checking the labels against the whole image's) and draws the tile
grid and one tile's input window over the overlay.

The bundled model (FCN-8s at one eighth of VGG16's width) segments a
synthetic size x size image held in a memory-mapped .npy file, writing its
labels into a memory-mapped .npy (np.memmap), once whole and once in tiles
of each --tiles size (tiles at least as large as the image are left out:
that run is the whole image's). --tile-batch B runs up to B tiles of one
window shape at once (infer's tile_batch; default: its per-backend default).
Each run is a fresh child process, which reports:

    seconds     wall time of fcn_cuda.infer (the host: the CUDA emulation, not a GPU)
    cpu_seconds its process's CPU time (every thread's; on a shared machine steadier than the wall time)
    peak MiB    host: tracemalloc's peak (what NumPy and Python allocated; the
                memory maps are not); cuda: CuPy's pool's peak bytes in use
    rss MiB     the child's peak resident set (VmHWM), memory maps' touched pages included

The halo's cost: a tile of N output pixels reads an input window of up to
N + before + after per axis (fcn_cuda.tiling.halo), so tiles predict about
(sum of the windows' padded areas) / (the whole image's padded area) times
the work (the network pads its input by 100 per side, which a window pays
again), near ((N + 2h)^2 / N^2 with h the mean halo) for large images; the
table gives both beside the measured time ratio.

Each row is appended to <out>.jsonl as it finishes (a long sweep keeps what
it measured); the table (<out>.md) and the plot (<out>.png) are written
from every row there.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np
import fcn_cuda
from fcn_cuda import _backend
from fcn_cuda.inference import default_model
path, out_path, tile, backend = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
batch = int(sys.argv[5]) or None
fcn_cuda.use_backend(backend)
model = default_model()
src = np.load(path, mmap_mode="r")
out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=src.shape[:2])
be = _backend.active()
peak = [0]
if be.name == "cuda":
    pool = be.xp.get_default_memory_pool()
    def malloc(n):
        mem = pool.malloc(n)
        peak[0] = max(peak[0], pool.used_bytes())
        return mem
    be.xp.cuda.set_allocator(malloc)
else:
    tracemalloc.start()
start, cpu = time.perf_counter(), time.process_time()
fcn_cuda.infer(src, model, tile=tile or None, out=out, tile_batch=batch)
if be.name == "cuda":
    be.xp.cuda.get_current_stream().synchronize()
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
if be.name == "host":
    peak[0] = tracemalloc.get_traced_memory()[1]
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
out.flush()
counts = np.bincount(out.reshape(-1), minlength=4).tolist()
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak": peak[0], "rss": hwm * 1024, "labels": counts}))
"""


from fcn_cuda import tiling  # noqa: E402


def image(size, path):
    """A size x size synthetic picture (smooth regions and noise) written into a .npy, a band at a time."""
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(size, size, 3))
    rng = np.random.default_rng(size)
    xx = np.arange(size)
    for y in range(0, size, 256):
        yy = np.arange(y, min(y + 256, size))[:, None]
        band = np.stack([127 + 110 * np.sin(yy / (40 + 13 * c) + xx / (53 + 7 * c) + c) for c in range(3)], axis=2)
        a[y:y + len(yy)] = np.clip(band + rng.normal(0, 20, band.shape), 0, 255).astype(np.uint8)
    a.flush()
    del a


def predicted_work(size, tile):
    """(sum of the tiles' padded window areas) / (the whole image's padded area), and (N + 2h)^2 / N^2."""

    before, after = tiling.halo("8s")
    pad = 2 * 100
    windows = sum((t.wy1 - t.wy0 + pad) * (t.wx1 - t.wx0 + pad) for t in tiling.plan(size, size, tile, "8s"))
    h = (before + after) / 2
    return windows / (size + pad) ** 2, (tile + 2 * h) ** 2 / tile ** 2


def run(size, tile, backend, folder, batch=0):
    path = Path(folder) / f"img{size}.npy"
    if not path.exists():
        image(size, path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [str(path), str(Path(folder) / "out.npy"), str(tile), backend, str(batch)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"size {size} tile {tile}: {done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"size": size, "tile": tile, "backend": backend, "batch": (batch or "default") if tile else "-", **row}


def table(rows):
    whole = {r["size"]: r for r in rows if r["tile"] == 0}
    lines = ["| image | tiles | batch | seconds | peak MiB | rss MiB | time / whole | predicted work (windows) "
             "| (N+2h)^2/N^2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["size"], r["tile"], str(r.get("batch", "default")))):
        ratio = pred = simple = "-"
        if r["tile"]:
            p, s = predicted_work(r["size"], r["tile"])
            pred, simple = f"{p:.2f}", f"{s:.2f}"
            if r["size"] in whole:
                ratio = f"{r['seconds'] / whole[r['size']]['seconds']:.2f}"
        batch = r.get("batch", "default") if r["tile"] else "-"
        lines.append(f"| {r['size']}^2 | {r['tile'] or 'whole'} | {batch} | {r['seconds']:.1f} | "
                     f"{r['peak'] / 2**20:.0f} | {r['rss'] / 2**20:.0f} | {ratio} | {pred} | {simple} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    for tile, batch in sorted({(r["tile"], str(r.get("batch", "default"))) for r in rows}):
        mine = sorted((r for r in rows if r["tile"] == tile and str(r.get("batch", "default")) == batch),
                      key=lambda r: r["size"])
        label = "whole image" if tile == 0 else f"tiles of {tile}" + (f", batch {batch}" if batch != "default" else "")
        sizes = [r["size"] for r in mine]
        ax_m.plot(sizes, [r["peak"] / 2**20 for r in mine], "o-", label=label)
        ax_t.plot(sizes, [r["seconds"] for r in mine], "o-", label=label)
    backend = rows[0]["backend"]
    for ax, what in ((ax_m, "peak memory, MiB (tracemalloc)" if backend == "host" else "peak device memory, MiB"),
                     (ax_t, "seconds" + (" (CUDA emulation on the CPU)" if backend == "host" else ""))):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image side, pixels")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"bundled FCN-8s (1/8 width), {backend} backend: whole image vs exact tiles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def picture(path, rows=6, cols=8, size=128, tile=256):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    import fcn_cuda
    from fcn_cuda.colors import colorize
    from fcn_cuda.data import SyntheticShapes
    from fcn_cuda.inference import default_model

    data = SyntheticShapes(rows * cols, size=size, seed=7)
    img = np.concatenate([np.concatenate([data[r * cols + c][0] for c in range(cols)], axis=1) for r in range(rows)])
    model = default_model()
    labels = fcn_cuda.infer(img, model, tile=tile)
    if not np.array_equal(labels, fcn_cuda.infer(img, model)):
        raise AssertionError("tiled labels differ from the whole image's")
    h, w = labels.shape
    tiles = tiling.plan(h, w, tile, model.variant)
    shown = next(t for t in tiles if t.y0 == tile and t.x0 == tile)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.9), dpi=90)
    for ax, picture_, title in ((axes[0], img, "image"), (axes[1], colorize(labels), "labels (tiled = whole)")):
        ax.imshow(picture_)
        for t in tiles:
            ax.add_patch(Rectangle((t.x0 - 0.5, t.y0 - 0.5), t.x1 - t.x0, t.y1 - t.y0, fill=False, ec="white",
                                   lw=1.5))
        ax.add_patch(Rectangle((shown.x0 - 0.5, shown.y0 - 0.5), tile, tile, fill=False, ec="red", lw=2.5))
        ax.add_patch(Rectangle((shown.wx0 - 0.5, shown.wy0 - 0.5), shown.wx1 - shown.wx0, shown.wy1 - shown.wy0,
                               fill=False, ec="yellow", lw=2, ls="--"))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{w} x {h} in {len(tiles)} exact tiles of {tile} (white); one tile (red) and its input window "
                 f"(yellow, dashed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="512,1024,2048,4096")
    ap.add_argument("--tiles", default="512,1024")
    ap.add_argument("--backend", default="host", choices=("host", "cuda"))
    ap.add_argument("--tile-batch", type=int, default=0, help="infer's tile_batch (default: its own default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tiled"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the table and plot from <out>.jsonl")
    ap.add_argument("--picture", help="draw the tiles over a segmented mosaic into this PNG, and stop")
    args = ap.parse_args(argv)
    if args.picture:
        picture(args.picture)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    if not args.plot_only:
        with tempfile.TemporaryDirectory() as folder:
            for size in map(int, args.sizes.split(",")):
                for tile in [0] + [t for t in map(int, args.tiles.split(",")) if t < size]:
                    row = run(size, tile, args.backend, folder, args.tile_batch)
                    print(json.dumps(row), flush=True)
                    with open(log, "a") as f:
                        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["backend"] == args.backend]
    out.with_suffix(".md").write_text(table(rows))
    plot(rows, out.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    main()
