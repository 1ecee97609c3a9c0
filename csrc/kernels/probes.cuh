// probes.cuh: small kernels that pin down the execution model itself.
//
// They exist to be tested (tests/kernels/test_emulator.py): each one gives the right
// answer only if barriers, shuffles, atomics, shared memory and indexing
// behave as CUDA says, or fails in a way the emulator must report. They run
// unchanged on a GPU, where the same tests compare the two builds.
//   barrier_rotate: rotates a block's values through shared memory; wrong
//     unless __syncthreads really waits.
//   divergent_barrier / early_exit_barrier / missing_lane_shuffle /
//     deadlock_probe: must be reported, never hang.
//   atomics_probe: int add, max and float add from every thread, a CAS loop
//     from the first cas_threads.
//   atomic_sum: one float accumulator hit by every thread; its rounding
//     depends on the order, so it shows whether runs are deterministic.
//   tf32_round: __float_to_tf32 elementwise, to compare with the hardware.
//   index_probe: writes every thread's (threadIdx, blockIdx) for 3-D launches.
//   dynamic_smem_probe: alignment of dynamic shared memory, float4 round trip.
//   out_of_bounds_probe: reads past the end of global, static shared or
//     dynamic shared memory (the ASan build must report each), or loads a
//     misaligned float4 or wmma tile (every build must fault).
//   race_probe: a data race on a __shared__ word within a block, or on a
//     global word between blocks (the TSan build must report each), and the
//     same accesses ordered by a barrier or made atomic (never reported).
//   failing_block_probe: a multi-block launch in which one block fails
//     (a divergent barrier): the launch must end with the error, ordered
//     before what the host does next (the TSan build must report nothing).
//   cp_async_probe, ldmatrix_probe, mma_probe: the Ampere instructions of
//     ptx_sm80.cuh on inputs the tests lay out by hand from the PTX ISA's
//     tables (tests/kernels/test_ptx_sm80.py), and cp.async's misuses.
//   smem_bank_probe: warp-wide shared-memory accesses of a chosen stride
//     and width, for the emulator's bank-conflict counter.
#pragma once
#include "common.cuh"
#include "ptx_sm80.cuh"

namespace fcn {

// One block of n <= 1024 threads; after `rounds` rotations y[t] = x[(t + rounds) % n].
__global__ void barrier_rotate(const float* __restrict__ x, float* __restrict__ y, int rounds) {
    __shared__ float s[1024];
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = x[t];
    for (int r = 0; r < rounds; ++r) {
        __syncthreads();  // every s[] of the previous round is written
        const float v = s[(t + 1) % n];
        __syncthreads();  // every thread has read before anyone overwrites
        s[t] = v;
    }
    y[t] = s[t];
}

// Odd threads wait at a barrier that even threads never reach.
__global__ void divergent_barrier(float* y) {
    if (threadIdx.x % 2 == 1) __syncthreads();
    y[threadIdx.x] = 1.f;
}

// Thread 5 leaves while the others wait at a barrier.
__global__ void early_exit_barrier(float* y) {
    if (threadIdx.x == 5) return;
    __syncthreads();
    y[threadIdx.x] = 1.f;
}

// The upper half-warp leaves before a full-mask shuffle.
__global__ void missing_lane_shuffle(float* y) {
    if (threadIdx.x >= 16) return;
    y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

// The lower half-warp waits at a full-mask shuffle for the upper half,
// which waits at a barrier for the lower half: neither can ever go on.
__global__ void deadlock_probe(float* y) {
    float v = float(threadIdx.x);
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else __syncthreads();
    y[threadIdx.x] = v;
}

// Every thread of the grid: counts[v % bins] += 1 (atomicAdd), maximum = max v
// (atomicMax), fsum += 0.5f (float atomicAdd, exact for < 2^24 threads); the
// first cas_threads threads also add 1 to cas_count through an atomicCAS loop.
// On a GPU k contending threads make about k^2 / 2 attempts in all (each
// round one wins, the rest retry): the caller keeps k small there (a few
// thousand), where the emulator, running a block's threads in turn, takes k.
__global__ void atomics_probe(const int* __restrict__ v, int n, int bins, int cas_threads, int* counts,
                              int* maximum, int* cas_count, float* fsum) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&counts[v[i] % bins], 1);
    atomicMax(maximum, v[i]);
    if (i < cas_threads) {
        // The first guess is read atomically too: a plain load would race
        // with the other threads' atomicCAS (the TSan build reports it).
        int old = atomicAdd(cas_count, 0), seen;
        do {
            seen = old;
            old = atomicCAS(cas_count, seen, seen + 1);
        } while (old != seen);
    }
    atomicAdd(fsum, 0.5f);
}

// *out += x[i] for every i, in whatever order the threads arrive.
__global__ void atomic_sum(const float* __restrict__ x, int n, float* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(out, x[i]);
}

__global__ void tf32_round(const float* __restrict__ x, float* __restrict__ y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = nvcuda::wmma::__float_to_tf32(x[i]);
}

// out[6 * g + (0..5)] = threadIdx.xyz, blockIdx.xyz, where g is the thread's
// position in a row-major (block z, y, x, thread z, y, x) enumeration.
__global__ void index_probe(int* out) {
    const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int g = block * (blockDim.x * blockDim.y * blockDim.z) + thread;
    int* o = out + 6 * g;
    o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
    o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
}

// misalignment[0] = address of dynamic shared memory modulo 16; y gets x
// back through shared memory as float4, reversed within the block.
__global__ void dynamic_smem_probe(const float* __restrict__ x, float* __restrict__ y, unsigned* misalignment) {
    FCN_DYNAMIC_SMEM(float, smem);
    const int t = threadIdx.x;
    if (t == 0 && blockIdx.x == 0) misalignment[0] = unsigned(reinterpret_cast<uintptr_t>(smem) % 16);
    float4* s = as_vector<float4>(smem);
    s[t] = as_vector<const float4>(x)[blockIdx.x * blockDim.x + t];
    __syncthreads();
    as_vector<float4>(y)[blockIdx.x * blockDim.x + t] = s[blockDim.x - 1 - t];
}

enum OutOfBounds {
    kGlobalRead = 0,
    kStaticSharedRead = 1,
    kDynamicSharedRead = 2,
    kMisalignedFloat4 = 3,
    kMisalignedWmma = 4
};

// One block of 64 threads (two warps); each reads one element too far in the
// chosen way, or reads from an address that is not aligned enough.
__global__ void out_of_bounds_probe(const float* __restrict__ x, float* __restrict__ y, int n, int kind) {
    __shared__ float s[64];
    __shared__ __align__(32) float tile[4 + 16 * 8];
    FCN_DYNAMIC_SMEM(float, d);  // launched with 64 floats
    const int t = threadIdx.x;
    s[t] = float(t);
    d[t] = float(t);
    __syncthreads();
    float v = 0.f;
    if (kind == kGlobalRead) {
        v = x[n - 63 + t];  // thread 63 reads x[n]
    } else if (kind == kStaticSharedRead) {
        v = s[t + 1];  // thread 63 reads s[64]
    } else if (kind == kDynamicSharedRead) {
        v = d[t + 1];  // thread 63 reads d[64]
    } else if (kind == kMisalignedFloat4) {
        v = as_vector<const float4>(x + 1)->x;  // x + 1 is not 16-byte aligned
    } else {
        // A 16 x 8 TF32 tile from tile + 4: 16 bytes past a 32-byte boundary.
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32,
                               nvcuda::wmma::row_major> a;
        nvcuda::wmma::load_matrix_sync(a, tile + 4, 8);
        v = a.x[0];
    }
    y[t] = v;
}

enum Race { kSharedRace = 0, kGlobalRace = 1, kWarpRace = 2 };

// kSharedRace: one block of 64 threads; thread 0 writes a __shared__ word
//   and thread 33, in the other warp, reads it into y[0], with __syncthreads
//   between the two only when `ordered`.
// kWarpRace: the same between lanes 0 and 1 of one warp, ordered by __syncwarp.
// kGlobalRace: two blocks of 32 threads; thread 0 of each adds 1 to y[0]
//   with a plain read-modify-write, or with atomicAdd when `ordered`.
__global__ void race_probe(float* y, int kind, int ordered) {
    __shared__ float s;
    const int t = threadIdx.x;
    if (kind == kSharedRace) {
        if (t == 0) s = 1.f;
        if (ordered) __syncthreads();
        if (t == 33) y[0] = s;
    } else if (kind == kWarpRace) {
        if (t == 0) s = 1.f;
        if (ordered) __syncwarp();
        if (t == 1) y[0] = s;
    } else if (t == 0) {
        if (ordered) atomicAdd(y, 1.f);
        else y[0] += 1.f;
    }
}

// Every thread writes y[its global index] = 1, but block `fail` (-1: none) meets a divergent
// __syncthreads (its odd threads wait, its even ones write and exit), which the emulator reports;
// the blocks after it are skipped. Undefined behaviour on a GPU: an emulator test only.
__global__ void failing_block_probe(float* y, int fail) {
    if (int(blockIdx.x) == fail && threadIdx.x % 2 == 1) __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = 1.f;
}

// ------------------------------------------------------------ Ampere rung

enum CpAsyncProbe {
    kCpCopy = 0,            // every thread copies `bytes` (src_bytes of them read), wait_all, barrier, read back
    kCpGroups = 1,          // two groups; wait_group 1 settles the first, wait_group 0 the second
    kCpReadEarly = 2,       // an accessor reads a destination before its wait: an error
    kCpGroupEarly = 3,      // after wait_group 1, the second group's destination is read: an error
    kCpLdmatrixEarly = 4,   // ldmatrix reads a row still in flight: an error
    kCpPlainReadEarly = 5,  // a plain C++ read before the wait (ASan: use-after-poison)
    kCpUnwaited = 6,        // thread 0 waits only after the barrier that thread 33 reads behind (TSan: a race)
    kCpOrdered = 7,         // thread 0 waits, then the barrier, then thread 33 reads: ordered
    kCpOverwrite = 8,       // a second cp.async into bytes still in flight: an error
};

// One block of 64 threads; `bytes` = 4, 8 or 16 (cg: the .cg form, 16 only).
// kCpCopy: thread t copies src[t * bytes/4 ...] to s[0][t * bytes/4 ...] with
//   src_bytes read (the rest zero-filled) over a sentinel of -1, and out[i]
//   = s[0][i] for the 64 * bytes/4 floats, read by thread i % 64 (another
//   thread's copy: the wait and the barrier order it).
// kCpGroups: thread t copies 16 bytes src[4t..] -> s[0][4t..] (group 0) and
//   src[256 + 4t..] -> s[1][4t..] (group 1); out[0..255] = s[0], read after
//   wait_group 1, out[256..511] = s[1] after wait_group 0, each thread its own.
__global__ void cp_async_probe(const float* __restrict__ src, float* __restrict__ out, int bytes, int src_bytes,
                               int cg, int mode) {
    __shared__ __align__(16) float s[2][64 * 4];
    const int t = threadIdx.x, per = bytes / 4;
    for (int i = t; i < 2 * 64 * 4; i += 64) s[i / 256][i % 256] = -1.f;
    __syncthreads();
    auto copy = [&](int buf, int at, int from) {
        if (cg) cp_async_cg(&s[buf][at], src + from, src_bytes);
        else if (bytes == 4) cp_async<4>(&s[buf][at], src + from, src_bytes);
        else if (bytes == 8) cp_async<8>(&s[buf][at], src + from, src_bytes);
        else cp_async<16>(&s[buf][at], src + from, src_bytes);
    };
    if (mode == kCpCopy) {
        copy(0, t * per, t * per);
        cp_async_wait_all();
        __syncthreads();
        for (int i = t; i < 64 * per; i += 64) out[i] = s[0][i];
    } else if (mode == kCpGroups || mode == kCpGroupEarly) {
        copy(0, 4 * t, 4 * t);
        cp_async_commit();
        copy(1, 4 * t, 256 + 4 * t);
        cp_async_commit();
        cp_async_wait<1>();
        for (int j = 0; j < 4; ++j) out[4 * t + j] = smem_load(&s[0][4 * t + j]);
        if (mode == kCpGroupEarly) out[256 + 4 * t] = smem_load(&s[1][4 * t]);
        cp_async_wait<0>();
        for (int j = 0; j < 4; ++j) out[256 + 4 * t + j] = smem_load(&s[1][4 * t + j]);
    } else if (mode == kCpReadEarly || mode == kCpPlainReadEarly) {
        copy(0, t * per, t * per);
        cp_async_commit();
        out[t] = mode == kCpReadEarly ? smem_load(&s[0][t * per]) : s[0][t * per];
        cp_async_wait_all();
    } else if (mode == kCpLdmatrixEarly) {
        copy(0, 4 * t, 4 * t);  // 16-byte rows: row t of s[0]
        cp_async_commit();
        if (t < 32) {
            uint32_t r[1];
            ldmatrix<1>(r, &s[0][4 * t]);
            out[t] = float(r[0]);
        }
        cp_async_wait_all();
    } else if (mode == kCpUnwaited || mode == kCpOrdered) {
        if (t == 0) copy(0, 0, 0);
        if (t == 0 && mode == kCpOrdered) cp_async_wait_all();
        __syncthreads();
        if (t == 0 && mode == kCpUnwaited) cp_async_wait_all();
        if (t == 33) out[0] = s[0][0];
    } else if (mode == kCpOverwrite) {
        copy(0, t * per, t * per);
        copy(0, t * per, t * per);
        cp_async_wait_all();
    }
}

// One warp. s holds 128 rows of 8 b16 (16 bytes each) from m: 2 KB, room
// for a 16 x 128-byte tile; lane l gives the address of row rows[l];
// out[4l + i] = register i of lane l after ldmatrix .x{num} {.trans}
// (registers past num: untouched).
__global__ void ldmatrix_probe(const uint16_t* __restrict__ m, const int* __restrict__ rows, uint32_t* out, int num,
                               int trans) {
    __shared__ __align__(16) uint16_t s[128 * 8];
    const int l = threadIdx.x;
    for (int j = l; j < 128 * 8; j += 32) s[j] = m[j];
    __syncwarp();
    const uint16_t* row = &s[8 * rows[l]];
    uint32_t r[4] = {0, 0, 0, 0};
    auto load = [&](auto num_c, auto trans_c) {
        uint32_t q[decltype(num_c)::value];
        ldmatrix<decltype(num_c)::value, decltype(trans_c)::value>(q, row);
        for (int i = 0; i < decltype(num_c)::value; ++i) r[i] = q[i];
    };
    using std::integral_constant;
    if (num == 1 && !trans) load(integral_constant<int, 1>(), integral_constant<bool, false>());
    else if (num == 1) load(integral_constant<int, 1>(), integral_constant<bool, true>());
    else if (num == 2 && !trans) load(integral_constant<int, 2>(), integral_constant<bool, false>());
    else if (num == 2) load(integral_constant<int, 2>(), integral_constant<bool, true>());
    else if (!trans) load(integral_constant<int, 4>(), integral_constant<bool, false>());
    else load(integral_constant<int, 4>(), integral_constant<bool, true>());
    for (int i = 0; i < 4; ++i) out[4 * l + i] = r[i];
}

// One warp: lane l holds a[4l .. 4l+3], b[2l, 2l+1], c[4l .. 4l+3] as its
// fragment registers and writes its D fragment to d[4l .. 4l+3].
// kind 0: mma.m16n8k8 tf32; 1: mma.m16n8k16 bf16.
__global__ void mma_probe(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b, const float* __restrict__ c,
                          float* __restrict__ d, int kind) {
    const int l = threadIdx.x;
    const uint32_t ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    const uint32_t rb[2] = {b[2 * l], b[2 * l + 1]};
    const float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    float rd[4];
    if (kind == 0) mma_m16n8k8_tf32(rd, ra, rb, rc);
    else mma_m16n8k16_bf16(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = rd[i];
}

// One warp: lane l loads (store = 0) or stores (1) the `width`-float vector
// at float index l * stride * width of a 4096-float shared array through
// smem_load / smem_store, `repeat` times; out[l] = the first float it read.
__global__ void smem_bank_probe(float* out, int stride, int width, int store, int repeat) {
    __shared__ __align__(16) float s[4096];
    const int l = threadIdx.x;
    for (int i = l; i < 4096; i += 32) s[i] = float(i);
    __syncwarp();
    const int at = (l * stride * width) % 4096;
    float first = 0.f;
    for (int r = 0; r < repeat; ++r) {
        if (width == 1) {
            if (store) smem_store(&s[at], float(at));
            else first = smem_load(&s[at]);
        } else if (width == 2) {
            float2* p = as_vector<float2>(&s[at]);
            if (store) smem_store(p, make_float2(float(at), 0.f));
            else first = smem_load(p).x;
        } else {
            float4* p = as_vector<float4>(&s[at]);
            if (store) smem_store(p, make_float4(float(at), 0.f, 0.f, 0.f));
            else first = smem_load(p).x;
        }
    }
    out[l] = first;
}

}  // namespace fcn
