// Where a wgmma m64nN fp32 accumulator register lives in the warpgroup's 64 x N tile.
// Register 4*j + 2*h + e of thread (warp, lane) holds row warp*16 + lane/4 + 8*h and column
// 8*j + 2*(lane%4) + e (j < N/8, h and e in {0, 1}).
#pragma once
#include "deepseek_ext/common.cuh"

namespace dx::gemm {

DX_HOST_DEVICE constexpr int fragment_row(int warp, int lane, int h) { return warp * 16 + lane / 4 + 8 * h; }
DX_HOST_DEVICE constexpr int fragment_col(int lane, int j) { return 8 * j + 2 * (lane % 4); }
DX_HOST_DEVICE constexpr int fragment_reg(int j, int h) { return 4 * j + 2 * h; }  // + e

}  // namespace dx::gemm
