#include "moekit/experts.hpp"

#include "blocks.hpp"
#include "detail.hpp"
#include "linear_scores.hpp"
#include "multi_crossprod.hpp"
#include "moekit/errors.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

namespace moekit {

namespace detail {

namespace {

using Packet = Eigen::internal::packet_traits<double>::type;
constexpr Index packet_size = Eigen::internal::packet_traits<double>::size;

/// Σ_i x_i u_i for four columns u at once (one load of x feeds four FMAs), two packets of rows
/// per step; a fixed summation order: packet lanes, then the scalar tail.
void dot4(const double* x, const double* const* u, Index rows, double* result, Index offset = 0) {
    using namespace Eigen::internal;
    const double* u0 = u[0] + offset;
    const double* u1 = u[1] + offset;
    const double* u2 = u[2] + offset;
    const double* u3 = u[3] + offset;
    Packet c[8];
    for (auto& v : c) v = pset1<Packet>(0.0);
    Index i = 0;
    for (; i + 2 * packet_size <= rows; i += 2 * packet_size) {
        const Packet x0 = ploadu<Packet>(x + i);
        const Packet x1 = ploadu<Packet>(x + i + packet_size);
        c[0] = pmadd(x0, ploadu<Packet>(u0 + i), c[0]);
        c[1] = pmadd(x1, ploadu<Packet>(u0 + i + packet_size), c[1]);
        c[2] = pmadd(x0, ploadu<Packet>(u1 + i), c[2]);
        c[3] = pmadd(x1, ploadu<Packet>(u1 + i + packet_size), c[3]);
        c[4] = pmadd(x0, ploadu<Packet>(u2 + i), c[4]);
        c[5] = pmadd(x1, ploadu<Packet>(u2 + i + packet_size), c[5]);
        c[6] = pmadd(x0, ploadu<Packet>(u3 + i), c[6]);
        c[7] = pmadd(x1, ploadu<Packet>(u3 + i + packet_size), c[7]);
    }
    double tail[4] = {0.0, 0.0, 0.0, 0.0};
    for (; i < rows; ++i) {
        tail[0] += x[i] * u0[i];
        tail[1] += x[i] * u1[i];
        tail[2] += x[i] * u2[i];
        tail[3] += x[i] * u3[i];
    }
    for (int t = 0; t < 4; ++t) result[t] = predux(padd(c[2 * t], c[2 * t + 1])) + tail[t];
}

/// A 2×C tile of dot products Σ_i w_r(i) u_c(i) (r < 2, c < C <= 4): one packet of rows per
/// step, each load of w or u feeding several FMAs; result[r·C + c]. Fixed summation order.
template <int C>
void dot_tile2(const double* w0, const double* w1, const double* const* u, Index offset, Index rows, double* result) {
    using namespace Eigen::internal;
    const double* uc[C];
    for (int c = 0; c < C; ++c) uc[c] = u[c] + offset;
    Packet c0[C];
    Packet c1[C];
    for (int c = 0; c < C; ++c) c0[c] = c1[c] = pset1<Packet>(0.0);
    Index i = 0;
    for (; i + packet_size <= rows; i += packet_size) {
        const Packet a0 = ploadu<Packet>(w0 + i);
        const Packet a1 = ploadu<Packet>(w1 + i);
        for (int c = 0; c < C; ++c) {
            const Packet v = ploadu<Packet>(uc[c] + i);
            c0[c] = pmadd(a0, v, c0[c]);
            c1[c] = pmadd(a1, v, c1[c]);
        }
    }
    double t0[C] = {};
    double t1[C] = {};
    for (; i < rows; ++i)
        for (int c = 0; c < C; ++c) {
            t0[c] += w0[i] * uc[c][i];
            t1[c] += w1[i] * uc[c][i];
        }
    for (int c = 0; c < C; ++c) {
        result[c] = predux(c0[c]) + t0[c];
        result[C + c] = predux(c1[c]) + t1[c];
    }
}

/// The shifted sums of linear experts with one target, for a group of E experts and G input
/// columns: with a_i = w_i h_ei and ar_i = a_i r_ei for expert e,
///   *sums[e·A + t] += Σ_i ar_i x_t(i)  (t < G),
/// and with First also *sums[e·A + G] += Σ_i ar_i (the intercept's) and
/// *sums[e·A + G + 1] += Σ_i ar_i r_ei (A = G, or G + 2 with First). Per-lane accumulators over
/// the full packets of rows, their lanes summed once, then the remaining rows in order: each sum
/// depends only on its own inputs and the row count. One load of w and of each x feeds every
/// expert of the group.
template <int E, int G, bool First>
void shift_sums_sweep(const double* w, const double* const* h, const double* const* r, const double* const* x,
                      Index rows, double* const* sums) {
    using namespace Eigen::internal;
    constexpr int A = G + (First ? 2 : 0);
    constexpr int slots = A > 0 ? A : 1;
    Packet acc[E][slots];
    for (int e = 0; e < E; ++e)
        for (int t = 0; t < A; ++t) acc[e][t] = pset1<Packet>(0.0);
    const Index full = rows / packet_size * packet_size;
    for (Index i = 0; i < full; i += packet_size) {
        const Packet wv = ploadu<Packet>(w + i);
        Packet ar[E];
        Packet rv[E];
        for (int e = 0; e < E; ++e) {
            rv[e] = ploadu<Packet>(r[e] + i);
            ar[e] = pmul(pmul(wv, ploadu<Packet>(h[e] + i)), rv[e]);
        }
        for (int t = 0; t < G; ++t) {
            const Packet xt = ploadu<Packet>(x[t] + i);
            for (int e = 0; e < E; ++e) acc[e][t] = pmadd(ar[e], xt, acc[e][t]);
        }
        if constexpr (First)
            for (int e = 0; e < E; ++e) {
                acc[e][G] = padd(acc[e][G], ar[e]);
                acc[e][G + 1] = pmadd(ar[e], rv[e], acc[e][G + 1]);
            }
    }
    double total[E][slots];
    for (int e = 0; e < E; ++e)
        for (int t = 0; t < A; ++t) total[e][t] = predux(acc[e][t]);
    for (Index i = full; i < rows; ++i)
        for (int e = 0; e < E; ++e) {
            const double ar_i = (w[i] * h[e][i]) * r[e][i];
            for (int t = 0; t < G; ++t) total[e][t] = fused_madd(ar_i, x[t][i], total[e][t]);
            if constexpr (First) {
                total[e][G] += ar_i;
                total[e][G + 1] = fused_madd(ar_i, r[e][i], total[e][G + 1]);
            }
        }
    for (int e = 0; e < E; ++e)
        for (int t = 0; t < A; ++t) *sums[e * A + t] += total[e][t];
}

/// Input columns per sweep: with AVX-512 two experts' 2·(G + 2) accumulators, the G inputs
/// and the experts' weights and residuals fit in the 32 vector registers (with 16, AVX2 or
/// SSE2, some accumulators spill to L1).
constexpr int shift_sums_columns = 5;

using ShiftSweep = void (*)(const double*, const double* const*, const double* const*, const double* const*, Index,
                            double* const*);

template <int E, bool First, int... G>
constexpr std::array<ShiftSweep, sizeof...(G)> shift_sweeps(std::integer_sequence<int, G...>) {
    return {shift_sums_sweep<E, G, First>...};
}

/// The sweeps by [experts − 1][first][columns] (entry [·][0][0], no columns and not the first
/// group, is never called: the first group of every expert pair runs, later ones have inputs).
constexpr std::array<ShiftSweep, shift_sums_columns + 1> shift_sweep_table[2][2] = {
    {shift_sweeps<1, false>(std::make_integer_sequence<int, shift_sums_columns + 1>{}),
     shift_sweeps<1, true>(std::make_integer_sequence<int, shift_sums_columns + 1>{})},
    {shift_sweeps<2, false>(std::make_integer_sequence<int, shift_sums_columns + 1>{}),
     shift_sweeps<2, true>(std::make_integer_sequence<int, shift_sums_columns + 1>{})}};

/// Linear experts with one target, over `rows` rows: out[k][j] += Σ_i a_ik r_ik x̃_j(i) for
/// j < p = d + 1 (x̃_0 = 1, x̃_j = x[j − 1]) and out[k][p] += Σ_i a_ik r_ik², a_ik = w_i h_ik:
/// the X̃ᵀ A_k r_k and r_kᵀ A_k r_k of the shifted statistics, two experts per sweep over up to
/// shift_sums_columns inputs (instead of a sweep per expert and column).
void linear_shift_sums(const double* w, const double* const* h, const double* const* r, const double* const* x,
                       Index d, Index K, Index rows, double* const* out) {
    double* sums[2 * (shift_sums_columns + 2)];
    for (Index k0 = 0; k0 < K; k0 += 2) {
        const Index E = std::min<Index>(2, K - k0);
        for (Index c0 = 0; c0 == 0 || c0 < d; c0 += shift_sums_columns) {
            const Index g = std::min<Index>(shift_sums_columns, d - c0);
            const bool first = c0 == 0;
            const Index A = g + (first ? 2 : 0);
            for (Index e = 0; e < E; ++e) {
                double* o = out[k0 + e];
                for (Index t = 0; t < g; ++t) sums[e * A + t] = o + 1 + c0 + t;
                if (first) {
                    sums[e * A + g] = o;
                    sums[e * A + g + 1] = o + d + 1;
                }
            }
            shift_sweep_table[E - 1][first ? 1 : 0][static_cast<std::size_t>(g)](w, h + k0, r + k0, x + c0, rows, sums);
        }
    }
}

} // namespace

const double* ones_column() {
    static const AlignedBuffer ones(static_cast<std::size_t>(block_rows), 1.0);
    return ones.data();
}

/// Rows of a crossprod chunk: the chunk's columns (up to 11 of 256 doubles) and its two
/// weighted rows stay in L1 while the tiles sweep them.
constexpr Index crossprod_chunk = 256;

void weighted_crossprod_block(const double* a, const double* const* u, Index rows, Index m, Index jrows, double* s) {
    // Rows [i0, i0 + c) at a time (fixed chunks: the summation order depends on nothing but
    // the block); each chunk's tiles are added to s, which the first chunk overwrites.
    assert(rows <= block_rows);
    double weighted[2][crossprod_chunk];
    if (rows == 0) {
        for (Index j = 0; j < jrows; ++j)
            for (Index l = j; l < m; ++l) s[j + l * m] = 0.0;
        return;
    }
    for (Index i0 = 0; i0 < rows; i0 += crossprod_chunk) {
        const Index c = std::min(crossprod_chunk, rows - i0);
        const bool first = i0 == 0;
        auto put1 = [&](Index row, Index col, double v) {
            double& t = s[row + col * m];
            t = first ? v : t + v;
        };
        Index j = 0;
        // Rows j, j + 1 of S together in 2×4 tiles: six loads feed eight FMAs.
        for (; j + 2 <= jrows; j += 2) {
            const double* u0 = u[j] + i0;
            const double* u1 = u[j + 1] + i0;
            const double* ai = a + i0;
            for (Index i = 0; i < c; ++i) {
                weighted[0][i] = ai[i] * u0[i];
                weighted[1][i] = ai[i] * u1[i];
            }
            Index l = j;
            double r[8];
            auto put = [&](Index width) {
                for (Index t = 0; t < width; ++t) {
                    put1(j, l + t, r[t]);
                    if (l + t >= j + 1) put1(j + 1, l + t, r[width + t]);
                }
            };
            for (; l + 4 <= m; l += 4) {
                dot_tile2<4>(weighted[0], weighted[1], u + l, i0, c, r);
                put(4);
            }
            switch (m - l) {
            case 3: dot_tile2<3>(weighted[0], weighted[1], u + l, i0, c, r); put(3); break;
            case 2: dot_tile2<2>(weighted[0], weighted[1], u + l, i0, c, r); put(2); break;
            case 1: dot_tile2<1>(weighted[0], weighted[1], u + l, i0, c, r); put(1); break;
            default: break;
            }
        }
        for (; j < jrows; ++j) {
            const double* uj = u[j] + i0;
            const double* ai = a + i0;
            for (Index i = 0; i < c; ++i) weighted[0][i] = ai[i] * uj[i];
            Index l = j;
            for (; l + 4 <= m; l += 4) {
                double r[4];
                dot4(weighted[0], u + l, c, r, i0);
                for (Index t = 0; t < 4; ++t) put1(j, l + t, r[t]);
            }
            for (; l < m; ++l) put1(j, l, weighted_sum_block(weighted[0], u[l] + i0, c));
        }
    }
}

void weighted_sumsq_block(const double* a, const double* const* u, Index rows, Index m, double* s) {
    // One sweep per column: (a_i u_i) u_i into four packet accumulators, then the tail.
    using namespace Eigen::internal;
    for (Index j = 0; j < m; ++j) {
        const double* x = u[j];
        Packet c[4];
        for (auto& v : c) v = pset1<Packet>(0.0);
        Index i = 0;
        for (; i + 4 * packet_size <= rows; i += 4 * packet_size)
            for (int t = 0; t < 4; ++t) {
                const Packet v = ploadu<Packet>(x + i + t * packet_size);
                c[t] = pmadd(pmul(ploadu<Packet>(a + i + t * packet_size), v), v, c[t]);
            }
        double tail = 0.0;
        for (; i < rows; ++i) tail += (a[i] * x[i]) * x[i];
        s[j] = predux(padd(padd(c[0], c[1]), padd(c[2], c[3]))) + tail;
    }
}

void dot_columns_block(const double* const* u, Index nu, const double* b, Index rows, double* out) {
    Index j = 0;
    for (; j + 4 <= nu; j += 4) dot4(b, u + j, rows, out + j);
    for (; j < nu; ++j) out[j] = weighted_sum_block(b, u[j], rows);
}

void masked_weighted_sums_block(
    const double* w, const double* h, Index ldh, const double* t, Index ldt, Index rows, Index K, double* sums) {
    // Per column k the sum of its own two packet accumulators (even and odd packets), then the
    // tail in order; up to four columns per sweep, so w is loaded once for all of them.
    using namespace Eigen::internal;
    const Packet zero = pset1<Packet>(0.0);
    constexpr Index per_sweep = 4;
    for (Index k0 = 0; k0 < K; k0 += per_sweep) {
        const Index kc = std::min(per_sweep, K - k0);
        Packet c0[per_sweep];
        Packet c1[per_sweep];
        for (Index c = 0; c < per_sweep; ++c) c0[c] = c1[c] = zero;
        Index i = 0;
        for (; i + 2 * packet_size <= rows; i += 2 * packet_size) {
            const Packet w0 = ploadu<Packet>(w + i);
            const Packet w1 = ploadu<Packet>(w + i + packet_size);
            for (Index c = 0; c < kc; ++c) {
                const double* hk = h + (k0 + c) * ldh;
                const double* tk = t + (k0 + c) * ldt;
                const Packet h0 = ploadu<Packet>(hk + i);
                const Packet h1 = ploadu<Packet>(hk + i + packet_size);
                const Packet v0 = pmul(pmul(w0, h0), ploadu<Packet>(tk + i));
                const Packet v1 = pmul(pmul(w1, h1), ploadu<Packet>(tk + i + packet_size));
                c0[c] = padd(c0[c], pselect(pcmp_lt(zero, h0), v0, zero));
                c1[c] = padd(c1[c], pselect(pcmp_lt(zero, h1), v1, zero));
            }
        }
        for (Index c = 0; c < kc; ++c) {
            const double* hk = h + (k0 + c) * ldh;
            const double* tk = t + (k0 + c) * ldt;
            double tail = 0.0;
            for (Index r = i; r < rows; ++r)
                if (hk[r] > 0.0) tail += w[r] * hk[r] * tk[r];
            sums[k0 + c] = predux(padd(c0[c], c1[c])) + tail;
        }
    }
}

void reserve_scratch(ExpertScratch& s, const Experts& experts) {
    const Index q = experts.n_outputs();
    s.residuals.resize(block_rows, (experts.kind == ExpertKind::Linear ? std::min(experts.n_experts(), linear_expert_group) : 1) * q);
    s.columns.resize(static_cast<std::size_t>(experts.n_inputs() + 1 + q));
    s.weights.resize(static_cast<std::size_t>(block_rows));
    s.buffer.resize(static_cast<std::size_t>(density_scratch_size(q)));
}

/// r = y − x̃ W for rows [begin, begin + rows) into `r` (rows × W.cols(), leading dimension
/// ldr; column c is fitted to target c mod q).
namespace {

/// The design columns of rows [begin, ...) for linear_scores_sweep: columns[0] the implicit
/// ones (not read), then the d inputs (this thread's array, valid until the next call).
const double* const* design_columns(const Dataset& data, Index d, Index begin) {
    thread_local std::vector<const double*> columns;
    columns.assign(static_cast<std::size_t>(d + 1), nullptr);
    for (Index l = 0; l < d; ++l) columns[static_cast<std::size_t>(1 + l)] = data.x.data() + l * data.x.outerStride() + begin;
    return columns.data();
}

} // namespace

void linear_residuals_block(const Dataset& data, const ConstMatrixRef& w, Index begin, Index rows, double* r, Index ldr) {
    // The fitted means x̃ w_c (intercept, then the inputs in order, one multiply-add each, up
    // to four columns per sweep over the inputs), then y minus them.
    const Index q = data.y.cols();
    const Index d = w.rows() - 1;
    const double* const* columns = design_columns(data, d, begin);
    auto target = [&](Index c) { return data.y.data() + (c % q) * data.y.outerStride() + begin; };
    if (d > linear_scores_max_columns) {
        linear_scores_block(w, columns, true, rows, r, ldr);
        for (Index c = 0; c < w.cols(); ++c) {
            const double* yt = target(c);
            double* rc = r + c * ldr;
            for (Index i = 0; i < rows; ++i) rc[i] = yt[i] - rc[i];
        }
        return;
    }
    // y − x̃ w_c while the fitted mean is in a register.
    using namespace Eigen::internal;
    linear_scores_sweep(
        w, columns, true, rows,
        [&](Index c, Index i, Packet a) { pstoreu(r + c * ldr + i, psub(ploadu<Packet>(target(c) + i), a)); },
        [&](Index c, Index i, double a) { r[c * ldr + i] = target(c)[i] - a; });
}

namespace {

/// Experts per call of linear_log_densities_one_target (their constants on the stack).
constexpr Index linear_fused_experts = 64;

/// Linear experts with one target, the G = w.cols() <= linear_fused_experts experts k0 .. k0 +
/// G − 1 (their coefficients the columns of w): out[i + (k0 + g)·ld] = c_g − ½ (r_g(i) / L_g)²
/// with r_g = y − x̃ w_g, the log densities of gaussian_log_density_block (q = 1) on the
/// residuals of linear_residuals_block with their arithmetic, computed while each fitted mean
/// is in a register instead of in two more passes over the block; with StoreResiduals also r_g
/// into r (leading dimension ldr), for the statistics.
template <bool StoreResiduals>
void linear_log_densities_one_target(const Experts& experts,
                                     const Dataset& data,
                                     const ConstMatrixRef& w,
                                     Index k0,
                                     Index begin,
                                     Index rows,
                                     double* r,
                                     Index ldr,
                                     double* out,
                                     Index ld,
                                     const double* offsets) {
    using namespace Eigen::internal;
    const Index d = w.rows() - 1;
    const Index G = w.cols();
    assert(G <= linear_fused_experts);
    double inv[linear_fused_experts];
    double c[linear_fused_experts];
    for (Index g = 0; g < G; ++g) {
        const CovarianceFactor& f = experts.covariances[static_cast<std::size_t>(k0 + g)];
        inv[g] = 1.0 / f.lower(0, 0);
        c[g] = log_density_constant(f, 1, offsets ? offsets[k0 + g] : 0.0);
    }
    const double* y = data.y.data() + begin;
    const Packet zero = pset1<Packet>(0.0);
    const Packet minus_half = pset1<Packet>(-0.5);
    linear_scores_sweep(
        w, design_columns(data, d, begin), true, rows,
        [&](Index g, Index i, Packet a) {
            const Packet rg = psub(ploadu<Packet>(y + i), a);
            if constexpr (StoreResiduals) pstoreu(r + g * ldr + i, rg);
            // gaussian_log_density_block's diagonal form: z = (r − 0)·(1/L), z·z + 0, then
            // −½·that + c.
            const Packet z = pmul(psub(rg, zero), pset1<Packet>(inv[g]));
            pstoreu(out + (k0 + g) * ld + i, pmadd(minus_half, pmadd(z, z, zero), pset1<Packet>(c[g])));
        },
        [&](Index g, Index i, double a) {
            const double rg = y[i] - a;
            if constexpr (StoreResiduals) r[g * ldr + i] = rg;
            const double z = (rg - 0.0) * inv[g];
            out[(k0 + g) * ld + i] = fused_madd(-0.5, fused_madd(z, z, 0.0), c[g]);
        });
}

} // namespace

void expert_log_densities_block(const Experts& experts,
                                const Dataset& data,
                                Index begin,
                                Index rows,
                                double* out,
                                Index ld,
                                ExpertScratch& scratch,
                                const double* offsets) {
    const Index q = experts.n_outputs();
    // Diagonal factors (and q = 1) need no off-diagonal substitution.
    const bool diagonal = q == 1 || experts.covariance_type == CovarianceType::Diag ||
                          experts.covariance_type == CovarianceType::Spherical;
    if (experts.kind == ExpertKind::Linear) {
        // The residuals of a group of experts in one sweep over the inputs (their coefficients
        // side by side), then each expert's density: all experts when their residuals are kept,
        // else up to linear_expert_group at a time in the scratch.
        const Index K = experts.n_experts();
        const bool keep = scratch.keep != nullptr;
        const Index group = keep ? K : std::min(K, linear_expert_group);
        for (Index k0 = 0; k0 < K; k0 += group) {
            const Index G = std::min(group, K - k0);
            double* r = keep ? scratch.keep + k0 * q * scratch.keep_ld : scratch.residuals.data();
            const Index ldr = keep ? scratch.keep_ld : scratch.residuals.outerStride();
            const Index p = experts.coefficients[0].rows();
            if (scratch.stacked.rows() != p || scratch.stacked.cols() < G * q) scratch.stacked.resize(p, group * q);
            for (Index g = 0; g < G; ++g)
                scratch.stacked.middleCols(g * q, q) = experts.coefficients[static_cast<std::size_t>(k0 + g)];
            if (q == 1 && p - 1 <= linear_scores_max_columns) {
                // Residuals stored only when the E-step keeps them for the statistics.
                for (Index g0 = 0; g0 < G; g0 += linear_fused_experts) {
                    const Index count = std::min(linear_fused_experts, G - g0);
                    const ConstMatrixRef wg = scratch.stacked.middleCols(g0, count);
                    if (keep)
                        linear_log_densities_one_target<true>(experts, data, wg, k0 + g0, begin, rows, r + g0 * ldr,
                                                              ldr, out, ld, offsets);
                    else
                        linear_log_densities_one_target<false>(experts, data, wg, k0 + g0, begin, rows, nullptr, 0,
                                                               out, ld, offsets);
                }
                continue;
            }
            linear_residuals_block(data, scratch.stacked.leftCols(G * q), begin, rows, r, ldr);
            for (Index g = 0; g < G; ++g) {
                const Index k = k0 + g;
                gaussian_log_density_block(r + g * q * ldr,
                                           ldr,
                                           rows,
                                           q,
                                           nullptr,
                                           experts.covariances[static_cast<std::size_t>(k)],
                                           diagonal,
                                           out + k * ld,
                                           scratch.buffer.data(),
                                           offsets ? offsets[k] : 0.0);
            }
        }
        return;
    }
    // Gaussian experts: r = y − μ_k is formed inside the kernel (μ_k, 1×q, is contiguous).
    for (Index k = 0; k < experts.n_experts(); ++k) {
        const auto uk = static_cast<std::size_t>(k);
        gaussian_log_density_block(data.y.data() + begin,
                                   data.y.outerStride(),
                                   rows,
                                   q,
                                   experts.coefficients[uk].data(),
                                   experts.covariances[uk],
                                   diagonal,
                                   out + k * ld,
                                   scratch.buffer.data(),
                                   offsets ? offsets[k] : 0.0);
    }
}


namespace {

/// r = y − x̃ W for rows [begin, begin + rows) into r (rows×q, leading dimension ldr): for
/// Gaussian experts W is the 1×q mean.
void residuals_block(ExpertKind kind, const Dataset& data, const Matrix& w, Index begin, Index rows, double* r, Index ldr) {
    if (kind == ExpertKind::Linear) {
        detail::linear_residuals_block(data, w, begin, rows, r, ldr);
        return;
    }
    for (Index t = 0; t < data.y.cols(); ++t) {
        const double* yt = data.y.data() + t * data.y.outerStride() + begin;
        const double mu = w(0, t);
        for (Index i = 0; i < rows; ++i) r[t * ldr + i] = yt[i] - mu;
    }
}

/// The most targets of a Gaussian expert whose statistics gaussian_sums forms in registers:
/// 1 + Q + Q(Q + 1)/2 accumulators with a full covariance, 1 + 2Q with a diagonal one.
constexpr Index gaussian_sums_max_targets = 4;
constexpr Index gaussian_sums_max_diagonal_targets = 12;

/// The statistics of one Gaussian expert with Q targets over `rows` rows, added to out (m×m,
/// m = Q + 1, column-major): the upper triangle of [1 r]ᵀ diag(a) [1 r] with r_t = y_t − μ_t
/// formed in registers (Diagonal: its first row and its diagonal), a = w·h (Weighted) or the
/// one column `a` (h alone with unit sample weights, w alone without responsibilities). No
/// residuals or weights are stored: the passes over a block are bound by their stores, not
/// by their arithmetic. Packet accumulators over the block (two sets where both sets, the
/// means and a row's values fit in the vector registers: 32 with AVX-512, 16 otherwise),
/// summed once; the rows past the last packet after them, in order, with the same
/// multiply-adds (fused_madd). The residuals, a·r_t and the FMAs are those of the stored form
/// (residuals_block, weighted_crossprod_block).
template <int Q, bool Diagonal, bool Weighted>
void gaussian_sums(const double* w, const double* a, const double* const* y, const double* mu, Index rows, double* out) {
    using namespace Eigen::internal;
    constexpr int E = Diagonal ? 1 + 2 * Q : 1 + Q + Q * (Q + 1) / 2;
#ifdef __AVX512F__
    constexpr int registers = 32;
#else
    constexpr int registers = 16;
#endif
    constexpr int sets = 2 * E + 3 * Q + 1 <= registers ? 2 : 1;
    constexpr Index m = Q + 1;
    Packet acc[sets][E];
    for (auto& set : acc)
        for (auto& v : set) v = pset1<Packet>(0.0);
    Packet means[Q];
    for (int t = 0; t < Q; ++t) means[t] = pset1<Packet>(mu[t]);
    auto step = [&](Packet(&sums)[E], Index i) {
        const Packet av = Weighted ? pmul(ploadu<Packet>(w + i), ploadu<Packet>(a + i)) : ploadu<Packet>(a + i);
        Packet r[Q];
        Packet ar[Q];
        for (int t = 0; t < Q; ++t) {
            r[t] = psub(ploadu<Packet>(y[t] + i), means[t]);
            ar[t] = pmul(av, r[t]);
        }
        int e = 0;
        sums[e] = padd(sums[e], av);
        ++e;
        for (int t = 0; t < Q; ++t, ++e) sums[e] = pmadd(av, r[t], sums[e]);
        for (int t = 0; t < Q; ++t)
            for (int u = t; u < (Diagonal ? t + 1 : Q); ++u, ++e) sums[e] = pmadd(ar[t], r[u], sums[e]);
    };
    Index i = 0;
    for (; i + sets * packet_size <= rows; i += sets * packet_size)
        for (int set = 0; set < sets; ++set) step(acc[set], i + set * packet_size);
    for (; i + packet_size <= rows; i += packet_size) step(acc[0], i);
    double total[E];
    for (int e = 0; e < E; ++e) total[e] = predux(sets == 2 ? padd(acc[0][e], acc[sets - 1][e]) : acc[0][e]);
    for (; i < rows; ++i) {
        const double ai = Weighted ? w[i] * a[i] : a[i];
        double r[Q];
        for (int t = 0; t < Q; ++t) r[t] = y[t][i] - mu[t];
        int e = 0;
        total[e++] += ai;
        for (int t = 0; t < Q; ++t, ++e) total[e] = fused_madd(ai, r[t], total[e]);
        for (int t = 0; t < Q; ++t)
            for (int u = t; u < (Diagonal ? t + 1 : Q); ++u, ++e) total[e] = fused_madd(ai * r[t], r[u], total[e]);
    }
    int e = 0;
    out[0] += total[e++];
    for (int t = 0; t < Q; ++t) out[(t + 1) * m] += total[e++];
    for (int t = 0; t < Q; ++t)
        for (int u = t; u < (Diagonal ? t + 1 : Q); ++u) out[(t + 1) + (u + 1) * m] += total[e++];
}

using GaussianSums = void (*)(const double*, const double*, const double* const*, const double*, Index, double*);

template <bool Diagonal, int... Q>
constexpr std::array<std::array<GaussianSums, 2>, sizeof...(Q)> gaussian_sums_forms(std::integer_sequence<int, Q...>) {
    return {std::array<GaussianSums, 2>{gaussian_sums<Q + 1, Diagonal, false>, gaussian_sums<Q + 1, Diagonal, true>}...};
}

/// gaussian_sums by Q − 1, then by weighted: full and diagonal statistics.
constexpr auto gaussian_sums_full =
    gaussian_sums_forms<false>(std::make_integer_sequence<int, gaussian_sums_max_targets>{});
constexpr auto gaussian_sums_diagonal =
    gaussian_sums_forms<true>(std::make_integer_sequence<int, gaussian_sums_max_diagonal_targets>{});

/// Whether every one of the n values is 1 (an integer reduction: vectorised, no early exit).
bool all_ones(const double* w, Index n) {
    unsigned other = 0;
    for (Index i = 0; i < n; ++i) other |= w[i] != 1.0 ? 1u : 0u;
    return other == 0;
}

/// a_i = w_i h_ik for the rows [begin, begin + rows) (h_ik = 1 when resp has no columns).
void block_weights(const Dataset& data, const RespView& resp, Index k, Index begin, Index rows, double* a) {
    const double* w = data.weights.data() + begin;
    if (resp.h == nullptr) {
        std::copy(w, w + rows, a);
        return;
    }
    const double* h = resp.column(k, begin);
    for (Index i = 0; i < rows; ++i) a[i] = w[i] * h[i];
}

} // namespace

Index statistics_size(ExpertKind kind, const Dataset& data) {
    return (kind == ExpertKind::Linear ? data.x.cols() + 1 : 1) + data.y.cols();
}

StatisticsScratch make_statistics_scratch(ExpertKind kind, const Dataset& data) {
    const Index q = data.y.cols();
    const Index m = statistics_size(kind, data);
    StatisticsScratch s;
    s.residuals.resize(statistics_sub_block, q);
    s.weights.resize(static_cast<std::size_t>(statistics_sub_block));
    s.columns.resize(static_cast<std::size_t>(m));
    s.part = Matrix::Zero(m, m);
    s.diag.resize(static_cast<std::size_t>(q));
    s.product.resize(static_cast<std::size_t>(statistics_sub_block));
    s.dots.resize(static_cast<std::size_t>(m));
    return s;
}

void shifted_statistics_block(ExpertKind kind,
                              const Dataset& data,
                              const RespView& resp,
                              const std::vector<Matrix>& coefficients,
                              bool diagonal_only,
                              Index b,
                              double* slot,
                              StatisticsScratch& s,
                              const double* residuals) {
    const Index n = data.n_samples();
    const Index K = static_cast<Index>(coefficients.size());
    const Index d = kind == ExpertKind::Linear ? data.x.cols() : 0;
    const Index p = d + 1;
    const Index q = data.y.cols();
    const Index m = p + q;
    const Index b_begin = block_begin(b);
    const Index b_rows = block_size(b, n);
    if (kind == ExpertKind::Linear) {
        // G_k = X̃ᵀ A_k X̃ does not depend on the coefficients: all experts in one sweep of the
        // block over the shared design columns (multi_crossprod_block, weights a_k = w h_k).
        s.columns[0] = ones_column();
        for (Index l = 0; l < d; ++l)
            s.columns[static_cast<std::size_t>(1 + l)] = data.x.data() + l * data.x.outerStride() + b_begin;
        s.gram.resize(static_cast<std::size_t>(K * p * p));
        // With unit sample weights a_k = 1 · h_k is h_k itself (the same bits): the kernel reads
        // the responsibilities in place instead of a copy.
        const bool unit = resp.h != nullptr && all_ones(data.weights.data() + b_begin, b_rows);
        s.resp_columns.resize(static_cast<std::size_t>(K));
        for (Index k = 0; k < K && unit; ++k) s.resp_columns[static_cast<std::size_t>(k)] = resp.column(k, b_begin);
        multi_crossprod_block(
            s.columns.data(), p, b_rows, K,
            [&](Index i0, Index count, double* const* c) {
                for (Index k = 0; k < K; ++k) block_weights(data, resp, k, b_begin + i0, count, c[k]);
            },
            s.gram.data(), unit ? s.resp_columns.data() : nullptr);
        for (Index k = 0; k < K; ++k)
            for (Index l = 0; l < p; ++l)
                for (Index j = 0; j <= l; ++j) slot[k * m * m + j + l * m] += s.gram[static_cast<std::size_t>(k * p * p + j + l * p)];
        if (q == 1) {
            // One target: B = X̃ᵀ A_k r_k and C = r_kᵀ A_k r_k of all experts in one pass over
            // each sub-block (linear_shift_sums), the residuals kept by the E-step or computed
            // here per sub-block.
            if (!residuals && s.residuals.cols() < K) s.residuals.resize(statistics_sub_block, K);
            s.resp_columns.resize(static_cast<std::size_t>(K));
            s.residual_columns.resize(static_cast<std::size_t>(K));
            s.sums.resize(static_cast<std::size_t>(K));
            for (Index k = 0; k < K; ++k) s.sums[static_cast<std::size_t>(k)] = slot + k * m * m + p * m;
            for (Index first = 0; first < b_rows; first += statistics_sub_block) {
                const Index begin = b_begin + first;
                const Index rows = std::min(statistics_sub_block, b_rows - first);
                for (Index l = 0; l < d; ++l)
                    s.columns[static_cast<std::size_t>(l)] = data.x.data() + l * data.x.outerStride() + begin;
                for (Index k = 0; k < K; ++k) {
                    const auto uk = static_cast<std::size_t>(k);
                    s.resp_columns[uk] = resp.h ? resp.column(k, begin) : ones_column();
                    if (residuals) {
                        s.residual_columns[uk] = residuals + k * block_rows + first;
                    } else {
                        double* rk = s.residuals.data() + k * s.residuals.outerStride();
                        residuals_block(kind, data, coefficients[uk], begin, rows, rk, s.residuals.outerStride());
                        s.residual_columns[uk] = rk;
                    }
                }
                linear_shift_sums(data.weights.data() + begin, s.resp_columns.data(), s.residual_columns.data(),
                                  s.columns.data(), d, K, rows, s.sums.data());
            }
            return;
        }
        // B = X̃ᵀ A R and C = Rᵀ A R around the current coefficients, by sub-blocks whose
        // residuals stay in L1.
        double* r = s.residuals.data();
        const Index ldr = s.residuals.outerStride();
        for (Index first = 0; first < b_rows; first += statistics_sub_block) {
            const Index begin = b_begin + first;
            const Index rows = std::min(statistics_sub_block, b_rows - first);
            for (Index l = 0; l < d; ++l)
                s.columns[static_cast<std::size_t>(1 + l)] = data.x.data() + l * data.x.outerStride() + begin;
            const double* const* rc = s.columns.data() + p;
            for (Index k = 0; k < K; ++k) {
                if (residuals) {
                    for (Index t = 0; t < q; ++t)
                        s.columns[static_cast<std::size_t>(p + t)] = residuals + (k * q + t) * block_rows + first;
                } else {
                    for (Index t = 0; t < q; ++t) s.columns[static_cast<std::size_t>(p + t)] = r + t * ldr;
                    residuals_block(kind, data, coefficients[static_cast<std::size_t>(k)], begin, rows, r, ldr);
                }
                block_weights(data, resp, k, begin, rows, s.weights.data());
                double* out = slot + k * m * m;
                const double* a = s.weights.data();
                for (Index t = 0; t < q; ++t) {
                    const double* rt = rc[t];
                    double* ar = s.product.data();
                    for (Index i = 0; i < rows; ++i) ar[i] = a[i] * rt[i];
                    dot_columns_block(s.columns.data(), p, ar, rows, s.dots.data());
                    for (Index j = 0; j < p; ++j) out[j + (p + t) * m] += s.dots[static_cast<std::size_t>(j)];
                }
                if (diagonal_only) {
                    weighted_sumsq_block(a, rc, rows, q, s.diag.data());
                    for (Index t = 0; t < q; ++t) out[(p + t) + (p + t) * m] += s.diag[static_cast<std::size_t>(t)];
                } else {
                    // Rᵀ A R, q×q (leading dimension q) in part's storage.
                    weighted_crossprod_block(a, rc, rows, q, q, s.part.data());
                    const double* c = s.part.data();
                    for (Index col = 0; col < q; ++col)
                        for (Index row = 0; row <= col; ++row) out[(p + row) + (p + col) * m] += c[row + col * q];
                }
            }
        }
        return;
    }
    if (q >= 1 && q <= (diagonal_only ? gaussian_sums_max_diagonal_targets : gaussian_sums_max_targets)) {
        // Up to four targets (twelve with diagonal statistics): each expert's sums in registers
        // over the whole block (gaussian_sums), the residuals and the weights never stored.
        const double* w = data.weights.data() + b_begin;
        const bool unit = all_ones(w, b_rows);
        assert(s.columns.size() >= static_cast<std::size_t>(q)); // make_statistics_scratch: p + q
        for (Index t = 0; t < q; ++t)
            s.columns[static_cast<std::size_t>(t)] = data.y.data() + t * data.y.outerStride() + b_begin;
        for (Index k = 0; k < K; ++k) {
            const double* h = resp.h ? resp.column(k, b_begin) : nullptr;
            const bool weighted = h != nullptr && !unit;
            const double* a = h != nullptr ? h : w;
            const auto& forms = diagonal_only ? gaussian_sums_diagonal[static_cast<std::size_t>(q - 1)]
                                              : gaussian_sums_full[static_cast<std::size_t>(q - 1)];
            forms[weighted ? 1 : 0](w, a, s.columns.data(), coefficients[static_cast<std::size_t>(k)].data(), b_rows,
                                    slot + k * m * m);
        }
        return;
    }
    // Gaussian experts with more targets (the design is the column of ones): sub-blocks of
    // statistics_sub_block rows, whose residuals and weights stay in L1 between being formed
    // and being read by the cross products (a whole block's would live in L2).
    double* r = s.residuals.data();
    const Index ldr = s.residuals.outerStride();
    for (Index first = 0; first < b_rows; first += statistics_sub_block) {
        const Index begin = b_begin + first;
        const Index rows = std::min(statistics_sub_block, b_rows - first);
        s.columns[0] = ones_column();
        for (Index t = 0; t < q; ++t) s.columns[static_cast<std::size_t>(p + t)] = r + t * ldr;
        for (Index k = 0; k < K; ++k) {
            residuals_block(kind, data, coefficients[static_cast<std::size_t>(k)], begin, rows, r, ldr);
            block_weights(data, resp, k, begin, rows, s.weights.data());
            double* out = slot + k * m * m;
            weighted_crossprod_block(s.weights.data(), s.columns.data(), rows, m, diagonal_only ? p : m, s.part.data());
            if (diagonal_only) {
                weighted_sumsq_block(s.weights.data(), s.columns.data() + p, rows, q, s.diag.data());
                for (Index t = 0; t < q; ++t) s.part(p + t, p + t) = s.diag[static_cast<std::size_t>(t)];
            }
            // Only the entries computed (the upper rows; with diagonal_only the first p rows
            // and the diagonal) are non-zero in part: add the upper triangle.
            for (Index col = 0; col < m; ++col)
                for (Index row = 0; row <= col; ++row) out[row + col * m] += s.part(row, col);
        }
    }
}

void add_statistics(std::vector<Matrix>& total, const double* slot) {
    for (std::size_t k = 0; k < total.size(); ++k) {
        const Index m = total[k].rows();
        total[k] += Eigen::Map<const Matrix>(slot + static_cast<Index>(k) * m * m, m, m);
    }
}

Matrix structured_covariance(CovarianceType type, const Matrix& s, const Vector& ridge) {
    const Index q = s.rows();
    switch (type) {
    case CovarianceType::Full:
    case CovarianceType::Tied: {
        Matrix c = s;
        c.diagonal() += ridge;
        return c;
    }
    case CovarianceType::Diag: {
        Matrix c = Matrix::Zero(q, q);
        c.diagonal() = s.diagonal() + ridge;
        return c;
    }
    case CovarianceType::Spherical: {
        const double v = s.trace() / static_cast<double>(q) + ridge.mean();
        return v * Matrix::Identity(q, q);
    }
    }
    return s;
}

} // namespace detail

std::string_view to_string(ExpertKind kind) {
    return kind == ExpertKind::Gaussian ? "gaussian" : "linear";
}

ExpertKind parse_expert_kind(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "gaussian") return ExpertKind::Gaussian;
    if (t == "linear") return ExpertKind::Linear;
    throw_invalid_argument(
        "parse_expert_kind", "expert", "'" + std::string(text) + "'", "must be gaussian or linear");
}

namespace {

Matrix design_of(ExpertKind kind, const Dataset& data) {
    const Index n = data.n_samples();
    if (kind == ExpertKind::Gaussian) return Matrix::Ones(n, 1);
    Matrix design(n, data.x.cols() + 1);
    design.col(0).setOnes();
    design.rightCols(data.x.cols()) = data.x;
    return design;
}

/// The exact second pass: for each expert the weighted residual scatter Σ_i a_i r_i r_iᵀ (q×q,
/// symmetric; only the diagonal when `diagonal_only`), r_i = y_i − x̃_i W_k, not normalised.
std::vector<Matrix> residual_scatter(ExpertKind kind,
                                     const Dataset& data,
                                     const ConstMatrixRef& resp,
                                     const std::vector<Matrix>& coefficients,
                                     bool diagonal_only) {
    const Index n = data.n_samples();
    const Index K = static_cast<Index>(coefficients.size());
    const Index q = data.y.cols();
    std::vector<Matrix> total(static_cast<std::size_t>(K), Matrix::Zero(q, q));
    std::vector<detail::ExpertScratch> scratch;
    const Index slot_size = diagonal_only ? q : q * q;
    detail::reduce_blocks(
        n,
        K * slot_size,
        scratch,
        [&] {
            detail::ExpertScratch s;
            s.residuals.resize(detail::block_rows, q);
            s.columns.resize(static_cast<std::size_t>(q));
            s.weights.resize(static_cast<std::size_t>(detail::block_rows));
            return s;
        },
        [&](Index b, double* slot, detail::ExpertScratch& s) {
            const Index begin = detail::block_begin(b);
            const Index rows = detail::block_size(b, n);
            double* r = s.residuals.data();
            const Index ldr = s.residuals.outerStride();
            for (Index t = 0; t < q; ++t) s.columns[static_cast<std::size_t>(t)] = r + t * ldr;
            for (Index k = 0; k < K; ++k) {
                detail::residuals_block(kind, data, coefficients[static_cast<std::size_t>(k)], begin, rows, r, ldr);
                detail::block_weights(data, detail::resp_view(resp), k, begin, rows, s.weights.data());
                if (diagonal_only)
                    detail::weighted_sumsq_block(s.weights.data(), s.columns.data(), rows, q, slot + k * q);
                else
                    detail::weighted_crossprod_block(s.weights.data(), s.columns.data(), rows, q, q, slot + k * q * q);
            }
        },
        [&](const double* slot, Index) {
            for (Index k = 0; k < K; ++k) {
                Matrix& t = total[static_cast<std::size_t>(k)];
                if (diagonal_only)
                    t.diagonal() += Eigen::Map<const Vector>(slot + k * q, q);
                else
                    t += Eigen::Map<const Matrix>(slot + k * q * q, q, q);
            }
        });
    if (!diagonal_only)
        for (Matrix& t : total) t.triangularView<Eigen::StrictlyLower>() = t.transpose();
    return total;
}

/// One pass for the M-step: for each expert k the (p+q)×(p+q) matrix [X̃ R_k]ᵀ diag(a) [X̃ R_k]
/// around the current coefficients W_k (R_k = Y − X̃ W_k, the shifted targets), upper part:
/// G = X̃ᵀAX̃ (p×p), B = X̃ᵀAR (p×q) and C = RᵀAR (q×q; only its diagonal when
/// `diagonal_only`). With the update Δ solving G Δ = B, the new coefficients are W + Δ and
/// the scatter around them C − ΔᵀB − BᵀΔ + ΔᵀGΔ: the second pass over the data is saved, and
/// the shift by the current coefficients keeps the subtraction benign (it removes only the
/// part of C due to the update, which is small once EM settles; update_experts checks it).
std::vector<Matrix> shifted_statistics(ExpertKind kind,
                                       const Dataset& data,
                                       const ConstMatrixRef& resp,
                                       const std::vector<Matrix>& coefficients,
                                       bool diagonal_only) {
    const Index K = static_cast<Index>(coefficients.size());
    const Index m = detail::statistics_size(kind, data);
    std::vector<Matrix> total(static_cast<std::size_t>(K), Matrix::Zero(m, m));
    std::vector<detail::StatisticsScratch> scratch;
    const detail::RespView view = detail::resp_view(resp);
    detail::reduce_blocks(
        data.n_samples(),
        K * m * m,
        scratch,
        [&] { return detail::make_statistics_scratch(kind, data); },
        [&](Index b, double* slot, detail::StatisticsScratch& s) {
            detail::shifted_statistics_block(kind, data, view, coefficients, diagonal_only, b, slot, s);
        },
        [&](const double* slot, Index) { detail::add_statistics(total, slot); });
    return total;
}

/// Weighted least squares from the normal equations G W = R (G = X̃ᵀAX̃, R = X̃ᵀAY) by
/// Cholesky; a numerically singular G falls back to the minimum-norm solution.
Matrix solve_normal_equations(const Matrix& gram, const Matrix& rhs, bool& rank_deficient) {
    Eigen::LLT<Matrix> llt(gram);
    if (llt.info() == Eigen::Success) {
        // Guard against a numerically singular Gram matrix that LLT still accepted.
        const auto d = llt.matrixLLT().diagonal().array().abs();
        if (d.minCoeff() > 1e-7 * d.maxCoeff()) return llt.solve(rhs);
    }
    rank_deficient = true;
    Eigen::CompleteOrthogonalDecomposition<Matrix> cod(gram);
    return cod.solve(rhs);
}

/// Splits a normal_equations matrix into G (p×p, symmetric) and R (p×q).
void split_normal_equations(const Matrix& ne, Index p, Matrix& gram, Matrix& rhs) {
    gram = ne.topLeftCorner(p, p);
    gram.triangularView<Eigen::StrictlyLower>() = gram.transpose();
    rhs = ne.topRightCorner(p, ne.cols() - p);
}


/// Applies the covariance structure and the ridge to per-expert scatter matrices S_k (already
/// divided by n_k) and returns the covariance to factor for expert k.
Vector ridge_of(const ExpertRegularization& reg, Index q) {
    if (reg.scale.size() == q) return reg.reg_covar * reg.scale;
    return Vector::Constant(q, reg.reg_covar);
}

} // namespace

Matrix expert_design(const Experts& experts, const Dataset& data) {
    return design_of(experts.kind, data);
}

Matrix expert_mean(const Experts& experts, const Dataset& data, Index k) {
    const Matrix& w = experts.coefficients[static_cast<std::size_t>(k)];
    const Index n = data.n_samples();
    if (experts.kind == ExpertKind::Gaussian) return w.replicate(n, 1);
    Matrix mean = data.x * w.bottomRows(w.rows() - 1);
    mean.rowwise() += w.row(0);
    return mean;
}

Matrix expert_log_densities(const Experts& experts, const Dataset& data) {
    const Index n = data.n_samples();
    Matrix out(n, experts.n_experts());
    std::vector<detail::ExpertScratch> scratch;
    detail::for_each_block(
        n,
        scratch,
        [&] {
            detail::ExpertScratch s;
            detail::reserve_scratch(s, experts);
            return s;
        },
        [&](Index b, detail::ExpertScratch& s) {
            const Index begin = detail::block_begin(b);
            detail::expert_log_densities_block(
                experts, data, begin, detail::block_size(b, n), out.data() + begin, out.outerStride(), s);
        });
    return out;
}

Vector target_scale(const Dataset& data) {
    // Two blocked (parallel, ordered) passes: the weighted means, then Σ w (y − mean)².
    const Index q = data.y.cols();
    Vector scale(q);
    const double total = data.weights.sum();
    const Vector means = detail::weighted_column_sums(data.y, data.weights) / total;
    const Matrix no_resp(data.n_samples(), 0);
    const Matrix squares =
        residual_scatter(ExpertKind::Gaussian, data, no_resp, {Matrix(means.transpose())}, true)[0];
    for (Index j = 0; j < q; ++j) {
        const double mean = means(j);
        const double var = squares(j, j) / total;
        if (var > 0.0 && std::isfinite(var))
            scale(j) = var;
        else
            scale(j) = mean != 0.0 ? mean * mean : 1.0;
    }
    return scale;
}

namespace {

/// The shapes an expert M-step needs (misuse throws, naming the argument): at least one
/// target, one row of responsibilities per sample, and, for update_experts, K experts whose
/// coefficients and covariances fit the data. The data's own consistency (weights, finite
/// values) is validate(Dataset)'s, which `fit` runs once; not repeated per M-step here.
void check_m_step_arguments(std::string_view function, ExpertKind kind, const Dataset& data, const ConstMatrixRef& resp,
                            const Experts* experts) {
    const Index n = data.n_samples();
    const Index q = data.y.cols();
    if (q < 1)
        throw_invalid_argument(function, "data.y's column count", "0", "experts need at least one target column",
                               "pass a dataset with targets");
    if (resp.rows() != n)
        throw_invalid_argument(function, "resp's row count", std::to_string(resp.rows()),
                               "it must equal the number of samples, " + std::to_string(n),
                               "pass one row of responsibilities per sample");
    if (experts == nullptr) return;
    const Index K = experts->n_experts();
    const Index p = kind == ExpertKind::Linear ? data.x.cols() + 1 : 1;
    if (resp.cols() != K)
        throw_invalid_argument(function, "resp's column count", std::to_string(resp.cols()),
                               "it must equal the number of experts, " + std::to_string(K),
                               "pass one column of responsibilities per expert");
    if (experts->covariances.size() != experts->coefficients.size())
        throw_invalid_argument(function, "experts.covariances' size", std::to_string(experts->covariances.size()),
                               "it must equal the number of coefficient matrices, " +
                                   std::to_string(experts->coefficients.size()),
                               "give every expert its covariance");
    for (Index k = 0; k < K; ++k) {
        const Matrix& w = experts->coefficients[static_cast<std::size_t>(k)];
        if (w.rows() != p || w.cols() != q)
            throw_invalid_argument(function, "experts.coefficients[" + std::to_string(k) + "]'s shape",
                                   std::to_string(w.rows()) + " x " + std::to_string(w.cols()),
                                   "it must be " + std::to_string(p) + " x " + std::to_string(q) +
                                       " (design columns by targets of the data)",
                                   "fit the experts on data with the same inputs and targets");
    }
}

} // namespace

ExpertUpdateReport update_experts(Experts& experts,
                                  const Dataset& data,
                                  const ConstMatrixRef& resp,
                                  const ExpertRegularization& reg) {
    check_m_step_arguments("update_experts", experts.kind, data, resp, &experts);
    // n samples, p = d + 1 design columns, q targets, K experts. One blocked pass over the data
    // gathers each expert's normal equations and scatter around its current coefficients
    // (shifted_statistics); the update and the scatter around the new coefficients follow in
    // O(p²q + pq²) per expert. The raw one-pass Σ a y yᵀ − n ȳȳᵀ would cancel catastrophically
    // when the means are large against the spread; the shift by the current coefficients
    // leaves only the update's share to subtract, and if that ever costs more than 10 bits of
    // a variance the exact second pass (residual_scatter) recomputes the scatter.
    // One pass: the statistics around the current coefficients (shifted_statistics).
    const std::vector<Matrix> stats = shifted_statistics(
        experts.kind, data, resp, experts.coefficients, detail::diagonal_statistics(experts.covariance_type));
    return detail::update_experts_from(experts, data, [&]() -> ConstMatrixRef { return resp; }, reg, stats);
}

namespace detail {

bool diagonal_statistics(CovarianceType type) {
    return type == CovarianceType::Diag || type == CovarianceType::Spherical;
}

ExpertUpdateReport update_experts_from(Experts& experts,
                                       const Dataset& data,
                                       const std::function<ConstMatrixRef()>& resp,
                                       const ExpertRegularization& reg,
                                       const std::vector<Matrix>& stats) {
    const Index K = experts.n_experts();
    const Index q = data.y.cols();
    const Index p = experts.kind == ExpertKind::Linear ? data.x.cols() + 1 : 1;
    const double threshold =
        reg.min_expert_size > 0.0 ? reg.min_expert_size : static_cast<double>(p + 1);
    const Vector ridge = ridge_of(reg, q);
    ExpertUpdateReport report;
    std::vector<Matrix> coefficients = experts.coefficients;
    Vector nk(K);
    std::vector<bool> update(static_cast<std::size_t>(K), false);
    const bool diagonal = detail::diagonal_statistics(experts.covariance_type);
    std::vector<Matrix> scatter(static_cast<std::size_t>(K));
    Matrix gram;
    Matrix rhs;
    bool exact = true; // false: some scatter lost too much to the shift; recompute below
    for (Index k = 0; k < K; ++k) {
        const auto uk = static_cast<std::size_t>(k);
        const Matrix& t = stats[uk];
        nk(k) = t(0, 0);
        split_normal_equations(t, p, gram, rhs); // G and B
        Matrix delta = Matrix::Zero(p, q);
        if (nk(k) >= threshold && std::isfinite(nk(k))) {
            bool deficient = false;
            delta = solve_normal_equations(gram, rhs, deficient);
            if (deficient) {
                // The minimum-norm coefficients W (not W⁰ plus the minimum-norm update): solve
                // G W = B + G W⁰, the unshifted normal equations.
                bool again = false;
                delta = solve_normal_equations(gram, rhs + gram * experts.coefficients[uk], again) -
                        experts.coefficients[uk];
            }
            report.rank_deficient = report.rank_deficient || deficient;
            update[uk] = delta.allFinite();
            if (update[uk])
                coefficients[uk] = experts.coefficients[uk] + delta;
            else
                delta.setZero();
        }
        if (!update[uk]) report.kept.push_back(k);
        // Scatter around the new coefficients: C − ΔᵀB − BᵀΔ + ΔᵀGΔ (C alone when Δ = 0). The
        // terms subtracted can be much larger than their result: when the update is large
        // against the spread, or the inputs are far from the origin (G large, Δ's intercept and
        // slopes cancelling in x̃Δ). Their magnitude bounds the rounding error, so if it exceeds
        // 1024 × the scatter (relative error above ~2e-13: more than 10 of 52 bits lost), the
        // exact second pass computes the scatter. (For Gaussian experts: an update of more than
        // 16 standard deviations in some coordinate.)
        Matrix c = t.bottomRightCorner(q, q);
        c.triangularView<Eigen::StrictlyLower>() = c.transpose();
        const Matrix cross = delta.transpose() * rhs;
        Matrix sk = c - cross - cross.transpose() + delta.transpose() * gram * delta;
        sk = 0.5 * (sk + sk.transpose());
        const Matrix abs_delta = delta.cwiseAbs();
        const Vector magnitude = c.diagonal() + 2.0 * (abs_delta.transpose() * rhs.cwiseAbs()).diagonal() +
                                 (abs_delta.transpose() * gram.cwiseAbs() * abs_delta).diagonal();
        if (((sk.diagonal().array() * 1024.0) < magnitude.array()).any()) exact = false;
        if (diagonal) sk = Matrix(sk.diagonal().asDiagonal()); // only C's diagonal was gathered
        scatter[uk] = std::move(sk);
    }
    if (!exact) scatter = residual_scatter(experts.kind, data, resp(), coefficients, diagonal);
    // S_k, divided by n_k.
    for (Index k = 0; k < K; ++k) scatter[static_cast<std::size_t>(k)] /= std::max(nk(k), 1e-300);

    std::vector<CovarianceFactor> covariances = experts.covariances;
    if (experts.covariance_type == CovarianceType::Tied) {
        // One covariance for all experts: the pooled within-expert scatter.
        Matrix pooled = Matrix::Zero(q, q);
        for (Index k = 0; k < K; ++k) pooled += nk(k) * scatter[static_cast<std::size_t>(k)];
        pooled /= nk.sum();
        if (auto f = try_factor(detail::structured_covariance(CovarianceType::Tied, pooled, ridge))) {
            for (auto& c : covariances) c = *f;
        } else {
            // Keep every expert as it was: the shared estimate is unusable.
            for (Index k = 0; k < K; ++k) report.singular.push_back(k);
            return report;
        }
    } else {
        for (Index k = 0; k < K; ++k) {
            const auto uk = static_cast<std::size_t>(k);
            if (!update[uk]) continue;
            if (auto f = try_factor(detail::structured_covariance(experts.covariance_type, scatter[uk], ridge))) {
                covariances[uk] = *std::move(f);
            } else {
                update[uk] = false;
                coefficients[uk] = experts.coefficients[uk];
                report.singular.push_back(k);
            }
        }
    }
    for (Index k = 0; k < K; ++k) {
        const auto uk = static_cast<std::size_t>(k);
        if (update[uk]) experts.coefficients[uk] = coefficients[uk];
    }
    experts.covariances = std::move(covariances);
    return report;
}

} // namespace detail

Experts initial_experts(ExpertKind kind,
                        CovarianceType type,
                        const Dataset& data,
                        const ConstMatrixRef& resp,
                        const ExpertRegularization& reg) {
    check_m_step_arguments("initial_experts", kind, data, resp, nullptr);
    const Index K = resp.cols();
    const Index q = data.y.cols();
    // Start every expert at the pooled fit of all data, then let the M-step move the ones
    // that have enough responsibility mass. (resp with no columns: weights w_i alone.)
    const Index p = kind == ExpertKind::Linear ? data.x.cols() + 1 : 1;
    const Matrix no_resp(data.n_samples(), 0);
    // The normal equations G W = X̃ᵀAY: the one-pass statistics around W = 0 (their C part is
    // not used; around 0 it would cancel, so the scatter is the exact pass below).
    const Matrix normal = shifted_statistics(kind, data, no_resp, {Matrix::Zero(p, q)}, true)[0];
    Matrix gram;
    Matrix rhs;
    split_normal_equations(normal, p, gram, rhs);
    bool deficient = false;
    const Matrix pooled = solve_normal_equations(gram, rhs, deficient);
    const Matrix s = residual_scatter(kind, data, no_resp, {pooled}, detail::diagonal_statistics(type))[0] /
                     data.weights.sum();
    const CovarianceFactor f =
        factor_or_throw(detail::structured_covariance(type, s, ridge_of(reg, q)), "initial_experts", "the pooled covariance");
    Experts experts;
    experts.kind = kind;
    experts.covariance_type = type;
    experts.coefficients.assign(static_cast<std::size_t>(K), pooled);
    experts.covariances.assign(static_cast<std::size_t>(K), f);
    update_experts(experts, data, resp, reg);
    return experts;
}

Index n_parameters(const Experts& experts) {
    const Index K = experts.n_experts();
    const Index q = experts.n_outputs();
    const Index p = experts.n_inputs() + 1;
    return K * p * q + covariance_n_parameters(experts.covariance_type, q, K);
}

} // namespace moekit
