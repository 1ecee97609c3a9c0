"""fcn_cuda.ops.scan.exclusive_scan, the prefix sum of csrc/kernels/scan.cuh (the radix sort places its keys with it,
the dense CRF numbers its lattice vertices with it), against NumPy's cumsum; and its bad inputs."""

import numpy as np
import pytest

from fcn_cuda.ops.scan import exclusive_scan

from _util import to_numpy

# exclusive_scan allocates its output, total and workspace through Backend.empty: each is poisoned
# (conftest.py), so an element the scan fails to write shows up.
pytestmark = pytest.mark.kernels


# One block scans up to 256 x 16 = 4096 ints: 1, 17 and 4096 take that path alone; 4097 needs one level
# of run sums, 70_000 two (its 4375 run sums exceed a block too).
@pytest.mark.parametrize("n", [1, 17, 4096, 4097, 70_000])
def test_exclusive_scan_matches_cumsum(be, n):
    rng = np.random.default_rng(n)
    counts = rng.integers(0, 1000, n).astype(np.int32)
    counts[rng.random(n) < 0.2] = 0
    counts_d = be.xp.asarray(counts)
    out, total = exclusive_scan(counts_d)
    want = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    np.testing.assert_array_equal(to_numpy(out), want[:-1])
    assert to_numpy(total).tolist() == [want[-1]]
    np.testing.assert_array_equal(to_numpy(counts_d), counts)  # only read


def test_exclusive_scan_reaches_the_int32_limit(be):
    """Counts whose total is exactly INT32_MAX: every partial sum fits, and the last one is that."""
    counts = np.full(5000, 429_496, np.int32)
    counts[-1] = 2**31 - 1 - 429_496 * 4999
    out, total = exclusive_scan(be.xp.asarray(counts))
    assert int(to_numpy(out)[-1]) == 429_496 * 4999
    assert to_numpy(total).tolist() == [2**31 - 1]


def test_exclusive_scan_validates_its_arguments(be):
    counts = be.xp.ones(8, np.int32)
    with pytest.raises(TypeError, match="counts must be int32"):
        exclusive_scan(counts.astype(np.int64))
    with pytest.raises(ValueError, match="counts must be 1-D"):
        exclusive_scan(counts.reshape(2, 4))
    with pytest.raises(ValueError, match="counts is empty"):
        exclusive_scan(counts[:0])
    negative = counts.copy()
    negative[3] = -1
    with pytest.raises(ValueError, match="counts must be >= 0, got -1"):
        exclusive_scan(negative)
    with pytest.raises(ValueError, match="sum to 4294967294"):
        exclusive_scan(be.xp.array([2**31 - 1, 2**31 - 1], np.int32))
