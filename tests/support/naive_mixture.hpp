#pragma once
/// @file naive_mixture.hpp
/// A mixture of experts held as plain numbers, and its log-likelihood computed the slow,
/// obvious way: for every sample and expert, g_k(z_i) · N(y_i; x̃_i W_k, Σ_k) with the density
/// from long-double elimination, summed literally and logged. It reads a moekit::Model's fields
/// but calls none of moekit's numerical code, so it is an independent evaluator of the
/// likelihood a fit reports (and of the reference fits' likelihoods).

#include "moekit/model.hpp"
#include "support/naive.hpp"

#include <cmath>
#include <variant>
#include <vector>

namespace moekit_test {

struct NaiveMixture {
    bool softmax = false;
    std::vector<double> weights;      ///< K mixing weights (constant gate)
    Matrix gate;                      ///< (g+1)×K softmax coefficients (softmax gate)
    std::vector<Matrix> coefficients; ///< K, (d+1)×q; row 0 the intercept (Gaussian: the mean)
    std::vector<Matrix> covariances;  ///< K, q×q
};

/// Copies the parameters out of a moekit model.
inline NaiveMixture from_model(const moekit::Model& m) {
    NaiveMixture out;
    if (const auto* c = std::get_if<moekit::ConstantGate>(&m.gate)) {
        for (Index k = 0; k < c->weights.size(); ++k)
            out.weights.push_back(c->weights(k));
    } else {
        out.softmax = true;
        out.gate = std::get<moekit::SoftmaxGate>(m.gate).coefficients;
    }
    out.coefficients = m.experts.coefficients;
    for (const auto& f : m.experts.covariances)
        out.covariances.push_back(f.covariance);
    return out;
}

/// Σ_i w_i log Σ_k g_k(z_i) p_k(y_i | x_i). x may have 0 columns (Gaussian experts), z too
/// (constant gate).
inline double naive_log_likelihood(
    const NaiveMixture& m, const Matrix& y, const Matrix& x, const Matrix& z, const Vector& w) {
    const std::size_t K = m.coefficients.size();
    long double total = 0.0L;
    for (Index i = 0; i < y.rows(); ++i) {
        std::vector<double> g;
        if (m.softmax)
            g = naive_softmax(naive_gate_scores(z, i, m.gate));
        else
            g = m.weights;
        long double p = 0.0L;
        for (std::size_t k = 0; k < K; ++k) {
            const Matrix& coef = m.coefficients[k];
            RowVector residual = y.row(i);
            for (Index c = 0; c < y.cols(); ++c) {
                long double mean = coef(0, c);
                for (Index a = 1; a < coef.rows(); ++a)
                    mean += static_cast<long double>(x(i, a - 1)) * coef(a, c);
                residual(c) = static_cast<double>(static_cast<long double>(y(i, c)) - mean);
            }
            p += static_cast<long double>(g[k]) *
                 std::exp(static_cast<long double>(
                     naive_normal_log_density(residual, m.covariances[k])));
        }
        total += static_cast<long double>(w(i)) * std::log(p);
    }
    return static_cast<double>(total);
}

} // namespace moekit_test
