#pragma once
// Internal (not installed): the one loop that computes linear scores z̃_i V of a block, with
// what happens to each score left to the caller: stored (linear_scores_block: a softmax gate's
// scores, the linear experts' fitted means), or turned into a residual y − score and a log
// density while it is still in a register (the linear experts' E-step with one target). One
// loop, so every score has the same bits whichever use it serves.

#include "blocks.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cassert>
#include <type_traits>

namespace moekit::detail {

/// Columns a register sweep takes; a design with more goes column by column through memory
/// (linear_scores_block only).
inline constexpr Index linear_scores_max_columns = 32;

/// For each class k < V.cols() and row i < rows: a = Σ_j V_jk u_j(i) over the m = V.rows()
/// design columns u (columns[j]; with `intercept` u_0 is the implicit column of ones, columns[0]
/// is not read, and the sum starts at V_0k), summed in column order with one multiply-add each
/// (pmadd in packets, fused_madd in the tail: the same bits in both). Then
/// finish_packet(k, i, a) with a packet of rows i .. i + packet_size − 1, or finish_row(k, i, a)
/// for one row. Up to four classes per sweep over the rows (each column packet loaded once for
/// all of them), two packets of rows per step; the coefficients are read as broadcasts.
/// Requires m − intercept <= linear_scores_max_columns.
template <class FinishPacket, class FinishRow>
void linear_scores_sweep(const ConstMatrixRef& v,
                         const double* const* columns,
                         bool intercept,
                         Index rows,
                         FinishPacket finish_packet,
                         FinishRow finish_row) {
    using namespace Eigen::internal;
    using Packet = packet_traits<double>::type;
    constexpr Index packet_size = packet_traits<double>::size;
    constexpr Index classes_per_sweep = 4;
    const Index m = v.rows();
    const Index first = intercept ? 1 : 0;
    const Index K = v.cols();
    assert(m - first <= linear_scores_max_columns);
    for (Index k0 = 0; k0 < K; k0 += classes_per_sweep) {
        const Index kc = std::min(classes_per_sweep, K - k0);
        double coef[linear_scores_max_columns * classes_per_sweep]; // coef[(j − first)·4 + c]
        double start[classes_per_sweep];
        for (Index c = 0; c < kc; ++c) {
            start[c] = intercept ? v(0, k0 + c) : 0.0;
            for (Index j = first; j < m; ++j) coef[(j - first) * classes_per_sweep + c] = v(j, k0 + c);
        }
        auto sweep = [&](auto classes) {
            constexpr Index C = decltype(classes)::value;
            Index i = 0;
            for (; i + 2 * packet_size <= rows; i += 2 * packet_size) {
                Packet a0[C];
                Packet a1[C];
                for (Index c = 0; c < C; ++c) a0[c] = a1[c] = pset1<Packet>(start[c]);
                for (Index j = first; j < m; ++j) {
                    const Packet d0 = ploadu<Packet>(columns[j] + i);
                    const Packet d1 = ploadu<Packet>(columns[j] + i + packet_size);
                    const double* cj = coef + (j - first) * classes_per_sweep;
                    for (Index c = 0; c < C; ++c) {
                        const Packet vc = pset1<Packet>(cj[c]);
                        a0[c] = pmadd(vc, d0, a0[c]);
                        a1[c] = pmadd(vc, d1, a1[c]);
                    }
                }
                // Unrolled, so that the accumulators stay registers (a loop over them would
                // keep the arrays in memory, stored on every step of the column loop).
#pragma GCC unroll 4
                for (Index c = 0; c < C; ++c) {
                    finish_packet(k0 + c, i, a0[c]);
                    finish_packet(k0 + c, i + packet_size, a1[c]);
                }
            }
            for (; i < rows; ++i)
                for (Index c = 0; c < C; ++c) {
                    double a = start[c];
                    for (Index j = first; j < m; ++j) a = fused_madd(coef[(j - first) * classes_per_sweep + c], columns[j][i], a);
                    finish_row(k0 + c, i, a);
                }
        };
        switch (kc) {
        case 1: sweep(std::integral_constant<Index, 1>{}); break;
        case 2: sweep(std::integral_constant<Index, 2>{}); break;
        case 3: sweep(std::integral_constant<Index, 3>{}); break;
        default: sweep(std::integral_constant<Index, 4>{}); break;
        }
    }
}

} // namespace moekit::detail
