#pragma once

#include "moekit/covariance.hpp"
// Internal helpers shared by the library's sources (not installed).

#include "moekit/types.hpp"

#include <string>
#include <string_view>

namespace moekit::detail {

/// log|Σ| = 2 Σ_j log L_jj from a Cholesky factor L (summed in order, std::log).
double log_det_of_factor(const Matrix& lower);

/// ASCII lower-case copy, for case-insensitive option parsing.
std::string lower_case(std::string_view text);

/// A covariance estimate of structure `type` from a q×q scatter s (already divided by its mass),
/// plus the ridge on the diagonal: full/tied s + diag(ridge); diag its diagonal + ridge;
/// spherical (tr(s)/q + mean(ridge))·I.
Matrix structured_covariance(CovarianceType type, const Matrix& s, const Vector& ridge);

} // namespace moekit::detail
