#include "kernels/scan.cuh"
#include "ops/launchers.h"

namespace fcn {

int scan_workspace(int n) {
    if (n <= kScanTile) return 0;
    const int runs = ceil_div(n, kScanItems);
    return runs + scan_workspace(runs);
}

void launch_exclusive_scan(int* data, int n, int* workspace, int* total, cudaStream_t stream) {
    if (n <= kScanTile) {
        launch("scan_block", scan_block, dim3(1), dim3(kScanThreads), 0, stream, data, n, total);
        return;
    }
    const int runs = ceil_div(n, kScanItems);
    const dim3 grid(ceil_div(runs, kScanThreads));
    launch("scan_runs", scan_runs, grid, dim3(kScanThreads), 0, stream, data, n, workspace);
    launch_exclusive_scan(workspace, runs, workspace + runs, total, stream);
    launch("scan_runs_apply", scan_runs_apply, grid, dim3(kScanThreads), 0, stream, data, n,
           workspace);
}

}  // namespace fcn
