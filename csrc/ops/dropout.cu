#include "kernels/dropout.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_dropout(const float* x, float* y, int n, unsigned long long offset, unsigned seed, unsigned step,
                    unsigned threshold, float scale, cudaStream_t stream) {
    // lead + n in 64 bits: it overflows int for n near INT_MAX; the count of vectors fits again.
    const int vectors = int(ceil_div((long long)(offset % 4) + n, 4ll));
    launch("dropout", dropout, dim3(ceil_div(vectors, kDropoutThreads)), dim3(kDropoutThreads), 0, stream, x, y, n,
           offset, seed, step, threshold, scale);
}

void launch_philox_probe(const unsigned* in, unsigned* out, int n, cudaStream_t stream) {
    launch("philox_probe", philox_probe, dim3(ceil_div(n, 256)), dim3(256), 0, stream, in, out, n);
}

}  // namespace fcn
