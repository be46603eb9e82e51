#pragma once
// Internal (not installed): the work buffers of the block kernels.
//
// A kernel reads its buffers a SIMD register at a time; std::vector<double> is only 16-byte
// aligned, so where a buffer started depended on the heap's state and, at 64-byte registers,
// most loads could straddle two cache lines: measured, the gate Hessian's pass ran 20% slower
// (its tile 40%) with its weight rows misaligned, and whole fits varied by 10% with unrelated
// allocations. Eigen's allocator aligns to Eigen's packet alignment (64 bytes with AVX-512).

#include <Eigen/Core>

#include <vector>

namespace moekit::detail {

using AlignedBuffer = std::vector<double, Eigen::aligned_allocator<double>>;

} // namespace moekit::detail
