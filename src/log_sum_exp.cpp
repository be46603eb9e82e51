#include "moekit/log_sum_exp.hpp"

#include "blocks.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace moekit {

namespace {
constexpr double negative_infinity = -std::numeric_limits<double>::infinity();
} // namespace

double log_add_exp(double a, double b) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
    const double m = std::max(a, b);
    if (!std::isfinite(m)) return m; // both −∞, or a +∞
    // log(e^a + e^b) = m + log1p(e^{−|a−b|}); exp underflows harmlessly to 0.
    return m + std::log1p(std::exp(std::min(a, b) - m));
}

double log_sum_exp(const ConstVectorRef& v) {
    if (v.size() == 0) return negative_infinity;
    if (v.hasNaN()) return std::numeric_limits<double>::quiet_NaN();
    const double m = v.maxCoeff();
    if (!std::isfinite(m)) return m;
    return m + std::log((v.array() - m).exp().sum());
}

namespace {

/// The reference (scalar) log-sum-exp of row i of a block, used for rows whose fast result is
/// not finite: it applies the contract exactly (NaN propagates, m = ±∞ gives m).
double log_sum_exp_row(const double* a, Index lda, Index cols) {
    double m = negative_infinity;
    for (Index k = 0; k < cols; ++k) {
        const double v = a[k * lda];
        if (std::isnan(v)) return std::numeric_limits<double>::quiet_NaN();
        m = std::max(m, v);
    }
    if (!std::isfinite(m)) return m;
    double sum = 0.0;
    for (Index k = 0; k < cols; ++k) sum += std::exp(a[k * lda] - m);
    return m + std::log(sum);
}

} // namespace

namespace detail {

namespace {

using Packet = Eigen::internal::packet_traits<double>::type;
constexpr Index packet_size = Eigen::internal::packet_traits<double>::size;

/// exp(x) on a packet with results below the smallest normal double (x < −708) flushed to 0.
/// Subnormal results cost a microcode assist each (about 2× slower here), and such a term is
/// below the resolution of every sum it enters (a log-sum-exp sum is >= 1). NaN propagates.
inline Packet exp_flushed(const Packet& x) {
    using namespace Eigen::internal;
    const Packet lo = pset1<Packet>(-708.0);
    const Packet tiny = pcmp_lt(x, lo);
    return pselect(tiny, pset1<Packet>(0.0), pexp(pselect(tiny, lo, x)));
}

} // namespace

void log_sum_exp_block(const double* a, Index lda, Index rows, Index cols, double* out) {
    using namespace Eigen::internal;
    if (cols == 0) {
        std::fill(out, out + rows, negative_infinity);
        return;
    }
    // Column-major storage: a packet of consecutive rows at a time, m = max over the columns,
    // then m + log Σ_k exp(a_k − m) with the packet exp and log.
    Index i = 0;
    for (; i + packet_size <= rows; i += packet_size) {
        Packet m = ploadu<Packet>(a + i);
        for (Index k = 1; k < cols; ++k) m = pmax(m, ploadu<Packet>(a + k * lda + i));
        Packet sum = exp_flushed(psub(ploadu<Packet>(a + i), m));
        for (Index k = 1; k < cols; ++k) sum = padd(sum, exp_flushed(psub(ploadu<Packet>(a + k * lda + i), m)));
        pstoreu(out + i, padd(m, plog(sum)));
    }
    for (; i < rows; ++i) out[i] = log_sum_exp_row(a + i, lda, cols);
    // A NaN, or a row maximum of ±∞, makes the fast result NaN (∞ − ∞): redo those rows by the
    // contract. Finite rows are exact as computed (every term is <= 1, the sum is >= 1).
    for (Index r = 0; r < rows; ++r)
        if (!std::isfinite(out[r])) out[r] = log_sum_exp_row(a + r, lda, cols);
}

void log_softmax_block(double* a, Index lda, Index rows, Index cols, double* norm) {
    log_sum_exp_block(a, lda, rows, cols, norm);
    const Eigen::Map<const Eigen::ArrayXd> lse(norm, rows);
    if (lse.isFinite().all()) {
        for (Index k = 0; k < cols; ++k) Eigen::Map<Eigen::ArrayXd>(a + k * lda, rows) -= lse;
        return;
    }
    for (Index i = 0; i < rows; ++i)
        if (std::isfinite(norm[i]))
            for (Index k = 0; k < cols; ++k) a[i + k * lda] -= norm[i];
}

void exp_block(const double* a, Index rows, double* out) {
    using namespace Eigen::internal;
    Index i = 0;
    for (; i + packet_size <= rows; i += packet_size) pstoreu(out + i, exp_flushed(ploadu<Packet>(a + i)));
    for (; i < rows; ++i) out[i] = a[i] < -708.0 ? 0.0 : std::exp(a[i]);
}

void exp_blocked(const ConstMatrixRef& a, Matrix& out) {
    const Index n = a.rows();
    const Index K = a.cols();
    out.resize(n, K);
    std::vector<char> unused;
    for_each_block(
        n, unused, [] { return char{}; }, [&](Index b, char&) {
            const Index begin = block_begin(b);
            const Index rows = block_size(b, n);
            for (Index k = 0; k < K; ++k)
                exp_block(a.data() + k * a.outerStride() + begin, rows, out.data() + k * out.outerStride() + begin);
        });
}

Vector weighted_column_sums(const ConstMatrixRef& a, const ConstVectorRef& w) {
    const Index n = a.rows();
    const Index K = a.cols();
    Vector total = Vector::Zero(K);
    std::vector<char> unused;
    reduce_blocks(
        n,
        K,
        unused,
        [] { return char{}; },
        [&](Index b, double* slot, char&) {
            const Index begin = block_begin(b);
            const Index rows = block_size(b, n);
            const Eigen::Map<const Vector> wb(w.data() + begin, rows);
            for (Index k = 0; k < K; ++k)
                slot[k] = wb.dot(Eigen::Map<const Vector>(a.data() + k * a.outerStride() + begin, rows));
        },
        [&](const double* slot, Index) { total += Eigen::Map<const Vector>(slot, K); });
    return total;
}

} // namespace detail

Vector log_sum_exp_rows(const ConstMatrixRef& a) {
    const Index n = a.rows();
    Vector out(n);
    std::vector<char> unused;
    detail::for_each_block(
        n, unused, [] { return char{}; }, [&](Index b, char&) {
            const Index begin = detail::block_begin(b);
            detail::log_sum_exp_block(
                a.data() + begin, a.outerStride(), detail::block_size(b, n), a.cols(), out.data() + begin);
        });
    return out;
}

Vector log_softmax_rows_in_place(Matrix& a) {
    const Index n = a.rows();
    Vector norm(n);
    std::vector<char> unused;
    detail::for_each_block(
        n, unused, [] { return char{}; }, [&](Index b, char&) {
            const Index begin = detail::block_begin(b);
            detail::log_softmax_block(
                a.data() + begin, a.outerStride(), detail::block_size(b, n), a.cols(), norm.data() + begin);
        });
    return norm;
}

Matrix exp_of_log(const ConstMatrixRef& a) {
    Matrix out;
    detail::exp_blocked(a, out); // the blocked kernel flushes exp(x < −708), so exp(−∞), to 0
    return out;
}

} // namespace moekit
