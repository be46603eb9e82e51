#pragma once
/// @file covariance.hpp
/// Covariance matrices kept with their Cholesky factor, and the Gaussian log density.
/// Nothing here ever forms an explicit inverse: log det = 2 Σ log diag(L), and the Mahalanobis
/// term is a triangular solve.

#include "moekit/types.hpp"

#include <optional>
#include <string_view>

namespace moekit {

/// Structure shared by the experts' (noise) covariances (scikit-learn's four types).
enum class CovarianceType {
    Full,     ///< each expert its own q×q covariance
    Tied,     ///< one q×q covariance shared by all experts
    Diag,     ///< each expert a diagonal covariance
    Spherical ///< each expert σ²·I
};

/// A symmetric positive definite q×q matrix with its lower Cholesky factor.
struct CovarianceFactor {
    Matrix covariance; ///< q×q, symmetric positive definite
    Matrix lower;      ///< q×q lower-triangular L, covariance = L Lᵀ
    double log_det = 0.0; ///< log det(covariance) = 2 Σ log L_jj
};

/// Factors S (symmetrised as (S + Sᵀ)/2). Returns nothing if S is not positive definite or has a
/// non-finite entry; never throws.
std::optional<CovarianceFactor> try_factor(const ConstMatrixRef& s);

/// As try_factor, but throws NumericalError naming `function` and `what` with a remedy.
CovarianceFactor factor_or_throw(const ConstMatrixRef& s, std::string_view function, std::string_view what);

/// Log density of N(0, Σ) at each row of `residuals` (n×q):
/// \f$-\tfrac{q}{2}\log 2\pi - \tfrac12\log|\Sigma| - \tfrac12 \lVert L^{-1} r_i\rVert^2\f$.
/// One triangular solve for all rows. @return n values.
Vector log_normal_density(const ConstMatrixRef& residuals, const CovarianceFactor& factor);

/// Number of free parameters of K covariances of type `type` in dimension q.
Index covariance_n_parameters(CovarianceType type, Index q, Index n_experts);

std::string_view to_string(CovarianceType type);
/// Parses "full", "tied", "diag", "spherical" (case-insensitive). @throws InvalidArgument.
CovarianceType parse_covariance_type(std::string_view text);

} // namespace moekit
