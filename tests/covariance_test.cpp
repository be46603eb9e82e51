// Tests of covariance factors and the Gaussian log density (include/moekit/covariance.hpp).
// Truths: determinants and inverses of 2×2 matrices worked out by hand, Boost.Math's normal
// pdf for q = 1, a long-double elimination for q = 3, and the parameter counts of the four
// covariance structures written out from their definitions.

#include "moekit/covariance.hpp"
#include "moekit/errors.hpp"
#include "support/naive.hpp"

#include <boost/math/distributions/normal.hpp>
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <numbers>
#include <string>

using moekit::CovarianceType;
using moekit::Index;
using moekit::Matrix;
using moekit::Vector;

namespace {

// S = [[4, 2], [2, 3]]: det = 4·3 − 2·2 = 8; S⁻¹ = (1/8)[[3, −2], [−2, 4]];
// Cholesky by hand: L00 = 2, L10 = 2/2 = 1, L11 = sqrt(3 − 1) = sqrt(2).
Matrix hand_matrix() {
    return (Matrix(2, 2) << 4.0, 2.0, 2.0, 3.0).finished();
}

} // namespace

TEST_CASE("try_factor of a 2x2 SPD matrix matches the hand computation", "[covariance]") {
    const auto f = moekit::try_factor(hand_matrix());
    REQUIRE(f.has_value());
    REQUIRE(f->log_det == Approx(std::log(8.0)).epsilon(1e-15));
    REQUIRE(f->lower(0, 0) == Approx(2.0).epsilon(1e-15));
    REQUIRE(f->lower(1, 0) == Approx(1.0).epsilon(1e-15));
    REQUIRE(f->lower(1, 1) == Approx(std::sqrt(2.0)).epsilon(1e-15));
    REQUIRE(f->lower(0, 1) == 0.0);
    REQUIRE(moekit_test::max_abs_diff(f->covariance, hand_matrix()) == 0.0);
    const Matrix llt = f->lower * f->lower.transpose();
    REQUIRE(moekit_test::max_abs_diff(llt, hand_matrix()) < 1e-14);
}

TEST_CASE("try_factor symmetrises its input", "[covariance]") {
    Matrix s(2, 2);
    s << 4.0, 2.5, 1.5, 3.0; // (S + Sᵀ)/2 = hand_matrix()
    const auto f = moekit::try_factor(s);
    REQUIRE(f.has_value());
    REQUIRE(moekit_test::max_abs_diff(f->covariance, hand_matrix()) == 0.0);
    REQUIRE(f->log_det == Approx(std::log(8.0)).epsilon(1e-15));
}

TEST_CASE("try_factor of a 1x1 and a diagonal matrix", "[covariance]") {
    const auto one = moekit::try_factor((Matrix(1, 1) << 2.5e-5).finished());
    REQUIRE(one.has_value());
    REQUIRE(one->log_det == Approx(std::log(2.5e-5)).epsilon(1e-15));
    REQUIRE(one->lower(0, 0) == Approx(std::sqrt(2.5e-5)).epsilon(1e-15));

    const Matrix d = Vector((Vector(3) << 0.5, 7.0, 1e-3).finished()).asDiagonal();
    const auto f = moekit::try_factor(d);
    REQUIRE(f.has_value());
    REQUIRE(f->log_det == Approx(std::log(0.5 * 7.0 * 1e-3)).epsilon(1e-14));
}

TEST_CASE("try_factor rejects matrices that are not SPD or not finite", "[covariance]") {
    const double nan_value = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    // Indefinite: eigenvalues 3 and −1.
    REQUIRE_FALSE(moekit::try_factor((Matrix(2, 2) << 1.0, 2.0, 2.0, 1.0).finished()).has_value());
    // Singular (positive semi-definite only).
    REQUIRE_FALSE(moekit::try_factor((Matrix(2, 2) << 1.0, 1.0, 1.0, 1.0).finished()).has_value());
    REQUIRE_FALSE(moekit::try_factor((Matrix(2, 2) << 1.0, 0.0, 0.0, 0.0).finished()).has_value());
    REQUIRE_FALSE(moekit::try_factor(Matrix::Zero(3, 3)).has_value());
    // Negative definite.
    REQUIRE_FALSE(moekit::try_factor((Matrix(1, 1) << -1.0).finished()).has_value());
    // Non-finite entries.
    REQUIRE_FALSE(moekit::try_factor((Matrix(2, 2) << 1.0, nan_value, nan_value, 1.0).finished())
                      .has_value());
    REQUIRE_FALSE(
        moekit::try_factor((Matrix(2, 2) << nan_value, 0.0, 0.0, 1.0).finished()).has_value());
    REQUIRE_FALSE(moekit::try_factor((Matrix(2, 2) << inf, 0.0, 0.0, 1.0).finished()).has_value());
    REQUIRE_FALSE(moekit::try_factor((Matrix(1, 1) << nan_value).finished()).has_value());
}

TEST_CASE("factor_or_throw throws NumericalError naming the function and the matrix",
          "[covariance]") {
    const Matrix bad = (Matrix(2, 2) << 1.0, 2.0, 2.0, 1.0).finished();
    REQUIRE_THROWS_AS(moekit::factor_or_throw(bad, "my_function", "the covariance of expert 3"),
                      moekit::NumericalError);
    try {
        moekit::factor_or_throw(bad, "my_function", "the covariance of expert 3");
        FAIL("no exception");
    } catch (const moekit::NumericalError& e) {
        const std::string message = e.what();
        REQUIRE(message.find("my_function") != std::string::npos);
        REQUIRE(message.find("the covariance of expert 3") != std::string::npos);
    }
    const Matrix nan_matrix = Matrix::Constant(1, 1, std::numeric_limits<double>::quiet_NaN());
    REQUIRE_THROWS_AS(moekit::factor_or_throw(nan_matrix, "f", "s"), moekit::NumericalError);

    const moekit::CovarianceFactor good = moekit::factor_or_throw(hand_matrix(), "f", "s");
    REQUIRE(good.log_det == Approx(std::log(8.0)).epsilon(1e-15));
}

TEST_CASE("log_normal_density in 1-D matches Boost.Math's normal pdf", "[covariance]") {
    const double variance = 2.5;
    const auto f = moekit::try_factor((Matrix(1, 1) << variance).finished());
    REQUIRE(f.has_value());
    const boost::math::normal_distribution<double> normal(0.0, std::sqrt(variance));
    Matrix r(6, 1);
    r << 0.0, 1.0, -1.0, 3.7, -12.0, 1e-3;
    const Vector logp = moekit::log_normal_density(r, *f);
    REQUIRE(logp.size() == 6);
    for (Index i = 0; i < r.rows(); ++i) {
        INFO("residual " << r(i, 0));
        REQUIRE(logp(i) == Approx(std::log(boost::math::pdf(normal, r(i, 0)))).epsilon(1e-14));
    }
}

TEST_CASE("log_normal_density in 1-D with a tiny variance", "[covariance]") {
    // The tonedata scale: σ ≈ 0.0045. Boost's pdf is representable here, so compare directly.
    const double sigma = 0.0045;
    const auto f = moekit::try_factor((Matrix(1, 1) << sigma * sigma).finished());
    REQUIRE(f.has_value());
    const boost::math::normal_distribution<double> normal(0.0, sigma);
    Matrix r(3, 1);
    r << 0.0, 0.01, -0.02;
    const Vector logp = moekit::log_normal_density(r, *f);
    for (Index i = 0; i < r.rows(); ++i)
        REQUIRE(logp(i) == Approx(std::log(boost::math::pdf(normal, r(i, 0)))).epsilon(1e-13));
}

TEST_CASE("log_normal_density in 2-D matches the hand formula", "[covariance]") {
    const auto f = moekit::try_factor(hand_matrix());
    REQUIRE(f.has_value());
    Matrix r(4, 2);
    r << 0.0, 0.0, 1.0, -1.0, 2.5, 0.5, -3.0, 4.0;
    const Vector logp = moekit::log_normal_density(r, *f);
    REQUIRE(logp.size() == 4);
    for (Index i = 0; i < r.rows(); ++i) {
        const double a = r(i, 0);
        const double b = r(i, 1);
        // rᵀ S⁻¹ r with S⁻¹ = (1/8)[[3, −2], [−2, 4]].
        const double maha = (3.0 * a * a - 4.0 * a * b + 4.0 * b * b) / 8.0;
        const double expected =
            -std::log(2.0 * std::numbers::pi) - 0.5 * std::log(8.0) - 0.5 * maha;
        INFO("row " << i);
        REQUIRE(logp(i) == Approx(expected).epsilon(1e-14));
    }
}

TEST_CASE("log_normal_density in 3-D matches a long-double elimination", "[covariance]") {
    Matrix s(3, 3);
    s << 2.0, 0.3, -0.4, 0.3, 1.0, 0.2, -0.4, 0.2, 0.5;
    const auto f = moekit::try_factor(s);
    REQUIRE(f.has_value());
    REQUIRE(f->log_det ==
            Approx(std::log(static_cast<double>(
                       moekit_test::naive_solve(s, Matrix::Identity(3, 3)).determinant)))
                .epsilon(1e-13));
    Matrix r(3, 3);
    r << 0.1, -0.2, 0.3, 1.0, 2.0, -1.0, -2.0, 0.0, 0.7;
    const Vector logp = moekit::log_normal_density(r, *f);
    for (Index i = 0; i < r.rows(); ++i)
        REQUIRE(logp(i) ==
                Approx(moekit_test::naive_normal_log_density(r.row(i), s)).epsilon(1e-13));
}

TEST_CASE("log_normal_density of no rows is empty", "[covariance]") {
    const auto f = moekit::try_factor(hand_matrix());
    REQUIRE(f.has_value());
    REQUIRE(moekit::log_normal_density(Matrix(0, 2), *f).size() == 0);
}

TEST_CASE("covariance_n_parameters counts the four structures", "[covariance]") {
    // q = 3: a symmetric 3×3 matrix has q(q+1)/2 = 6 free entries.
    const Index q = 3;
    const Index K = 4;
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Full, q, K) == 6 * K);
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Tied, q, K) == 6);
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Diag, q, K) == q * K);
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Spherical, q, K) == K);
    // q = 1: every structure is one variance per expert, except tied (one in all).
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Full, 1, 2) == 2);
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Tied, 1, 2) == 1);
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Diag, 1, 2) == 2);
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Spherical, 1, 2) == 2);
    // q = 4, K = 3 (iris): 10 per full covariance.
    REQUIRE(moekit::covariance_n_parameters(CovarianceType::Full, 4, 3) == 30);
}

TEST_CASE("covariance types parse and print", "[covariance]") {
    for (CovarianceType t : {CovarianceType::Full,
                             CovarianceType::Tied,
                             CovarianceType::Diag,
                             CovarianceType::Spherical})
        REQUIRE(moekit::parse_covariance_type(moekit::to_string(t)) == t);
    REQUIRE(moekit::to_string(CovarianceType::Full) == "full");
    REQUIRE(moekit::to_string(CovarianceType::Tied) == "tied");
    REQUIRE(moekit::to_string(CovarianceType::Diag) == "diag");
    REQUIRE(moekit::to_string(CovarianceType::Spherical) == "spherical");
    REQUIRE(moekit::parse_covariance_type("FULL") == CovarianceType::Full);
    REQUIRE(moekit::parse_covariance_type("Spherical") == CovarianceType::Spherical);
    REQUIRE_THROWS_AS(moekit::parse_covariance_type("diagonal-ish"), moekit::InvalidArgument);
    REQUIRE_THROWS_AS(moekit::parse_covariance_type(""), moekit::InvalidArgument);
}
