#include "moekit/experts.hpp"

#include "detail.hpp"
#include "moekit/errors.hpp"

#include <algorithm>
#include <cmath>

namespace moekit {

namespace detail {
Matrix weighted_gram(const ConstMatrixRef& x, const ConstVectorRef& a) {
    const Matrix xa = x.array().colwise() * a.array();
    Matrix g(x.cols(), x.cols());
    g.noalias() = xa.transpose() * x;
    return 0.5 * (g + g.transpose());
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

/// Weighted least squares W = argmin Σ a_i ‖y_i − x̃_i W‖² via the normal equations
/// (Cholesky); a rank-deficient design falls back to the minimum-norm solution.
Matrix weighted_least_squares(const Matrix& design,
                              const Matrix& y,
                              const Vector& a,
                              bool& rank_deficient) {
    const Matrix gram = detail::weighted_gram(design, a);
    const Matrix xa = design.array().colwise() * a.array();
    const Matrix rhs = xa.transpose() * y;
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

/// Weighted residual scatter Σ a_i r_i r_iᵀ (q×q), not normalised.
Matrix weighted_scatter(const Matrix& residuals, const Vector& a) {
    return detail::weighted_gram(residuals, a);
}

/// Applies the covariance structure and the ridge to per-expert scatter matrices S_k (already
/// divided by n_k) and returns the covariance to factor for expert k.
Matrix structured(CovarianceType type, const Matrix& s, const Vector& ridge) {
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
    const Index K = experts.n_experts();
    Matrix out(n, K);
    for (Index k = 0; k < K; ++k) {
        const Matrix residuals = data.y - expert_mean(experts, data, k);
        out.col(k) = log_normal_density(residuals, experts.covariances[static_cast<std::size_t>(k)]);
    }
    return out;
}

Vector target_scale(const Dataset& data) {
    const Index q = data.y.cols();
    Vector scale(q);
    const double total = data.weights.sum();
    for (Index j = 0; j < q; ++j) {
        const double mean = data.weights.dot(data.y.col(j)) / total;
        const double var =
            data.weights.dot((data.y.col(j).array() - mean).square().matrix()) / total;
        if (var > 0.0 && std::isfinite(var))
            scale(j) = var;
        else
            scale(j) = mean != 0.0 ? mean * mean : 1.0;
    }
    return scale;
}

ExpertUpdateReport update_experts(Experts& experts,
                                  const Dataset& data,
                                  const ConstMatrixRef& resp,
                                  const ExpertRegularization& reg) {
    // n samples, p = d + 1 design columns, q targets, K experts.
    const Index K = experts.n_experts();
    const Index q = data.y.cols();
    const Matrix design = design_of(experts.kind, data);
    const Index p = design.cols();
    const double threshold =
        reg.min_expert_size > 0.0 ? reg.min_expert_size : static_cast<double>(p + 1);
    const Vector ridge = ridge_of(reg, q);

    ExpertUpdateReport report;
    std::vector<Matrix> coefficients = experts.coefficients;
    std::vector<Matrix> scatter(static_cast<std::size_t>(K)); // S_k, divided by n_k
    Vector nk(K);
    std::vector<bool> update(static_cast<std::size_t>(K), false);

    for (Index k = 0; k < K; ++k) {
        const auto uk = static_cast<std::size_t>(k);
        const Vector a = data.weights.cwiseProduct(resp.col(k));
        nk(k) = a.sum();
        if (nk(k) >= threshold && std::isfinite(nk(k))) {
            bool deficient = false;
            coefficients[uk] = weighted_least_squares(design, data.y, a, deficient);
            report.rank_deficient = report.rank_deficient || deficient;
            update[uk] = coefficients[uk].allFinite();
            if (!update[uk]) coefficients[uk] = experts.coefficients[uk];
        }
        if (!update[uk]) report.kept.push_back(k);
        const Matrix residuals = data.y - design * coefficients[uk];
        scatter[uk] = weighted_scatter(residuals, a) / std::max(nk(k), 1e-300);
    }

    std::vector<CovarianceFactor> covariances = experts.covariances;
    if (experts.covariance_type == CovarianceType::Tied) {
        // One covariance for all experts: the pooled within-expert scatter.
        Matrix pooled = Matrix::Zero(q, q);
        for (Index k = 0; k < K; ++k) pooled += nk(k) * scatter[static_cast<std::size_t>(k)];
        pooled /= nk.sum();
        if (auto f = try_factor(structured(CovarianceType::Tied, pooled, ridge))) {
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
            if (auto f = try_factor(structured(experts.covariance_type, scatter[uk], ridge))) {
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

Experts initial_experts(ExpertKind kind,
                        CovarianceType type,
                        const Dataset& data,
                        const ConstMatrixRef& resp,
                        const ExpertRegularization& reg) {
    const Index K = resp.cols();
    const Index q = data.y.cols();
    const Matrix design = design_of(kind, data);
    // Start every expert at the pooled fit of all data, then let the M-step move the ones
    // that have enough responsibility mass.
    bool deficient = false;
    const Matrix pooled = weighted_least_squares(design, data.y, data.weights, deficient);
    const Matrix residuals = data.y - design * pooled;
    const Matrix s = weighted_scatter(residuals, data.weights) / data.weights.sum();
    const CovarianceFactor f =
        factor_or_throw(structured(type, s, ridge_of(reg, q)), "initial_experts", "the pooled covariance");
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
