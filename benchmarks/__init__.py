"""fcn_cuda's benchmarks against cuDNN / PyTorch.

    python -m benchmarks [--quick] [--only SUBSTRING ...] [--out DIR]

measures every FCN-8s layer, the surrounding kernels and the whole network
against PyTorch in one run (suite.py, timing.py), writes
benchmarks/results/<device>-<yyyymmdd>.json / .md and two plots (report.py)
and regenerates the tables of docs/performance.md. On the host backend the
same runner times the CUDA emulation against PyTorch on the CPU, and says so
in every output.

python -m benchmarks.op OP [--variant V ...] [--shape ...] checks every
variant of one op against PyTorch in float64 and times them side by side
(op.py). The rows of both are built by op in cases/. emulator.py beside
them is a standalone script about the emulator's own speed.
"""
