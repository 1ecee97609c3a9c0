"""The mutation check: do the tests catch the bugs they are meant to?

    python -m tests.mutations            # every bug; prints a table, exits 1 if any is not caught
    python -m tests.mutations -k pool    # the bugs whose name contains 'pool'
    python -m tests.mutations --list     # the bugs and the tests meant to catch each

Each bug is a text substitution in the library (fcn_cuda/ or csrc/) whose
old text must occur exactly once there: when the code moves or changes, the
check fails before running anything, naming the bug, so the list is kept up
to date (it matches content, never line numbers). Bugs are planted one at a
time in a scratch copy of the working tree (tracked and untracked files, the
built host extension and its object cache), never in the tree itself. A bug
in csrc/ rebuilds the host extension there (FCN_CUDA_NO_CUDA=1 setup.py
build_ext --inplace, recompiling only the objects that include the changed
file); a bug in Python needs no build. Then the tests meant to catch it run
with -x under a time limit, and the table gives the first test that failed.

A bug is caught when pytest reports a failed test. Not caught (every test
passed), a build that fails, a selection that collects nothing and a time
limit reached are all failures of the check: each means a test to add or a
list entry to fix.
"""

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("fcn_cuda", "csrc")
SOURCE_SUFFIXES = {".py", ".cuh", ".cu", ".h", ".cpp"}


@dataclasses.dataclass(frozen=True)
class Bug:
    name: str
    old: str  # occurs exactly once in the library
    new: str
    tests: tuple  # pytest arguments: test files by name (found anywhere under tests/), ::ids, -k expressions
    timeout: int = 300


BUGS = [
    # ---- the seven an audit planted
    Bug("crf: padding point added when H*W % 4 == 0",
        "self.n % 4 != 0 if padding is None else", "self.n % 4 >= 0 if padding is None else",
        ("test_crf.py", "-k", "padding_point")),
    Bug("crf: padding point left out when H*W % 4 == 1",
        "self.n % 4 != 0 if padding is None else", "self.n % 4 > 1 if padding is None else",
        ("test_crf.py", "-k", "padding_point")),
    Bug("split-K sum adds the splits in reverse order",
        "for (int z = 0; z < splits; ++z) acc += __ldg(&partial[z * total + i]);",
        "for (int z = splits - 1; z >= 0; --z) acc += __ldg(&partial[z * total + i]);",
        ("test_conv2d_splitk.py", "-k", "in_order")),
    Bug("split-K sum never writes the last element",
        "    if (i >= total) return;\n    float acc = 0.f;\n    for (int z = 0; z < splits;",
        "    if (i >= total - 1) return;\n    float acc = 0.f;\n    for (int z = 0; z < splits;",
        ("test_conv2d_splitk.py", "-k", "fc6_like")),
    Bug("max_pool2d: ceil mode's last window may start outside the input",
        "    if ceil_mode and (out - 1) * s >= size:\n        out -= 1\n", "",
        ("test_pool.py", "-k", "last_window")),
    Bug("crop_backward: window bound x <= W",
        "unsigned(x) < unsigned(W) ? __ldg(g + (plane * H + y) * W + x) : 0.f",
        "unsigned(x) <= unsigned(W) ? __ldg(g + (plane * H + y) * W + x) : 0.f",
        ("test_crop_backward.py", "-k", "test_crop_backward")),
    Bug("fp32 igemm epilogue drops the last channel's bias",
        "bias[j] = (b && k < g.K) ? __ldg(&b[k]) : 0.f;", "bias[j] = (b && k < g.K - 1) ? __ldg(&b[k]) : 0.f;",
        ("test_conv2d.py", "-k", "shapes")),
    Bug("grad_weight: barrier before the red reduction dropped",
        "float* red = smem;\n        __syncthreads();\n", "float* red = smem;\n",
        ("test_conv2d_backward.py", "-k", "grad_weight")),
    # ---- kernels
    Bug("max_pool2d: ties keep the last maximum",
        "if (v > best || v != v) {", "if (v >= best || v != v) {",
        ("test_pool.py", "-k", "ties")),
    Bug("max_pool2d: window one row short",
        "const int h1 = min(h0 + kh, H), w1 = min(w0 + kw, W);",
        "const int h1 = min(h0 + kh - 1, H), w1 = min(w0 + kw, W);",
        ("test_pool.py", "-k", "matches_torch")),
    Bug("max_pool2d: the two strides swapped",
        "const int h0 = oh * sh, w0 = ow * sw;", "const int h0 = oh * sw, w0 = ow * sh;",
        ("test_pool.py", "-k", "matches_torch")),
    Bug("crf blur: one neighbour counted twice, the other left out",
        "const float pair = b1[l] + b2[l];", "const float pair = b1[l] + b1[l];",
        ("test_crf.py", "-k", "lattice_matches_pydensecrf")),
    Bug("max_pool2d_backward: the last output row's windows left out",
        "oh1 = min(h / sh, Ho - 1);", "oh1 = min(h / sh, Ho - 2);",
        ("test_pool_backward.py",)),
    Bug("softmax: ties go to the highest channel",
        "if (v > st.max || (isnan(v) && !isnan(st.max))) {", "if (v >= st.max || (isnan(v) && !isnan(st.max))) {",
        ("test_softmax.py", "-k", "ties")),
    Bug("crop_add: the two offsets swapped",
        "out[i] = a[i] + b[(plane * Hb + y + oy) * Wb + x + ox];",
        "out[i] = a[i] + b[(plane * Hb + y + ox) * Wb + x + oy];",
        ("test_crop.py", "-k", "test_crop_add")),
    Bug("score_crop_add: every class of a group takes its first class's bias",
        "(bias != nullptr ? __ldg(bias + k) : 0.f)", "(bias != nullptr ? __ldg(bias + k0) : 0.f)",
        ("test_crop.py", "-k", "test_score_crop_add")),
    Bug("masked transposed convolution: the mask dropped where it is 0",
        "if (kMasked && !(__ldg(mp + row + tx.in0 - jx) > 0.f)) v = 0.f;",
        "if (kMasked && !(__ldg(mp + row + tx.in0 - jx) >= 0.f)) v = 0.f;",
        ("test_conv2d_backward.py", "-k", "conv2d_grads")),
    Bug("softmax_xent: an ignored pixel's channel 0 gradient left unwritten",
        "for (int c = 0; c < C; ++c) g[c * HW] = 0.f;", "for (int c = 1; c < C; ++c) g[c * HW] = 0.f;",
        ("test_loss.py",)),
    Bug("softmax_xent: class weights ignored",
        "const float w = weight ? __ldg(weight + label) : 1.f;", "const float w = 1.f;",
        ("test_loss.py", "-k", "class_weights")),
    Bug("confusion histogram: barrier after zeroing dropped",
        "local[i] = 0;\n    __syncthreads();\n", "local[i] = 0;\n",
        ("test_metrics.py", "-k", "confusion_matrix")),
    Bug("sgd: weight decay applied to the gradient instead of the weight",
        "fmaf(weight_decay, wi, __ldg(g + i))", "fmaf(weight_decay, __ldg(g + i), wi)",
        ("test_sgd.py",)),
    Bug("bias_grad: tree reduction stops one level early",
        "for (int stride = kBiasGradThreads / 2; stride > 0; stride /= 2)",
        "for (int stride = kBiasGradThreads / 2; stride > 1; stride /= 2)",
        ("test_bias_grad.py",)),
    Bug("block_sum: grid-stride loop steps one block",
        "i < n; i += gridDim.x * blockDim.x) v += x[i];", "i < n; i += blockDim.x) v += x[i];",
        ("test_emulator.py", "-k", "block_reduction")),
    # ---- launchers
    Bug("max_pool2d launcher: grid rounds down",
        "dim3(unsigned(ceil_div((long long)total, (long long)kPoolThreads)))",
        "dim3(unsigned((long long)total / kPoolThreads))",
        ("test_pool.py", "-k", "matches_torch")),
    Bug("score_crop_add launcher: class groups round down",
        "unsigned(ceil_div(g.K, kScoreClasses))", "unsigned(g.K / kScoreClasses)",
        ("test_crop.py", "-k", "test_score_crop_add")),
    Bug("bias_grad launcher: one block short",
        "bias_grad<false>, dim3(K)", "bias_grad<false>, dim3(K - 1)",
        ("test_bias_grad.py",)),
    # ---- Python
    Bug("max_pool2d: ceil_mode defaults to False",
        'ceil_mode=True, return_indices=False):\n    """== F.max_pool2d',
        'ceil_mode=False, return_indices=False):\n    """== F.max_pool2d',
        ("test_pool.py",)),
    Bug("softmax_cross_entropy: ignore_index defaults to 254",
        "ignore_index=255, normalize=False, weight=None, divisor=None):\n    \"\"\"FCN's loss and its gradient",
        "ignore_index=254, normalize=False, weight=None, divisor=None):\n    \"\"\"FCN's loss and its gradient",
        ("test_loss.py",)),
    Bug("bilinear_weights: the even kernels' center used for odd ones",
        "center = factor - 1 if k % 2 == 1 else factor - 0.5", "center = factor - 0.5",
        ("test_upsample.py", "-k", "bilinear_weights")),
    Bug("metrics: mean IU counts a class absent from both maps as 0",
        '"mean_iu": float(np.nanmean(iu)),', '"mean_iu": float(np.mean(np.nan_to_num(iu))),',
        ("test_metrics.py",)),
    Bug("fcn_cuda.torch.score_crop_add: up's gradient scaled like feat's",
        "return grad, dfeat, dw, db if has_bias else None, None, None",
        "return grad * scale, dfeat, dw, db if has_bias else None, None, None",
        ("test_crop_backward.py", "-k", "score_crop_add_backward")),
    Bug("allocations no longer poisoned in tests",
        "        if _POISON:\n", "        if False:\n",
        ("test_allocations.py",)),
]


# setup.py build_ext --inplace, less the compile of csrc/bindings.cpp when FCN_MUTATIONS_KEEP_BINDINGS=1 and
# its object exists (distutils compiles an extension's sources whenever it links).
BUILD = """
import os, runpy, sys
import setuptools  # noqa: F401  (makes distutils setuptools' copy)
from distutils import unixccompiler

plain = unixccompiler.UnixCCompiler._compile


def _compile(self, obj, src, *args, **kwargs):
    if os.environ["FCN_MUTATIONS_KEEP_BINDINGS"] == "1" and src.endswith("bindings.cpp") and os.path.exists(obj):
        return
    plain(self, obj, src, *args, **kwargs)


unixccompiler.UnixCCompiler._compile = _compile
sys.argv = ["setup.py", "-q", "build_ext", "--inplace"]
runpy.run_path("setup.py", run_name="__main__")
"""


def library_files(root):
    for top in LIBRARY:
        for p in sorted((root / top).rglob("*")):
            if p.suffix in SOURCE_SUFFIXES and p.is_file():
                yield p


def locate(bug, root):
    """The one library file holding bug.old; raises naming the bug otherwise."""
    hits = [(p, p.read_text().count(bug.old)) for p in library_files(root)]
    hits = [(p, k) for p, k in hits if k]
    if sum(k for _, k in hits) != 1:
        where = ", ".join(f"{p.relative_to(root)} x{k}" for p, k in hits) or "nowhere"
        raise SystemExit(f"bug {bug.name!r}: its text must occur exactly once in {'/, '.join(LIBRARY)}/, "
                         f"found {where}; update tests/mutations.py")
    return hits[0][0]


def pytest_args(bug, root):
    """bug.tests with each test file name replaced by its path under tests/."""
    args = []
    for a in bug.tests:
        name, sep, rest = a.partition("::")
        if name.endswith(".py"):
            found = sorted((root / "tests").rglob(name))
            if len(found) != 1:
                raise SystemExit(f"bug {bug.name!r}: test file {name} found {len(found)} times under tests/")
            a = str(found[0].relative_to(root)) + sep + rest
        args.append(a)
    return args


def tree_files():
    """The working tree's files as git sees them: tracked and untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def includes(path, csrc):
    """The csrc files `path` includes, transitively (quoted includes only)."""
    seen, todo = set(), [path]
    while todo:
        p = todo.pop()
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', p.read_text(), re.M):
            for base in (p.parent, csrc):
                q = (base / name).resolve()
                if q.is_file() and q not in seen:
                    seen.add(q)
                    todo.append(q)
                    break
    return seen


class Scratch:
    """A copy of the working tree with the host extension built, where one bug at a time is planted."""

    def __init__(self, where):
        self.root = Path(where) / "tree"
        for f in tree_files():
            dst = self.root / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst)
        for so in (ROOT / "fcn_cuda").glob("_host.*.so"):
            shutil.copy2(so, self.root / "fcn_cuda" / so.name)
        if (ROOT / "build").is_dir():  # setuptools' own copy of the extension, and the object cache
            shutil.copytree(ROOT / "build", self.root / "build",
                            ignore=shutil.ignore_patterns("_cuda*", "ptxas*", "_host_asan*", "_host_tsan*"))
        self.env = dict(os.environ, FCN_CUDA_NO_CUDA="1", FCN_CUDA_BACKEND="host")
        self.env.pop("FCN_CUDA_SANITIZE", None)
        self.build()  # a no-op when the copied objects are current; else the whole host build, once
        self.pristine = Path(where) / "pristine"
        shutil.copytree(self.root / "fcn_cuda", self.pristine / "fcn_cuda",
                        ignore=shutil.ignore_patterns("*.py", "__pycache__", "data", "weights"))
        shutil.copytree(self.root / "build", self.pristine / "build", ignore=shutil.ignore_patterns("ptxas*"))

    def build(self, keep_bindings=False):
        """setup.py build_ext --inplace; with keep_bindings, csrc/bindings.cpp's object (the slowest to
        compile) is reused: right when the changed file is not among those bindings.cpp includes."""
        env = dict(self.env, FCN_MUTATIONS_KEEP_BINDINGS="1" if keep_bindings else "0")
        proc = subprocess.run([sys.executable, "-c", BUILD], cwd=self.root, env=env, capture_output=True, text=True)
        return proc.returncode == 0, proc.stdout + proc.stderr

    def objects(self):
        """(object file, its source) of the host build's object cache."""
        csrc = self.root / "csrc"
        for objdir in (self.root / "build").glob("_host-*"):
            for obj in objdir.glob("*.o"):
                src = next((p for p in (csrc / "ops" / obj.stem, csrc / "emu" / obj.stem) if p.exists()), None)
                if src is not None:
                    yield obj, src

    def rebuild_after(self, changed):
        """Rebuild the host extension after `changed` (a csrc file) was edited: the objects whose
        sources do not include it are marked current, the others are compiled again."""
        csrc = self.root / "csrc"
        later = time.time() + 5
        for obj, src in self.objects():
            if changed.resolve() == src.resolve() or changed.resolve() in includes(src, csrc):
                obj.unlink()
            else:
                os.utime(obj, (later, later))
        return self.build(keep_bindings=changed.resolve() not in includes(csrc / "bindings.cpp", csrc))

    def restore_build(self):
        """The host extension and object cache as they were before any bug."""
        for so in (self.pristine / "fcn_cuda").glob("_host.*.so"):
            shutil.copy2(so, self.root / "fcn_cuda" / so.name)
        shutil.rmtree(self.root / "build")
        shutil.copytree(self.pristine / "build", self.root / "build")

    def run(self, bug):
        path = locate(bug, self.root)
        original = path.read_text()
        path.write_text(original.replace(bug.old, bug.new, 1))
        started = time.time()
        try:
            if path.suffix != ".py":
                ok, log = self.rebuild_after(path)
                if not ok:
                    return "does not build", log[-2000:], time.time() - started
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rf",
                   *pytest_args(bug, self.root)]
            proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=bug.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # pytest and whatever it started
                proc.communicate()
                return "time limit", "", time.time() - started
            failed = re.findall(r"^FAILED (.+?)(?: - .*)?$", out, re.M)
            if proc.returncode == 1 and failed:
                return "caught", failed[0], time.time() - started
            if proc.returncode == 0:
                return "NOT CAUGHT", "", time.time() - started
            return f"pytest exit {proc.returncode}", out[-2000:], time.time() - started
        finally:
            path.write_text(original)
            if path.suffix != ".py":
                self.restore_build()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only the bugs whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the bugs and their tests, run nothing")
    args = ap.parse_args(argv)
    bugs = [b for b in BUGS if args.k.lower() in b.name.lower()]
    if not bugs:
        raise SystemExit(f"no bug's name contains {args.k!r}")
    for b in bugs:  # every entry is checked before anything runs
        locate(b, ROOT)
        pytest_args(b, ROOT)
    if args.list:
        for b in bugs:
            print(f"{b.name}: {' '.join(pytest_args(b, ROOT))}")
        return 0
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcn-mutations-") as where:
        scratch = Scratch(where)
        for b in bugs:
            verdict, detail, seconds = scratch.run(b)
            rows.append((b.name, verdict, detail if verdict == "caught" else "", seconds))
            print(f"{verdict:>14}  {seconds:6.1f} s  {b.name}  {detail if verdict == 'caught' else ''}", flush=True)
            if verdict != "caught" and detail:
                print(detail, flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'bug':<{width}} | caught by | seconds |\n|{'-' * (width + 2)}|---|---|")
    for name, verdict, test, seconds in rows:
        print(f"| {name:<{width}} | {test if verdict == 'caught' else '**' + verdict + '**'} | {seconds:.0f} |")
    missed = [r for r in rows if r[1] != "caught"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} caught in {time.time() - started:.0f} s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
