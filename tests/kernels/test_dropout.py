"""dropout and its Philox4x32-10 generator: Random123's known answers, a NumPy
twin of the generator for the masks, their statistics, the backward, and
the counters of a share of the batch."""

import numpy as np
import pytest

from fcn_cuda import ops

from _util import assert_each_raises, dev, foreign_array, randn, same_bits, to_numpy

# The API allocates its outputs and workspaces: each is poisoned in every test (conftest.py).
pytestmark = pytest.mark.kernels


# Random123's known-answer vectors for Philox4x32-10 (kat_vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


def test_philox_known_answers(be):
    ctr = np.array([c for c, _, _ in KAT], np.uint32)
    key = np.array([k for _, k, _ in KAT], np.uint32)
    out = to_numpy(ops.philox4x32_10(*dev(be, ctr, key)))
    np.testing.assert_array_equal(out, np.array([r for _, _, r in KAT], np.uint32))


def philox_numpy(ctr, k0, k1):
    """NumPy twin of dropout.cuh's philox4x32_10: ctr n x 4 uint32 -> n x 4."""
    c = [ctr[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    mask = np.uint64(0xffffffff)
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    return np.stack(c, 1).astype(np.uint32)


def test_philox_numpy_twin_matches_kat():
    for ctr, key, expect in KAT:
        assert tuple(philox_numpy(np.array([ctr], np.uint32), *key)[0]) == expect


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 1, 1, 1), (2, 4096, 1, 1)], ids=str)
@pytest.mark.parametrize("p", [0.5, 0.1])
def test_dropout_mask_is_philox(be, rng, shape, p):
    x = randn(rng, *shape)
    seed, step = 1234, 7
    y = to_numpy(ops.dropout(be.xp.asarray(x), p, seed, step))
    count = x.size
    words = philox_numpy(np.stack([np.arange(-(-count // 4), dtype=np.uint32)] + [np.zeros(-(-count // 4),
                         np.uint32)] * 3, 1), seed, step).ravel()[:count]
    keep = (words >= np.uint32(int(p * 2**32))).reshape(shape)
    np.testing.assert_array_equal(y, np.where(keep, x * np.float32(1 / (1 - p)), np.float32(0)))


def test_dropout_statistics_determinism_backward(be, rng):
    x = be.xp.ones((4, 64, 25, 25), dtype=np.float32)  # 160000 elements
    for p in (0.5, 0.1):
        y = to_numpy(ops.dropout(x, p, seed=3, step=11))
        kept = (y != 0).mean()
        sigma = np.sqrt(p * (1 - p) / y.size)
        assert abs(kept - (1 - p)) < 5 * sigma, (p, kept)
        np.testing.assert_allclose(y[y != 0], np.float32(1 / (1 - p)))
        assert same_bits(y, ops.dropout(x, p, seed=3, step=11))
        assert (to_numpy(ops.dropout(x, p, seed=3, step=12)) != y).any()
        assert (to_numpy(ops.dropout(x, p, seed=4, step=11)) != y).any()
        g = randn(rng, *x.shape)
        gx = to_numpy(ops.dropout_backward(be.xp.asarray(g), p, 3, 11))
        np.testing.assert_array_equal(gx, np.where(y != 0, g * np.float32(1 / (1 - p)), np.float32(0)))
    np.testing.assert_array_equal(to_numpy(ops.dropout(x, 0.0, 0, 0)), to_numpy(x))


@pytest.mark.parametrize("shape", [(3, 5, 3, 7), (4, 2, 1, 1), (2, 8, 4, 4)], ids=str)
def test_dropout_of_a_share_of_the_batch_draws_the_batch_masks(be, rng, shape):
    """offset = k * (elements of one image) keys images k.. of x by their places
    in the whole batch, for per-image sizes that are and are not multiples of 4
    (x[k:]'s first element then sits mid-counter)."""
    x = randn(rng, *shape)
    whole = to_numpy(ops.dropout(be.xp.asarray(x), 0.5, 21, 8))
    grad = to_numpy(ops.dropout_backward(be.xp.asarray(x), 0.5, 21, 8))
    per_image = x[0].size
    for k in range(1, shape[0]):
        for first, last in ((k, shape[0]), (k - 1, k)):
            share = be.xp.asarray(np.ascontiguousarray(x[first:last]))
            np.testing.assert_array_equal(to_numpy(ops.dropout(share, 0.5, 21, 8, offset=first * per_image)),
                                          whole[first:last])
            np.testing.assert_array_equal(
                to_numpy(ops.dropout_backward(share, 0.5, 21, 8, offset=first * per_image)), grad[first:last])


@pytest.mark.parametrize("offset", [2**34 + 5, 2**40 - 3, 2**62], ids=hex)
def test_dropout_counters_beyond_32_bits_are_philox(be, rng, offset):
    """The counter's second word carries g // 4 // 2^32: masks past 2^34 elements (a large global batch)."""
    x = randn(rng, 3, 11)
    y = to_numpy(ops.dropout(be.xp.asarray(x), 0.5, 77, 3, offset=offset))
    g = offset + np.arange(x.size, dtype=np.uint64)
    j = g // np.uint64(4)
    ctr = np.stack([(j & np.uint64(0xffffffff)).astype(np.uint32), (j >> np.uint64(32)).astype(np.uint32),
                    np.zeros_like(j, np.uint32), np.zeros_like(j, np.uint32)], 1)
    words = philox_numpy(ctr, 77, 3)[np.arange(x.size), (g % np.uint64(4)).astype(np.int64)]
    keep = (words >= np.uint32(2**31)).reshape(x.shape)
    np.testing.assert_array_equal(y, np.where(keep, x * np.float32(2), np.float32(0)))


@pytest.mark.parametrize("bad", [-1, 2**62 + 1, 1.5])
def test_dropout_rejects_bad_offsets(be, bad):
    x = be.xp.ones((2, 3), np.float32)
    with pytest.raises(TypeError if isinstance(bad, float) else ValueError, match="offset"):
        ops.dropout(x, 0.5, 1, 2, offset=bad)


def test_bad_input(be, rng):
    x = be.xp.asarray(randn(rng, 2, 3, 7, 5))
    do = lambda **kw: ops.dropout(**{"x": x, "p": 0.5, "seed": 1, "step": 2, **kw})
    assert_each_raises((do,), [
        (lambda: do(p=1.0), ValueError, "p must be in"),
        (lambda: do(p=-0.1), ValueError, "p must be in"),
        (lambda: do(p="0.5"), TypeError, "p must be a real"),
        (lambda: do(seed=-1), ValueError, "seed"),
        (lambda: do(seed=2**32), ValueError, "seed"),
        (lambda: do(step=2**32), ValueError, "step"),
        (lambda: do(step=1.5), TypeError, "step"),
        (lambda: do(x=x.astype(np.float64)), TypeError, "x must be float32"),
        (lambda: ops.dropout_backward(x[:, :, ::2], 0.5, 1, 2), ValueError, "grad_y must be C-contiguous"),
        (lambda: ops.philox4x32_10(*dev(be, np.zeros((2, 3), np.uint32), np.zeros((2, 2), np.uint32))),
         ValueError, "counters must be n x 4"),
        (lambda: ops.philox4x32_10(*dev(be, np.zeros((2, 4), np.int32), np.zeros((2, 2), np.uint32))),
         TypeError, "counters must be uint32"),
    ])


def test_other_backend_refused(be, rng):
    with pytest.raises(TypeError, match="x"):
        ops.dropout(foreign_array(be, rng, (2, 3, 4, 4)), 0.5, 1, 2)
