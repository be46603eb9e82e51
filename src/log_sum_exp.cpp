#include "moekit/log_sum_exp.hpp"

#include <cmath>
#include <limits>

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

Vector log_sum_exp_rows(const ConstMatrixRef& a) {
    Vector out(a.rows());
    if (a.cols() == 0) {
        out.setConstant(negative_infinity);
        return out;
    }
    // Column-major storage: accumulate column by column so the inner loop is contiguous.
    Vector m = a.rowwise().maxCoeff();
    Vector sum = Vector::Zero(a.rows());
    for (Index k = 0; k < a.cols(); ++k) sum.array() += (a.col(k) - m).array().exp();
    for (Index i = 0; i < a.rows(); ++i) {
        if (std::isnan(m(i)) || a.row(i).hasNaN())
            out(i) = std::numeric_limits<double>::quiet_NaN();
        else if (!std::isfinite(m(i)))
            out(i) = m(i);
        else
            out(i) = m(i) + std::log(sum(i));
    }
    return out;
}

Vector log_softmax_rows_in_place(Matrix& a) {
    Vector norm = log_sum_exp_rows(a);
    for (Index i = 0; i < a.rows(); ++i)
        if (std::isfinite(norm(i))) a.row(i).array() -= norm(i);
    return norm;
}

} // namespace moekit
