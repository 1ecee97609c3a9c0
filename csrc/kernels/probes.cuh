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
#pragma once
#include "common.cuh"

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

}  // namespace fcn
