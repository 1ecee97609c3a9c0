"""fcn_cuda.ops.sort.sort_pairs, the stable radix sort of csrc/kernels/sort.cuh (the dense CRF's lattice sorts its
vertex keys with it), against NumPy's stable argsort; and its bad inputs."""

import numpy as np
import pytest

from fcn_cuda.ops.sort import sort_pairs

from _util import to_numpy

# sort_pairs allocates its outputs, the ping-pong buffers and the workspace through Backend.empty: each is
# poisoned (conftest.py), so a pair the sort fails to place shows up.
pytestmark = pytest.mark.kernels


def keys_with_ties(n, bits, seed):
    """n uint64 keys of `bits` bits, every bit position used, 30% of them equal to the first (ties show
    whether the sort is stable)."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    keys &= np.uint64(2**bits - 1) if bits < 64 else np.uint64(2**64 - 1)
    keys[rng.random(n) < 0.3] = keys[0]
    return keys


# n: one key; under one chunk of 32; chunks that do not fill a block; more counts than one scan block holds
# (16 digits x 4688 chunks), so the scan between passes recurses. bits: a partial last digit (9, 13), 64.
@pytest.mark.parametrize("n,bits", [(1, 4), (31, 9), (1000, 13), (5000, 64), (150_001, 20)])
def test_sort_pairs_is_a_stable_sort(be, n, bits):
    keys = keys_with_ties(n, bits, n)
    values = np.arange(n, dtype=np.int32)[::-1].copy()
    k_in, v_in = be.xp.asarray(keys), be.xp.asarray(values)
    k, v = sort_pairs(k_in, v_in, bits)
    order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(to_numpy(k), keys[order])
    np.testing.assert_array_equal(to_numpy(v), values[order])
    np.testing.assert_array_equal(to_numpy(k_in), keys)  # the inputs are only read
    np.testing.assert_array_equal(to_numpy(v_in), values)


def test_sort_pairs_orders_by_the_low_bits_only(be):
    """The bits above `bits` travel with their key: the order is the stable order of keys mod 2^bits."""
    keys = keys_with_ties(777, 64, 5)
    values = np.arange(777, dtype=np.int32)
    k, v = sort_pairs(be.xp.asarray(keys), be.xp.asarray(values), bits=12)
    order = np.argsort(keys & np.uint64(0xFFF), kind="stable")
    np.testing.assert_array_equal(to_numpy(k), keys[order])
    np.testing.assert_array_equal(to_numpy(v), order)


def test_sort_pairs_validates_its_arguments(be):
    keys, values = be.xp.arange(8, dtype=np.uint64), be.xp.arange(8, dtype=np.int32)
    with pytest.raises(TypeError, match="keys must be uint64"):
        sort_pairs(keys.astype(np.int64), values)
    with pytest.raises(TypeError, match="values must be int32"):
        sort_pairs(keys, values.astype(np.int64))
    with pytest.raises(ValueError, match="keys must be 1-D"):
        sort_pairs(keys.reshape(2, 4), values)
    with pytest.raises(ValueError, match="same shape"):
        sort_pairs(keys, values[:7])
    with pytest.raises(ValueError, match="keys is empty"):
        sort_pairs(keys[:0], values[:0])
    with pytest.raises(ValueError, match="bits must be <= 64"):
        sort_pairs(keys, values, bits=65)
    with pytest.raises(ValueError, match="bits must be >= 1"):
        sort_pairs(keys, values, bits=0)
    with pytest.raises(TypeError, match="bits must be an int"):
        sort_pairs(keys, values, bits=8.0)
