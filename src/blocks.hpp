#pragma once
// Internal (not installed): the fixed sample-block partition and the blocked kernels of the
// E-step and M-step (docs/performance.md).
//
// Every loop over samples runs over blocks of `block_rows` consecutive rows, in parallel
// (OpenMP, dynamic schedule: a thread that finishes early takes the next block, so a core
// shared with other work does not hold the others up) when there is more than one block. The
// partition depends only on n, never on the number of threads. Per-sample results (log
// densities, responsibilities) are computed the same way whichever thread computes them; sums
// over samples are accumulated per block and the block partials are added in block order (an
// ordered reduction). So every result is bit-identical for any number of threads.
//
// The kernels below do their own vectorised arithmetic (Eigen packets; GCC vector extensions
// for the exponential, see log_sum_exp.cpp) and never call an
// Eigen product with a long inner dimension: Eigen chooses its GEMM blocking from the number
// of threads, which would break the bit-identity.

#include "aligned_buffer.hpp"
#include "moekit/covariance.hpp"
#include "moekit/experts.hpp"
#include "moekit/gates.hpp"
#include "moekit/model.hpp"

#include <algorithm>
#include <functional>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace moekit::detail {

/// a·b + c in one rounding where the target has FMA (-march=native builds), else a multiply and
/// an add. The packet kernels use Eigen's pmadd, which does the same per lane, so a value gets
/// the same bits in a packet and in a scalar tail whatever the compiler's contraction default
/// (GCC fuses a*b+c in C++ by default, Clang only within one expression).
inline double fused_madd(double a, double b, double c) {
#ifdef __FMA__
    return __builtin_fma(a, b, c);
#else
    return a * b + c;
#endif
}

/// Rows per sample block: a block of up to 16 columns fits in L2 (512 KB).
inline constexpr Index block_rows = 4096;

/// Number of sample blocks of n rows.
inline Index n_blocks(Index n) { return (n + block_rows - 1) / block_rows; }

/// First row of block b.
inline Index block_begin(Index b) { return b * block_rows; }

/// Rows of block b of n rows.
inline Index block_size(Index b, Index n) {
    const Index rest = n - b * block_rows;
    return rest < block_rows ? rest : block_rows;
}

/// Threads an OpenMP region may use (1 without OpenMP).
inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// This thread's number inside an OpenMP region (0 outside or without OpenMP).
inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/// Calls body(b, scratch[t]) for every block b of n rows, in parallel over blocks (dynamic
/// schedule) when there is more than one; t is the calling thread, and `scratch` is resized to
/// max_threads() entries made by make_scratch() (allocated once per call, not per block). The
/// body must only write what block b owns.
template <class Scratch, class MakeScratch, class Body>
void for_each_block(Index n, std::vector<Scratch>& scratch, MakeScratch make_scratch, Body body) {
    const Index nb = n_blocks(n);
    const int threads = nb > 1 ? max_threads() : 1;
    scratch.clear();
    for (int t = 0; t < threads; ++t) scratch.push_back(make_scratch());
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
    for (Index b = 0; b < nb; ++b) body(b, scratch[static_cast<std::size_t>(thread_id())]);
}

/// An ordered reduction over the sample blocks of n rows: compute(b, slot, scratch) writes the
/// partial of block b (slot_size doubles, zero-initialised) and runs in parallel; then
/// add(slot, b) is called for b = 0, 1, ... in order, on one thread. Blocks run in rounds of a
/// few per thread, so the partials take O(threads · slot_size) memory, not O(n / block_rows ·
/// slot_size); the result does not depend on the rounds or the threads, only on the order of
/// the additions, which is fixed.
template <class Scratch, class MakeScratch, class Compute, class Add>
void reduce_blocks(Index n,
                   Index slot_size,
                   std::vector<Scratch>& scratch,
                   MakeScratch make_scratch,
                   Compute compute,
                   Add add) {
    const Index nb = n_blocks(n);
    const int threads = nb > 1 ? max_threads() : 1;
    scratch.clear();
    for (int t = 0; t < threads; ++t) scratch.push_back(make_scratch());
    // At least 4 blocks per thread per round (load balance), at most 2^22 doubles of partials.
    const Index budget = std::max<Index>(1, (Index{1} << 22) / std::max<Index>(1, slot_size));
    const Index round = std::min(nb, std::max<Index>(4 * threads, std::min<Index>(budget, 64)));
    std::vector<double> slots(static_cast<std::size_t>(round * slot_size));
    for (Index first = 0; first < nb; first += round) {
        const Index count = std::min(round, nb - first);
        std::fill(slots.begin(), slots.begin() + count * slot_size, 0.0);
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1 && count > 1)
        for (Index r = 0; r < count; ++r)
            compute(first + r, slots.data() + r * slot_size, scratch[static_cast<std::size_t>(thread_id())]);
        for (Index r = 0; r < count; ++r) add(static_cast<const double*>(slots.data() + r * slot_size), first + r);
    }
}

/// Log density of N(0, Σ) at rows [0, rows) of a column-major block: r_i = y_i − shift
/// (shift: q values, or nullptr for 0), out[i] = −½(q log 2π + log|Σ|) − ½‖L⁻¹ r_i‖². Forward
/// substitution on packets of samples; `diagonal` skips the off-diagonal part of L (diag and
/// spherical covariances, q = 1). `offset` is added to every result (a constant gate's log
/// weight, saving a pass over the block). @param scratch density_scratch_size(q) doubles.
void gaussian_log_density_block(const double* y,
                                Index ldy,
                                Index rows,
                                Index q,
                                const double* shift,
                                const CovarianceFactor& factor,
                                bool diagonal,
                                double* out,
                                double* scratch,
                                double offset = 0.0);

/// Scratch doubles gaussian_log_density_block needs for q targets.
Index density_scratch_size(Index q);

/// The constant of gaussian_log_density_block: offset − ½(q log 2π + log|Σ|).
double log_density_constant(const CovarianceFactor& factor, Index q, double offset);

/// Linear experts whose residuals are formed in one sweep when they are not kept.
inline constexpr Index linear_expert_group = 4;

/// Per-thread work space of the expert kernels, allocated once per call of a blocked
/// operation (never per block).
struct ExpertScratch {
    Matrix residuals;                   ///< block_rows × (q · experts per sweep)
    Matrix stacked;                     ///< a group of linear experts' coefficients, side by side
    std::vector<const double*> columns; ///< column pointers of a block
    AlignedBuffer weights;              ///< block_rows weights w_i h_ik
    AlignedBuffer buffer;               ///< density kernel scratch
    /// Where linear experts' residuals are kept (expert k's q columns at keep + k·q·keep_ld,
    /// leading dimension keep_ld) instead of `residuals`, for the M-step statistics of the same
    /// pass; null: not kept.
    double* keep = nullptr;
    Index keep_ld = 0;
};

/// Sizes `s` for `experts` (q targets, p = d + 1 design columns).
void reserve_scratch(ExpertScratch& s, const Experts& experts);

/// log p_k(y_i | x_i) for rows [begin, begin + rows) of `data`, written to out[i + k·ld]; plus
/// offsets[k] when `offsets` is not null.
void expert_log_densities_block(const Experts& experts,
                                const Dataset& data,
                                Index begin,
                                Index rows,
                                double* out,
                                Index ld,
                                ExpertScratch& scratch,
                                const double* offsets = nullptr);

/// Per-thread work space of the tree gate's blocked E-step kernel.
struct TreeGateScratch {
    Matrix scores;              ///< block_rows × (largest branching): one node's log-softmax
    AlignedBuffer norm;         ///< block_rows
};

/// Sizes `s` for `tree`.
void reserve_scratch(TreeGateScratch& s, const TreeGate& tree);

/// log g_k(z_i) of a tree gate (HME) for rows [begin, begin + rows) of `data`, written to
/// out[i + k·ld] (K leaves; ld >= rows): per node the scores z̃_i V and their log-softmax,
/// summed along each path while the block is in cache. The same bits as
/// gate_log_probabilities(tree, data) (which runs this kernel over every block).
void tree_gate_log_probabilities_block(
    const TreeGate& tree, const Dataset& data, Index begin, Index rows, double* out, Index ld, TreeGateScratch& s);

/// A softmax gate's scores z̃_i V for rows [begin, begin + rows) of `data` (intercept, then the
/// gate inputs), to out[i + k·ld]: the same kernel and order as the gate's Newton passes.
void softmax_gate_scores_block(const Matrix& v, const Dataset& data, Index begin, Index rows, double* out, Index ld);

/// Σ_{i<rows} w_i v_i of one block: a block's share of the weighted log-likelihood
/// Σ_i w_i log p(y_i | x_i). Four packet accumulators over the full steps of four packets (one
/// multiply-add each), summed in a fixed order, then the remaining rows in order: the order
/// depends only on `rows`. (A single running sum in row order waited on every multiply-add's
/// latency: 7% of a mixture-of-regressions pass.)
inline double weighted_sum_block(const double* w, const double* v, Index rows) {
    using namespace Eigen::internal;
    using Packet = packet_traits<double>::type;
    constexpr Index size = packet_traits<double>::size;
    Packet c[4] = {pset1<Packet>(0.0), pset1<Packet>(0.0), pset1<Packet>(0.0), pset1<Packet>(0.0)};
    Index i = 0;
    for (; i + 4 * size <= rows; i += 4 * size)
        for (int t = 0; t < 4; ++t)
            c[t] = pmadd(ploadu<Packet>(w + i + t * size), ploadu<Packet>(v + i + t * size), c[t]);
    double sum = predux(padd(padd(c[0], c[1]), padd(c[2], c[3])));
    for (; i < rows; ++i) sum = fused_madd(w[i], v[i], sum);
    return sum;
}

/// Σ_i w_i v_i over all samples: weighted_sum_block per sample block, the blocks added in
/// order. The log-likelihood every fit reports, its trace and log_likelihood() are this sum,
/// so they agree to the bit.
inline double weighted_sum(const ConstVectorRef& w, const ConstVectorRef& v) {
    const Index n = v.size();
    double total = 0.0;
    for (Index b = 0; b < n_blocks(n); ++b)
        total += weighted_sum_block(w.data() + block_begin(b), v.data() + block_begin(b), block_size(b, n));
    return total;
}

/// Row-wise log-sum-exp of rows [0, rows) of a column-major block `a` (leading dimension lda,
/// `cols` columns), rows <= block_rows; the contract of log_sum_exp_rows.
void log_sum_exp_block(const double* a, Index lda, Index rows, Index cols, double* out);

/// Σ_i w_i a_ik for each column k (K values), as an ordered blocked reduction: the effective
/// expert sizes, bit-identical for any number of threads.
Vector weighted_column_sums(const ConstMatrixRef& a, const ConstVectorRef& w);

/// Row-wise softmax of a block `a` (column-major, rows <= block_rows), in place: norm[i] =
/// log Σ_k exp(a_ik) (the contract of log_sum_exp_rows), and either (prob null) a_ik becomes
/// the probability exp(a_ik − norm_i), or a_ik becomes the log-probability a_ik − norm_i and
/// prob[i + k·ldp] the probability. One exp per entry (e = exp(a − max), probability = e/Σe).
/// A row with a non-finite normaliser keeps its values as log-probabilities and gets exp of
/// them (flushed) as probabilities, as log_softmax_block followed by exp_block.
void softmax_block(double* a, Index lda, Index rows, Index cols, double* norm, double* prob = nullptr, Index ldp = 0);

/// Row-wise log-softmax in place of a block, as log_softmax_rows_in_place; the row
/// normalisers go to `norm`.
void log_softmax_block(double* a, Index lda, Index rows, Index cols, double* norm);

/// Rows j < jrows of the upper triangle of Uᵀ diag(a) U, for the block U of `rows` <=
/// block_rows rows whose m columns start at u[0..m): S(j, l) = Σ_i a_i U_ij U_il for j < jrows,
/// j <= l < m, written to the column-major m×m `s` (other entries untouched). Fixed summation
/// order (packet lanes, then the tail).
void weighted_crossprod_block(const double* a, const double* const* u, Index rows, Index m, Index jrows, double* s);

/// A block of block_rows ones: the intercept column of every design, without an n-sized
/// column of ones.
const double* ones_column();

/// Σ_i a_i U_ij² for each of the m columns (the diagonal of the above only), written to s[j].
void weighted_sumsq_block(const double* a, const double* const* u, Index rows, Index m, double* s);

/// out[j] = Σ_i u_j(i) b(i) for the nu columns u_j of a block (rows <= block_rows), fixed
/// summation order.
void dot_columns_block(const double* const* u, Index nu, const double* b, Index rows, double* out);

/// sums[k] = Σ_i w_i h_ik t_ik over the rows with h_ik > 0 (terms with h_ik = 0 count 0 even
/// where t_ik is −∞) for the K columns h_k = h + k·ldh, t_k = t + k·ldt; a fixed summation order
/// per column (its two packet accumulators, then the tail).
void masked_weighted_sums_block(
    const double* w, const double* h, Index ldh, const double* t, Index ldt, Index rows, Index K, double* sums);

/// out[i] = exp(a[i]) for a block, with results below the smallest normal double flushed to 0.
void exp_block(const double* a, Index rows, double* out);

/// Responsibilities as the block kernels read them: h_ik at h[(i − first) + k·ld] for the rows
/// of the block being processed (the whole n×K matrix: first = 0; a block's own buffer: first =
/// the block's first row); null h: every h_ik = 1 (the weights alone).
struct RespView {
    const double* h = nullptr;
    Index ld = 0;
    Index first = 0;
    const double* column(Index k, Index row) const { return h + k * ld + (row - first); }
};

/// The view of an n×K matrix (no columns: h = 1).
inline RespView resp_view(const ConstMatrixRef& resp) {
    return resp.cols() == 0 ? RespView{} : RespView{resp.data(), resp.outerStride(), 0};
}

/// Rows of a sub-block of the M-step statistics: residuals and weights stay in L1.
inline constexpr Index statistics_sub_block = 256;

/// Per-thread work space of shifted_statistics_block.
struct StatisticsScratch {
    Matrix residuals;                   ///< statistics_sub_block × q (linear, one target: × K)
    AlignedBuffer weights;              ///< statistics_sub_block
    std::vector<const double*> columns; ///< m
    Matrix part;                        ///< m × m, one sub-block's cross products
    std::vector<double> diag;           ///< q
    std::vector<double> gram;           ///< K × p × p: linear experts' X̃ᵀAX̃ of a block
    AlignedBuffer product;              ///< statistics_sub_block: a ∘ r_t
    std::vector<double> dots;           ///< p
    std::vector<const double*> resp_columns;     ///< K: h_k of the block (the Gram's weights, unit w),
                                                 ///< then of a sub-block (one target's B and C)
    std::vector<const double*> residual_columns; ///< K: r_k of a sub-block (one target)
    std::vector<double*> sums;                   ///< K: column p of each expert's slot
};

/// m = p + q, the side of an expert's M-step statistics (p = d + 1 design columns for linear
/// experts, 1 for Gaussian experts).
Index statistics_size(ExpertKind kind, const Dataset& data);

StatisticsScratch make_statistics_scratch(ExpertKind kind, const Dataset& data);

/// Block b's share of the M-step statistics around `coefficients` (W_k): for each expert the
/// upper triangle of [X̃ R_k]ᵀ diag(w h_k) [X̃ R_k], R_k = Y − X̃ W_k (only the first p rows and
/// the diagonal when `diagonal_only`), added to slot[k·m·m ...] (m×m column-major; the slot
/// starts at zero). Reads only rows of block b of `resp`. The same
/// bits whichever pass computes it: update_experts' own pass or the E-step's (fit_em).
/// `residuals`: linear experts' R_k of this block as the E-step kept them (ExpertScratch::keep,
/// leading dimension block_rows), the same bits as recomputing them; null: recomputed.
void shifted_statistics_block(ExpertKind kind,
                              const Dataset& data,
                              const RespView& resp,
                              const std::vector<Matrix>& coefficients,
                              bool diagonal_only,
                              Index b,
                              double* slot,
                              StatisticsScratch& scratch,
                              const double* residuals = nullptr);

/// total[k] += the m×m matrix at slot + k·m·m, for every expert k (in order).
void add_statistics(std::vector<Matrix>& total, const double* slot);

/// Whether update_experts gathers only the diagonal of the residual scatter.
bool diagonal_statistics(CovarianceType type);

/// update_experts with the statistics of shifted_statistics_block already gathered (by the
/// E-step pass whose responsibilities `resp` returns, around experts.coefficients): the M-step
/// without its own pass over the data. `resp` is called only if the exact second pass is
/// needed (a caller that keeps no responsibilities computes them then).
ExpertUpdateReport update_experts_from(Experts& experts,
                                       const Dataset& data,
                                       const std::function<ConstMatrixRef()>& resp,
                                       const ExpertRegularization& reg,
                                       const std::vector<Matrix>& statistics);

/// Block partial of the softmax gate's M-step objective Σ_i w_i Σ_k h_ik log g_ik (slot[0]),
/// its gradient in the free columns k >= 1 (slot[1 ..], m × (K−1), when `gradient`) and the
/// upper triangles of the Hessian blocks −Σ_i w_i g_ik (δ_kl − g_il) z̃_i z̃_iᵀ, 1 <= k <= l
/// (after the gradient, m × m each, when `hessian`), from the block's design columns, weights
/// w, targets h (`resp`), log g and g. The one kernel of the gate's
/// Newton passes and of the EM E-step pass that evaluates the first of them.
void softmax_objective_block(const double* const* columns,
                             Index m,
                             const double* w,
                             const double* resp,
                             Index ld_resp,
                             const double* log_g,
                             Index ld_log_g,
                             const double* g,
                             Index ldg,
                             Index rows,
                             Index K,
                             bool gradient,
                             bool hessian,
                             double* slot);

/// Linear scores z̃_i V of a block (a softmax gate's scores; the linear experts' fitted means,
/// linear_residuals_block): out[i + k·ld] = Σ_j V_jk u_j(i) over the m = V.rows() design
/// columns u (columns[j], rows <= block_rows); with `intercept` u_0 is the implicit column of
/// ones (columns[0] is not read) and the sum starts at V_0k. Summed in column order, one
/// multiply-add each (fused_madd / pmadd): the E-step and the gate's Newton passes get the same
/// bits, whichever columns of V are computed together.
void linear_scores_block(const ConstMatrixRef& v, const double* const* columns, bool intercept, Index rows, double* out, Index ld);

/// The upper triangles of the softmax gate's Hessian blocks −Σ_i w_i g_ik (δ_kl − g_il) z̃_i z̃_iᵀ
/// for all pairs 1 <= k <= l < K of a block (rows <= block_rows), written to out[p·m·m ...] in
/// pair order (k, then l): one sweep over the block for all pairs, in register tiles.
void softmax_hessian_block(const double* const* columns,
                           Index m,
                           const double* w,
                           const double* g,
                           Index ldg,
                           Index rows,
                           Index K,
                           double* out);

/// The ordered sum of softmax_objective_block partials, and the objective, gradient and
/// Hessian they give (penalty included) for coefficients V.
class SoftmaxObjectiveTotals {
public:
    SoftmaxObjectiveTotals(Index m, Index K, bool gradient, bool hessian);
    /// Doubles of one block's partial.
    Index slot_size() const;
    /// Adds one block's partial (call in block order).
    void add(const double* slot);
    /// The objective minus the L2 penalty; the gradient and full Hessian in the free
    /// parameters when asked for (and gathered).
    double finish(const Matrix& v, double gate_l2, Vector* gradient, Matrix* hessian);

private:
    Index m_;
    Index free_;
    bool gradient_;
    double value_ = 0.0;
    Matrix grad_;
    std::vector<Matrix> blocks_;
};

/// The softmax gate's objective, gradient and Hessian at its current coefficients for given
/// responsibilities: the start of its Newton iteration.
struct SoftmaxStart {
    double value = 0.0;
    Vector gradient;
    Matrix hessian;
};

/// update_gate for a softmax gate whose objective, gradient and Hessian at the current
/// coefficients (with targets resp) are already known (gathered by e_step_with_statistics):
/// the Newton iteration without its first pass over the data.
GateUpdateReport update_softmax_gate_from(SoftmaxGate& gate,
                                          const Dataset& data,
                                          const ConstMatrixRef& resp,
                                          const GateOptions& options,
                                          const SoftmaxStart& start);

/// What e_step_with_statistics gathers besides h: the experts' M-step statistics and, for a
/// dense softmax gate, the start of its Newton iteration.
struct EStepStatistics {
    std::vector<Matrix> experts;
    bool has_gate_start = false;
    SoftmaxStart gate_start;
    double log_likelihood = 0.0; ///< Σ_i w_i log p(y_i | x_i), block partials in block order
};

/// The blocked E-step of e_step_probabilities (h, log_norm), which also gathers, block by
/// block while the block is in cache, the M-step statistics around the model's experts
/// (shifted_statistics_block; statistics.experts[k] is m×m, upper triangle filled) and, for a
/// dense softmax gate, the objective, gradient and Hessian of its M-step at the current
/// coefficients (softmax_objective_block; gate_l2 is the gate's penalty): one ordered
/// reduction, so one pass over the data does the E-step, the experts' M-step statistics and
/// the gate's first Newton evaluation.
///
/// With h and log_norm null the responsibilities are not kept: each block's live in a
/// per-thread buffer only while its statistics are gathered, and nothing of size n is written
/// (for gates whose M-step needs no responsibilities beyond the statistics: constant and hash;
/// not for a softmax gate, whose Newton start is then not gathered).
void e_step_with_statistics(const Model& model,
                            const Dataset& data,
                            double gate_l2,
                            Matrix* h,
                            Vector* log_norm,
                            EStepStatistics& statistics);

/// r = y − x̃ W (linear experts) for rows [begin, begin + rows) into r (rows × W.cols(),
/// leading dimension ldr). W may hold several experts' coefficients side by side (p × G·q):
/// column c is fitted to target c mod q. Each residual has the same bits whatever the grouping.
void linear_residuals_block(const Dataset& data, const ConstMatrixRef& w, Index begin, Index rows, double* r, Index ldr);

} // namespace moekit::detail
