#pragma once
/// @file naive.hpp
/// Deliberately naive reference implementations for the numerical tests.
///
/// Everything here is written out loop by loop in long double, with textbook algorithms that
/// moekit itself does not use (Gaussian elimination with partial pivoting instead of Cholesky,
/// log(Σ exp) without a shift, normal equations instead of a QR/LLT solve). They are the
/// independent truth the tests compare moekit against: none of them calls moekit.

#include "moekit/types.hpp"

#include <cmath>
#include <cstddef>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <vector>

namespace moekit_test {

using moekit::Index;
using moekit::Matrix;
using moekit::RowVector;
using moekit::Vector;

/// A square system in long double.
using LongMatrix = std::vector<std::vector<long double>>;

inline LongMatrix to_long(const Matrix& a) {
    LongMatrix out(static_cast<std::size_t>(a.rows()),
                   std::vector<long double>(static_cast<std::size_t>(a.cols())));
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < a.cols(); ++j)
            out[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = a(i, j);
    return out;
}

/// log Σ_j exp(v_j) computed literally (no max shift). Only valid where exp does not overflow.
inline double naive_log_sum_exp(const std::vector<double>& v) {
    long double sum = 0.0L;
    for (double x : v)
        sum += std::exp(static_cast<long double>(x));
    return static_cast<double>(std::log(sum));
}

/// Result of Gaussian elimination: solution columns and the determinant.
struct Elimination {
    Matrix solution;         ///< A⁻¹ B
    long double determinant; ///< det A
};

/// Solves A X = B by Gaussian elimination with partial pivoting in long double, and returns
/// det A as the product of the pivots (with the permutation sign).
inline Elimination naive_solve(const Matrix& a, const Matrix& b) {
    const std::size_t n = static_cast<std::size_t>(a.rows());
    const std::size_t m = static_cast<std::size_t>(b.cols());
    LongMatrix aa = to_long(a);
    LongMatrix bb = to_long(b);
    long double det = 1.0L;
    for (std::size_t col = 0; col < n; ++col) {
        std::size_t pivot = col;
        for (std::size_t r = col + 1; r < n; ++r)
            if (std::fabs(aa[r][col]) > std::fabs(aa[pivot][col])) pivot = r;
        if (aa[pivot][col] == 0.0L) throw std::runtime_error("naive_solve: singular matrix");
        if (pivot != col) {
            std::swap(aa[pivot], aa[col]);
            std::swap(bb[pivot], bb[col]);
            det = -det;
        }
        det *= aa[col][col];
        for (std::size_t r = col + 1; r < n; ++r) {
            const long double f = aa[r][col] / aa[col][col];
            for (std::size_t c = col; c < n; ++c)
                aa[r][c] -= f * aa[col][c];
            for (std::size_t c = 0; c < m; ++c)
                bb[r][c] -= f * bb[col][c];
        }
    }
    Matrix x(static_cast<Index>(n), static_cast<Index>(m));
    for (std::size_t c = 0; c < m; ++c) {
        for (std::size_t ri = n; ri-- > 0;) {
            long double s = bb[ri][c];
            for (std::size_t k = ri + 1; k < n; ++k)
                s -= aa[ri][k] *
                     static_cast<long double>(x(static_cast<Index>(k), static_cast<Index>(c)));
            x(static_cast<Index>(ri), static_cast<Index>(c)) = static_cast<double>(s / aa[ri][ri]);
        }
    }
    return {x, det};
}

/// log N(r; 0, Σ) for one residual row, via elimination (no Cholesky):
/// −q/2 log 2π − ½ log det Σ − ½ rᵀ Σ⁻¹ r.
inline double naive_normal_log_density(const RowVector& residual, const Matrix& cov) {
    const Index q = residual.size();
    const Elimination e = naive_solve(cov, residual.transpose());
    long double maha = 0.0L;
    for (Index j = 0; j < q; ++j)
        maha += static_cast<long double>(residual(j)) * static_cast<long double>(e.solution(j, 0));
    const long double log_two_pi = std::log(2.0L * std::numbers::pi_v<long double>);
    return static_cast<double>(-0.5L * static_cast<long double>(q) * log_two_pi -
                               0.5L * std::log(e.determinant) - 0.5L * maha);
}

/// Weighted mean of the rows of y with weights a (Σ a_i y_i / Σ a_i), by a plain loop.
inline RowVector naive_weighted_mean(const Matrix& y, const Vector& a) {
    RowVector mean = RowVector::Zero(y.cols());
    long double total = 0.0L;
    for (Index i = 0; i < y.rows(); ++i)
        total += a(i);
    for (Index j = 0; j < y.cols(); ++j) {
        long double s = 0.0L;
        for (Index i = 0; i < y.rows(); ++i)
            s += static_cast<long double>(a(i)) * y(i, j);
        mean(j) = static_cast<double>(s / total);
    }
    return mean;
}

/// Weighted ML scatter Σ a_i (r_i)(r_i)ᵀ / Σ a_i of residual rows r, by a plain loop.
inline Matrix naive_weighted_covariance(const Matrix& residuals, const Vector& a) {
    const Index q = residuals.cols();
    Matrix cov(q, q);
    long double total = 0.0L;
    for (Index i = 0; i < residuals.rows(); ++i)
        total += a(i);
    for (Index j = 0; j < q; ++j)
        for (Index l = 0; l < q; ++l) {
            long double s = 0.0L;
            for (Index i = 0; i < residuals.rows(); ++i)
                s += static_cast<long double>(a(i)) * residuals(i, j) * residuals(i, l);
            cov(j, l) = static_cast<double>(s / total);
        }
    return cov;
}

/// Weighted least squares by the normal equations (X̃ᵀ A X̃) W = X̃ᵀ A Y, built entry by entry
/// and solved by elimination. design n×p, y n×q, a n weights. @return p×q.
inline Matrix naive_weighted_least_squares(const Matrix& design, const Matrix& y, const Vector& a) {
    const Index p = design.cols();
    Matrix gram(p, p);
    Matrix rhs(p, y.cols());
    for (Index r = 0; r < p; ++r) {
        for (Index c = 0; c < p; ++c) {
            long double s = 0.0L;
            for (Index i = 0; i < design.rows(); ++i)
                s += static_cast<long double>(a(i)) * design(i, r) * design(i, c);
            gram(r, c) = static_cast<double>(s);
        }
        for (Index c = 0; c < y.cols(); ++c) {
            long double s = 0.0L;
            for (Index i = 0; i < design.rows(); ++i)
                s += static_cast<long double>(a(i)) * design(i, r) * y(i, c);
            rhs(r, c) = static_cast<double>(s);
        }
    }
    return naive_solve(gram, rhs).solution;
}

/// Softmax of one row of scores, literally exp(s_k) / Σ exp(s_j) in long double.
inline std::vector<double> naive_softmax(const std::vector<double>& scores) {
    long double total = 0.0L;
    for (double s : scores)
        total += std::exp(static_cast<long double>(s));
    std::vector<double> out;
    for (double s : scores)
        out.push_back(static_cast<double>(std::exp(static_cast<long double>(s)) / total));
    return out;
}

/// Gate scores z̃_i V (row i of the softmax gate's linear predictor), by a plain loop.
/// z: n×g gate inputs (no intercept column); coefficients: (g+1)×K.
inline std::vector<double> naive_gate_scores(const Matrix& z, Index i, const Matrix& coefficients) {
    std::vector<double> scores;
    for (Index k = 0; k < coefficients.cols(); ++k) {
        long double s = coefficients(0, k);
        for (Index j = 0; j < z.cols(); ++j)
            s += static_cast<long double>(z(i, j)) * coefficients(j + 1, k);
        scores.push_back(static_cast<double>(s));
    }
    return scores;
}

/// Relative-plus-absolute closeness used throughout: |a − b| <= rel·|b| + abs.
inline bool close(double a, double b, double rel, double abs) {
    return std::fabs(a - b) <= rel * std::fabs(b) + abs;
}

/// Largest |a_ij − b_ij| (infinity if the shapes differ).
inline double max_abs_diff(const Matrix& a, const Matrix& b) {
    if (a.rows() != b.rows() || a.cols() != b.cols())
        return std::numeric_limits<double>::infinity();
    double m = 0.0;
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < a.cols(); ++j)
            m = std::max(m, std::fabs(a(i, j) - b(i, j)));
    return m;
}

} // namespace moekit_test
