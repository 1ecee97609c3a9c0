"""Builds fcn_cuda's two extensions from the one kernel source in csrc/.

* ``fcn_cuda._host``: g++ -DFCN_EMU, csrc/ops/*.cu compiled as C++ against the
  host emulation in csrc/emu. Always built.
* ``fcn_cuda._cuda``: nvcc for csrc/ops/*.cu, g++ for the binding, linked
  with the static CUDA runtime. Built whenever nvcc is found (CUDA_HOME or
  PATH), whether or not a GPU is present: that build is how a machine without
  a GPU proves the kernels are valid CUDA.

Environment:
  FCN_CUDA_ARCH      compute capabilities, e.g. "90", "90a", "80;90"
                     (default: the visible GPUs', else 90; 90 is built as 90a,
                     the target of the wgmma kernels: see default_archs)
  FCN_CUDA_SANITIZE  1: build only fcn_cuda._host_asan, the emulator with
                     ASan + UBSan; thread: build only fcn_cuda._host_tsan,
                     the emulator with ThreadSanitizer (docs/emulator.md
                     says how to run them)
  FCN_CUDA_NO_CUDA   1: skip the nvcc build even if nvcc is present
  FCN_CUDA_JOBS      parallel compile jobs (default: the CPU count)

nvcc's ptxas resource report (registers, shared memory, spills per kernel)
is written to build/ptxas/<file>.txt and gathered in build/ptxas_report.txt;
`pip install -v` prints it too.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
BUILD = ROOT / "build"


def find_nvcc():
    if os.environ.get("FCN_CUDA_NO_CUDA") == "1":
        return None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return Path(home) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    return Path(found).resolve() if found else None


def cuda_home(nvcc):
    """The toolkit root: CUDA_HOME, nvcc's grandparent, or where nvcc says it lives
    (nvcc is sometimes a wrapper script elsewhere on PATH)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return Path(home)
    guess = nvcc.parent.parent
    if (guess / "include" / "cuda_runtime_api.h").exists():
        return guess
    out = subprocess.run([str(nvcc), "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True).stderr
    for line in out.splitlines():
        if "TOP=" in line:
            return Path(line.split("TOP=", 1)[1].strip()).resolve()
    sys.exit(f"cannot find the CUDA toolkit of {nvcc}; set CUDA_HOME")


def default_archs(visible):
    """The arch list when FCN_CUDA_ARCH is unset: the visible GPUs' compute
    capabilities (else 90), with 90 built as 90a. wgmma and setmaxnreg exist
    only in the arch-specific sm_90a target (a plain sm_90 pass rejects
    them, so the wgmma kernels' sm_90 code is a trap), and sm_90a code runs
    every kernel on the one compute capability 9.0 that sm_90 code runs on:
    one cubin for it, so the driver has no choice to make between them. The
    PTX stays plain compute_90 (cuda_extension), for later GPUs to JIT."""
    archs = sorted(set(visible), key=lambda a: int(a.rstrip("a"))) or ["90"]
    return ";".join("90a" if arch == "90" else arch for arch in archs)


def cuda_archs():
    spec = os.environ.get("FCN_CUDA_ARCH", "").strip()
    if not spec:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.split()
            visible = [cap.replace(".", "") for cap in out]
        except (OSError, subprocess.SubprocessError):
            visible = []
        spec = default_archs(visible)
    archs = [a.strip().lower().removeprefix("sm_").removeprefix("compute_") for a in spec.replace(",", ";").split(";")]
    archs = [a for a in archs if a]
    for a in archs:
        if not (a.rstrip("a").isdigit()):
            sys.exit(f"FCN_CUDA_ARCH: {a!r} is not a compute capability such as 90, 90a or 80")
    return archs


def newest_mtime(paths):
    return max(p.stat().st_mtime for p in paths)


def kernel_sources():
    return sorted((CSRC / "ops").glob("*.cu"))


def all_headers():
    return [p for p in CSRC.rglob("*") if p.suffix in {".h", ".cuh", ".cu", ".cpp"}]


def run(cmd, log=None):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        log.write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError("command failed:\n" + " ".join(map(str, cmd)) + "\n" + proc.stdout + proc.stderr)
    return proc.stderr


class BuildExt(build_ext):
    def build_extension(self, ext):
        # Objects are cached per flag set, so a sanitizer build never links
        # objects of an optimized one (or the reverse).
        flags = " ".join(map(str, ext.extra_compile_args + getattr(ext, "nvcc_args", [])))
        tag = hashlib.sha1(flags.encode()).hexdigest()[:10]
        objdir = BUILD / f"{ext.name.split('.')[-1]}-{tag}"
        objdir.mkdir(parents=True, exist_ok=True)
        sources = [Path(s) for s in ext.depends_sources]
        compile_one = self.nvcc_compile if ext.name.endswith("_cuda") else self.gxx_compile
        headers_mtime = newest_mtime(all_headers())
        jobs = int(os.environ.get("FCN_CUDA_JOBS", os.cpu_count() or 1))

        def job(src):
            obj = objdir / (src.name + ".o")
            if obj.exists() and obj.stat().st_mtime > headers_mtime:
                return obj
            compile_one(src, obj, ext)
            return obj

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            ext.extra_objects = list(map(str, pool.map(job, sources))) + ext.extra_objects
        if ext.name.endswith("_cuda"):
            self.gather_ptxas_report()
        # Relink whenever any source changed (setuptools only looks at
        # ext.sources and ext.depends).
        ext.depends = [str(p) for p in all_headers()]
        super().build_extension(ext)

    def gxx_compile(self, src, obj, ext):
        flags = ext.extra_compile_args
        if src.parent.name == "emu":  # the emulator's runtime is not instrumented by TSan (runtime.cpp says why)
            flags = [f for f in flags if f != "-fsanitize=thread"]
        cmd = ["g++", "-x", "c++", "-c", str(src), "-o", str(obj), "-fPIC", *flags]
        cmd += [f"-I{d}" for d in ext.include_dirs]
        run(cmd)

    def nvcc_compile(self, src, obj, ext):
        log_dir = BUILD / "ptxas"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(ext.nvcc), "-c", str(src), "-o", str(obj), *ext.nvcc_args]
        cmd += [f"-I{d}" for d in ext.include_dirs]
        report = run(cmd, log=log_dir / (src.stem + ".txt"))
        if self.verbose:
            print(report)

    def gather_ptxas_report(self):
        parts = sorted((BUILD / "ptxas").glob("*.txt"))
        text = "".join(f"==== {p.stem}\n{p.read_text()}\n" for p in parts)
        (BUILD / "ptxas_report.txt").write_text(text)


def sanitizer():
    """FCN_CUDA_SANITIZE: None (the optimized build), "address" (1) or "thread"."""
    value = os.environ.get("FCN_CUDA_SANITIZE", "").strip()
    if value in ("", "0"):
        return None
    if value not in ("1", "thread"):
        sys.exit(f"FCN_CUDA_SANITIZE must be 1 (ASan + UBSan) or thread (ThreadSanitizer), got {value!r}")
    return "address" if value == "1" else "thread"


def host_extension():
    sanitize = sanitizer()
    if sanitize == "address":
        flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                 "-fno-sanitize-recover=undefined", "-DFCN_EMU_ASAN"]
        link = ["-fsanitize=address,undefined"]
    elif sanitize == "thread":
        flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=thread", "-DFCN_EMU_TSAN"]
        link = ["-fsanitize=thread"]
    else:
        # -mtls-dialect=gnu2: cheaper thread-local access (threadIdx, __shared__)
        # inside a dlopen'ed extension.
        flags = ["-O3", "-march=native", "-mtls-dialect=gnu2"]
        link = []
    flags += ["-std=c++17", "-DFCN_EMU", "-Wall", "-Wno-unknown-pragmas", "-fvisibility=hidden"]
    import pybind11

    # A sanitizer build is a module of its own, so it never replaces the
    # optimized one; the backend loads it when FCN_CUDA_SANITIZE is set at run time.
    name = {None: "_host", "address": "_host_asan", "thread": "_host_tsan"}[sanitize]
    ext = Extension(
        f"fcn_cuda.{name}",
        sources=["csrc/bindings.cpp"],
        include_dirs=[str(CSRC), pybind11.get_include()],
        extra_compile_args=flags + [f"-DFCN_MODULE_NAME={name}"],
        extra_link_args=link,
        language="c++",
    )
    ext.depends_sources = [*kernel_sources(), *sorted((CSRC / "emu").glob("*.cpp"))]
    return ext


def cuda_extension(nvcc):
    home = cuda_home(nvcc)
    archs = cuda_archs()
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    # PTX for the newest arch lets a later GPU JIT the kernels; an
    # arch-specific target (90a) runs on its own compute capability only, so
    # the PTX is always the plain one (compute_90 for 90a).
    newest = max((a.removesuffix("a") for a in archs), key=int)
    gencode += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    import pybind11

    ext = Extension(
        "fcn_cuda._cuda",
        sources=["csrc/bindings.cpp"],
        include_dirs=[str(CSRC), pybind11.get_include(), str(home / "include")],
        library_dirs=[str(home / "lib64"), str(home / "lib")],
        libraries=["cudart_static", "rt", "dl", "pthread"],
        extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-DFCN_MODULE_NAME=_cuda"],
        language="c++",
    )
    ext.nvcc = nvcc
    ext.nvcc_args = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xptxas", "-v", "-lineinfo",
                     "--expt-relaxed-constexpr", *gencode]
    ext.depends_sources = kernel_sources()
    return ext


def extensions():
    exts = [host_extension()]
    nvcc = find_nvcc()
    if nvcc is not None and sanitizer() is None:
        exts.append(cuda_extension(nvcc))
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
