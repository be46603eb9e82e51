#pragma once
/// @file experts.hpp
/// The experts p_k(y | x).
///
/// Both expert families are Gaussian linear models N(y; W_kᵀ x̃, Σ_k) with x̃ = (1, x):
///  - Gaussian experts ignore x: x̃ = (1), so W_k is the 1×q mean μ_k;
///  - linear-regression experts use the d expert inputs: W_k is (d+1)×q, row 0 the intercept.
/// One representation serves both (docs/architecture.md says why): the family is recorded in
/// `kind`, which decides only which inputs make the design x̃ and how the model file names the
/// parameters. The covariance structure is shared by all experts (`covariance_type`).

#include "moekit/covariance.hpp"
#include "moekit/dataset.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace moekit {

enum class ExpertKind {
    Gaussian, ///< N(y; μ_k, Σ_k), ignores x
    Linear    ///< N(y; W_kᵀ x̃, Σ_k), x̃ = (1, x)
};

std::string_view to_string(ExpertKind kind);
/// Parses "gaussian" or "linear" (case-insensitive). @throws InvalidArgument.
ExpertKind parse_expert_kind(std::string_view text);

/// K experts of one family.
struct Experts {
    ExpertKind kind = ExpertKind::Gaussian;
    CovarianceType covariance_type = CovarianceType::Full;
    std::vector<Matrix> coefficients;          ///< K matrices, (d+1)×q (Gaussian: 1×q = μ_kᵀ)
    std::vector<CovarianceFactor> covariances; ///< K factors, q×q (Tied: K equal copies)

    Index n_experts() const { return static_cast<Index>(coefficients.size()); }
    Index n_outputs() const { return coefficients.empty() ? 0 : coefficients[0].cols(); }
    /// d, the number of expert inputs (0 for Gaussian experts).
    Index n_inputs() const { return coefficients.empty() ? 0 : coefficients[0].rows() - 1; }
};

/// The design matrix x̃ = (1, x) of the experts: n×(d+1); a column of ones for Gaussian experts.
Matrix expert_design(const Experts& experts, const Dataset& data);

/// Conditional mean of expert k at every sample: x̃ W_k, n×q.
Matrix expert_mean(const Experts& experts, const Dataset& data, Index k);

/// log p_k(y_i | x_i) for every sample and expert: n×K.
Matrix expert_log_densities(const Experts& experts, const Dataset& data);

/// Regularisation of the expert M-step (all named options, see docs/model.md).
struct ExpertRegularization {
    /// Added to the diagonal of every covariance estimate, relative to the scale of the data:
    /// Σ_k += reg_covar · diag(s²), with s²_j the weighted variance of target j over all
    /// samples (see target_scale). Scale-aware, so the default does not move maximum-likelihood
    /// answers whatever the units of y (an absolute 1e-6 would be 5% of a variance of 2e-5).
    double reg_covar = 1e-8;
    /// Scale s² per target (q values) that reg_covar multiplies; computed once per fit by
    /// `target_scale`. Empty means unit scale.
    Vector scale;
    /// An expert whose effective size Σ_i w_i h_ik falls below this keeps its previous
    /// parameters (and a warning is recorded). Values <= 0 select the automatic threshold:
    /// the number of coefficients per target, d + 1, plus one.
    double min_expert_size = 0.0;
};

/// The scale used by reg_covar (see ExpertRegularization::scale): the weighted variance of each
/// of the q target columns; a constant column uses its squared value instead (or 1 if it is 0),
/// so that it still gets a positive ridge.
Vector target_scale(const Dataset& data);

/// What an expert M-step did besides the plain update.
struct ExpertUpdateReport {
    std::vector<Index> kept;     ///< experts that kept their previous parameters (too small)
    std::vector<Index> singular; ///< experts whose covariance estimate was not SPD (kept)
    bool rank_deficient = false; ///< some weighted design was rank deficient (min-norm solution)
};

/// Closed-form M-step: weighted least squares (weighted mean for Gaussian experts) per expert
/// and the weighted residual covariance of the chosen structure, with weights w_i h_ik.
/// @param resp n×K responsibilities (rows sum to 1).
/// Experts that are too small or whose covariance cannot be factored keep their previous
/// parameters; `experts` is otherwise updated in place and always stays valid.
/// @throws InvalidArgument (experts unchanged) if the data have no target, `resp` is not
/// n × K, or a coefficient matrix is not (design columns) × (targets) of the data.
ExpertUpdateReport update_experts(Experts& experts,
                                  const Dataset& data,
                                  const ConstMatrixRef& resp,
                                  const ExpertRegularization& reg);

/// Builds K experts from responsibilities (the first M-step of an initialisation). Experts too
/// small for their own estimate get the pooled estimate of all data.
/// @throws InvalidArgument if the data have no target or `resp` has not n rows.
Experts initial_experts(ExpertKind kind,
                        CovarianceType type,
                        const Dataset& data,
                        const ConstMatrixRef& resp,
                        const ExpertRegularization& reg);

/// Free parameters of the experts: K·(d+1)·q coefficients plus the covariances.
Index n_parameters(const Experts& experts);

} // namespace moekit
