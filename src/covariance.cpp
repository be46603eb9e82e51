#include "moekit/covariance.hpp"

#include "moekit/errors.hpp"
#include "detail.hpp"

#include <boost/math/constants/constants.hpp>

#include <cctype>
#include <cmath>
#include <string>

namespace moekit {

std::optional<CovarianceFactor> try_factor(const ConstMatrixRef& s) {
    if (s.rows() != s.cols() || s.rows() == 0 || !s.allFinite()) return std::nullopt;
    CovarianceFactor f;
    f.covariance = 0.5 * (s + s.transpose());
    Eigen::LLT<Matrix> llt(f.covariance);
    if (llt.info() != Eigen::Success) return std::nullopt;
    f.lower = llt.matrixL();
    const auto diag = f.lower.diagonal().array();
    if (!(diag > 0.0).all() || !diag.allFinite()) return std::nullopt;
    f.log_det = 2.0 * diag.log().sum();
    if (!std::isfinite(f.log_det)) return std::nullopt;
    return f;
}

CovarianceFactor factor_or_throw(const ConstMatrixRef& s, std::string_view function, std::string_view what) {
    auto f = try_factor(s);
    if (!f) {
        std::string message(function);
        message.append(": ").append(what).append(
            " is not symmetric positive definite. Increase --reg-covar, reduce the number of "
            "experts, or check the data for constant or collinear columns.");
        throw NumericalError(message);
    }
    return *std::move(f);
}

Vector log_normal_density(const ConstMatrixRef& residuals, const CovarianceFactor& factor) {
    const Index q = residuals.cols();
    const double log_two_pi = 2.0 * boost::math::constants::log_root_two_pi<double>();
    // Mahalanobis term by one triangular solve for all samples: ‖L⁻¹ r_i‖².
    const Matrix solved = factor.lower.triangularView<Eigen::Lower>().solve(residuals.transpose());
    const Vector maha = solved.colwise().squaredNorm().transpose();
    return (-0.5 * (static_cast<double>(q) * log_two_pi + factor.log_det) - 0.5 * maha.array()).matrix();
}

Index covariance_n_parameters(CovarianceType type, Index q, Index n_experts) {
    switch (type) {
    case CovarianceType::Full: return n_experts * q * (q + 1) / 2;
    case CovarianceType::Tied: return q * (q + 1) / 2;
    case CovarianceType::Diag: return n_experts * q;
    case CovarianceType::Spherical: return n_experts;
    }
    return 0;
}

std::string_view to_string(CovarianceType type) {
    switch (type) {
    case CovarianceType::Full: return "full";
    case CovarianceType::Tied: return "tied";
    case CovarianceType::Diag: return "diag";
    case CovarianceType::Spherical: return "spherical";
    }
    return "?";
}

namespace detail {
std::string lower_case(std::string_view text) {
    std::string out(text);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}
} // namespace detail

CovarianceType parse_covariance_type(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "full") return CovarianceType::Full;
    if (t == "tied") return CovarianceType::Tied;
    if (t == "diag" || t == "diagonal") return CovarianceType::Diag;
    if (t == "spherical") return CovarianceType::Spherical;
    throw_invalid_argument("parse_covariance_type",
                           "covariance",
                           "'" + std::string(text) + "'",
                           "must be one of full, tied, diag, spherical");
}

} // namespace moekit
