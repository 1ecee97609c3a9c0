"""Peak memory of reading a large .caffemodel (CPU and host memory only; no GPU).

    python benchmarks/caffe_memory.py [--mb 600] [--path NEW_FILE.caffemodel] [--keep]

Writes a synthetic FCN-8s caffemodel of about --mb megabytes (VGG16's trunk
at full width, 21 classes, fc6 / fc7 widened until the file reaches the
size; tests/caffe_encoder.py writes it), then runs each step in a fresh
child process and prints that process's peak resident set (VmHWM, from
/proc/self/status: pages of a mapped file count once touched) and its
tracemalloc peak (what Python and NumPy allocated; a memory map is not):

    baseline          python + import fcn_cuda
    read_caffemodel   fcn_cuda.read_caffemodel(path), then every blob summed (each page of the file touched)
    load_model        fcn_cuda.load_model(path): the FCN owns a float32 copy of every weight

The file is a new temporary file (or --path, which must not exist yet: the
benchmark never writes over a file), removed afterwards, also when a step
fails, unless --keep.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test suite's Caffe encoder
import caffe_encoder  # noqa: E402

from fcn_cuda.model import VGG16_BLOCKS, param_shapes  # noqa: E402

STEPS = {
    "baseline": "import fcn_cuda",
    "read_caffemodel": "import fcn_cuda; layers = fcn_cuda.read_caffemodel(PATH); "
                       "total = sum(float(b.sum(dtype='f8')) for blobs in layers.values() for b in blobs)",
    "load_model": "import fcn_cuda; model = fcn_cuda.load_model(PATH)",
}


def fc_width(mb, num_classes=21):
    """The fc6 / fc7 width that brings an FCN-8s of VGG16 width to about `mb` megabytes of float32."""
    trunk = sum(int(np.prod(s)) for k, s in param_shapes("8s", num_classes, fc=1).items() if k.startswith("conv"))
    c5 = VGG16_BLOCKS[-1][-1]
    # fc * (c5 * 49 + 1) + fc * (fc + 1) + num_classes * fc = target: a quadratic in fc
    b = c5 * 49 + 2 + num_classes
    target = mb * 1e6 / 4 - trunk
    return int((-b + np.sqrt(b * b + 4 * target)) / 2)


def write(f, mb):
    """Writes the synthetic net into the binary file object f; returns its fc6 / fc7 width."""
    fc = fc_width(mb)
    shapes = param_shapes("8s", 21, fc=fc)
    f.write(caffe_encoder.string(1, "synthetic FCN-8s"))
    layers = dict.fromkeys(k.rsplit(".", 1)[0] for k in shapes)
    for name in layers:
        blobs = [np.full(shapes[k], 1e-3, np.float32) for k in (f"{name}.weight", f"{name}.bias") if k in shapes]
        f.write(caffe_encoder.layer(name, "Convolution", [caffe_encoder.blob(b) for b in blobs]))
    return fc


def peak(step, path):
    """(peak RSS MiB, tracemalloc peak MiB) of one step in a fresh process. The
    peak RSS is the child's own VmHWM: ru_maxrss would carry this parent's
    peak over the fork."""
    code = ("import tracemalloc; tracemalloc.start(); PATH = " + repr(str(path)) + "; " + STEPS[step]
            + "; print(tracemalloc.get_traced_memory()[1]); "
            + "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "FCN_CUDA_BACKEND": "host"}).stdout.split()
    return int(out[-1]) / 1024, int(out[-2]) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=600)
    ap.add_argument("--path", help="the file to write (must not exist; default: a new file in the temp folder)")
    ap.add_argument("--keep", action="store_true", help="leave the file in place afterwards")
    args = ap.parse_args()
    if args.path:
        path = Path(args.path)
        try:
            f = open(path, "xb")  # exclusive: never over a file that is there
        except FileExistsError:
            ap.error(f"--path {path} exists; name a new file (the benchmark writes it and, unless --keep, "
                     "removes it)")
    else:
        fd, name = tempfile.mkstemp(prefix="fcn_cuda_synthetic_", suffix=".caffemodel")
        path, f = Path(name), os.fdopen(fd, "wb")
    try:
        with f:
            fc = write(f, args.mb)
        size = path.stat().st_size / 2**20
        print(f"{path}: {size:.0f} MiB (FCN-8s, VGG16 trunk, fc6 / fc7 {fc} wide, 21 classes)")
        print(f"{'step':>16s} {'peak RSS MiB':>13s} {'- baseline':>11s} {'/ file':>7s} {'tracemalloc MiB':>16s}")
        base = None
        for step in STEPS:
            rss, traced = peak(step, path)
            base = rss if base is None else base
            print(f"{step:>16s} {rss:13.0f} {rss - base:11.0f} {(rss - base) / size:7.2f} {traced:16.1f}")
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
