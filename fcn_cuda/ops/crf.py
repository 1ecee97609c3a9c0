"""The dense CRF's kernels (csrc/kernels/crf.cuh): each term's permutohedral
lattice built on the device (or its exact filter, the naive rung), and the
mean-field iterations through them. fcn_cuda.crf.dense_crf checks the
arguments and puts the terms together."""

import numpy as np

from .. import _validate as V

__all__ = ["Lattice", "ExactFilter", "mean_field", "check_indexing", "key_bits"]


def check_indexing(h, w, c, v, lattices):
    """Refuses sizes whose thread counts or array indices, all ints in the kernels, would pass 2^31: the N x V
    rows, and for each (name, d) lattice its (d+1)(N+1) entries, their V-wide blur rows and the (d+1) x
    vertices neighbour threads (a lattice has at most as many vertices as entries)."""
    limit = V.INT32_LIMIT - 255  # thread counts are rounded up to whole blocks of 256
    n = h * w
    if n * v > limit:
        raise ValueError(f"{h} x {w} pixels x {v} channels is beyond 32-bit indexing")
    for name, d in lattices:
        entries = (d + 1) * (n + 1)
        if max((entries + 1) * v, (d + 1) * entries) > limit:
            raise ValueError(f"the {name} lattice of {h} x {w} pixels with {c} classes is beyond 32-bit indexing")


def key_bits(be, name, d, h, w, sxy, srgb):
    """The bits of a lattice key for term `name` (d = 2: gaussian, 5:
    bilateral) over an h x w image, or ValueError where its coordinates
    exceed the 16 bits pydensecrf keeps them in."""
    bits, fits_int16 = be.ext.crf_key_bits(d, h, w, sxy, srgb)
    if not fits_int16 or bits > 64:
        raise ValueError(f"{name}_sxy = {sxy:g}" + (f" and {name}_srgb = {srgb:g}" if d == 5 else "") +
                         f" are too small for a {h} x {w} image: the lattice coordinates exceed the 16 bits "
                         "pydensecrf keeps them in")
    return bits


def mean_field(be, probs, filters, iterations, v):
    """Q (C x H x W) after `iterations` mean-field steps from the unary
    -log clip(probs), each step one message per (filter, compat) term and a
    softmax; probs' rows padded to v channels."""
    ext, s = be.ext, be.stream()
    c, h, w = probs.shape
    n = h * w
    t0, q, t = (be.empty((n, v)) for _ in range(3))
    out = be.empty((c, h, w))
    ext.crf_unary(be.ptr(probs), n, c, v, be.ptr(t0), be.ptr(q), s)
    m = max((f.vertices for f, _ in filters), default=0)  # the lattices' blur buffers, shared
    values = [be.empty(((m + 1) * v,)) for _ in range(2)] if m else None
    if iterations == 0:
        ext.crf_softmax(be.ptr(t0), n, c, v, 0, be.ptr(out), s)
    for i in range(iterations):
        src = t0
        for f, compat in filters:
            f.message(q, c, v, float(compat), src, t, values)
            src = t
        last = i == iterations - 1
        ext.crf_softmax(be.ptr(src), n, c, v, be.ptr(q), be.ptr(out) if last else 0, s)
    return out


class Lattice:
    """One term's permutohedral lattice over an image, built on the device:
    points and keys, a stable sort, vertices numbered in key order, the
    splat and slice tables, the neighbours along each axis and the
    normaliser (csrc/kernels/crf.cuh). Reading the vertex count back is the
    one wait on the device."""

    def __init__(self, be, img, d, sxy, srgb, bits, padding=None):
        ext, s = be.ext, be.stream()
        h, w = img.shape[:2]
        self.be, self.d, self.n = be, d, h * w
        # pydensecrf's padding point (crf.cuh, crf_lattice_points), present when N % 4 != 0; padding=True or
        # False forces it in or out, which tests do to show that the rule matters.
        self.p = self.n + (self.n % 4 != 0 if padding is None else bool(padding))
        term = ext.CrfTermShape(d, h, w, self.p, sxy, srgb)
        e = (d + 1) * self.p
        bary = be.empty((e,))
        keys, entries = be.empty((e,), np.uint64), be.empty((e,), np.int32)
        ext.crf_lattice_points(term, be.ptr(img), be.ptr(bary), be.ptr(keys), be.ptr(entries), s)
        keys_alt, entries_alt = be.empty((e,), np.uint64), be.empty((e,), np.int32)
        ws = be.empty((max(ext.sort_pairs_workspace(e), ext.scan_workspace(e)),), np.int32)  # sort, then count
        if ext.sort_pairs(be.ptr(keys), be.ptr(entries), be.ptr(keys_alt), be.ptr(entries_alt), be.ptr(ws), e, bits, s):
            keys, entries = keys_alt, entries_alt
        first, count = be.empty((e,), np.int32), be.empty((1,), np.int32)
        ext.crf_vertex_count(be.ptr(keys), e, be.ptr(first), be.ptr(ws), be.ptr(count), s)
        self.vertices = m = int(be.to_numpy(count)[0])
        self.bary = bary
        self.vertex_start, vertex_keys = be.empty((m + 1,), np.int32), be.empty((m,), np.uint64)
        self.vertex_of, self.splat_pixel = be.empty((e,), np.int32), be.empty((e,), np.int32)
        self.splat_weight = be.empty((e,))
        self.neighbours = be.empty((d + 1, m, 2), np.int32)
        ext.crf_lattice_tables(term, be.ptr(keys), be.ptr(entries), be.ptr(first), m, be.ptr(bary),
                               be.ptr(self.vertex_start), be.ptr(vertex_keys), be.ptr(self.vertex_of),
                               be.ptr(self.splat_pixel), be.ptr(self.splat_weight), be.ptr(self.neighbours), s)
        # The tables' addresses: the arrays above live as long as self, and so as long as the view.
        self.view = ext.CrfLatticeView(term, m, be.ptr(bary), be.ptr(self.vertex_of), be.ptr(self.vertex_start),
                                       be.ptr(self.splat_pixel), be.ptr(self.splat_weight), be.ptr(self.neighbours))
        self.norm = be.empty((self.n,))
        a, b = be.empty((m + 1,)), be.empty((m + 1,))
        ext.crf_lattice_norm(self.view, be.ptr(a), be.ptr(b), be.ptr(self.norm), s)

    def message(self, q, c, v, compat, t_in, t_out, values):
        be = self.be
        be.ext.crf_lattice_message(self.view, be.ptr(self.norm), be.ptr(q), v, compat, be.ptr(values[0]),
                                   be.ptr(values[1]), be.ptr(t_in), be.ptr(t_out), be.stream())


class ExactFilter:
    """One term filtered exactly (the naive rung): the features and the normaliser, then O(N^2) per message."""

    def __init__(self, be, img, d, sxy, srgb):
        h, w = img.shape[:2]
        self.be, self.d, self.n, self.vertices = be, d, h * w, 0
        self.f, self.norm = be.empty((self.n, d)), be.empty((self.n,))
        be.ext.crf_naive_setup(be.ptr(img), h, w, d, sxy, srgb, be.ptr(self.f), be.ptr(self.norm), be.stream())

    def message(self, q, c, v, compat, t_in, t_out, values):
        be = self.be
        be.ext.crf_naive_message(be.ptr(self.f), be.ptr(self.norm), self.d, self.n, be.ptr(q), c, v, compat,
                                 be.ptr(t_in), be.ptr(t_out), be.stream())
