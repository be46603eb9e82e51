// Tests of covariance factors and the Gaussian log density (include/moekit/covariance.hpp).
// Truths: determinants and inverses of 2×2 matrices worked out by hand, Boost.Math's normal
// pdf for q = 1, a long-double elimination for q = 3, a long-double forward substitution per
// sample for the blocked kernel at many q, and the parameter counts of the four covariance
// structures written out from their definitions.

#include "moekit/covariance.hpp"
#include "moekit/errors.hpp"
#include "moekit/rng.hpp"
#include "support/naive.hpp"

#include <boost/math/distributions/normal.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

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

Matrix normal_matrix(Index r, Index c, moekit::Rng& rng) {
    Matrix m(r, c);
    for (Index j = 0; j < c; ++j)
        for (Index i = 0; i < r; ++i) m(i, j) = moekit::standard_normal(rng);
    return m;
}

/// log N(r; 0, L Lᵀ) for one residual row by forward substitution, one sample at a time, in
/// long double: z_j = (r_j − Σ_{l<j} L_jl z_l) / L_jj, −½(q log 2π + log|Σ|) − ½‖z‖².
double naive_forward_log_density(const Matrix& r, Index i, const Matrix& lower, double log_det) {
    const Index q = lower.rows();
    std::vector<long double> z(static_cast<std::size_t>(q));
    long double maha = 0.0L;
    for (Index j = 0; j < q; ++j) {
        long double s = r(i, j);
        for (Index l = 0; l < j; ++l) s -= static_cast<long double>(lower(j, l)) * z[static_cast<std::size_t>(l)];
        z[static_cast<std::size_t>(j)] = s / lower(j, j);
        maha += z[static_cast<std::size_t>(j)] * z[static_cast<std::size_t>(j)];
    }
    const long double log_two_pi = std::log(2.0L * std::numbers::pi_v<long double>);
    return static_cast<double>(-0.5L * (static_cast<long double>(q) * log_two_pi + log_det) - 0.5L * maha);
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

TEST_CASE("log_normal_density matches a per-sample forward substitution at every q", "[covariance]") {
    // The blocked kernel keeps the whole z of a packet of samples in registers for small q and
    // works in panels of rows for larger q, with a padded last chunk: every q up to 24 (every
    // panel shape), 33 and 40, diagonal and full covariances, row counts that are not
    // multiples of any packet, chunk or the 4096-row block.
    moekit::Rng rng(20261122);
    std::vector<Index> qs;
    for (Index q = 1; q <= 24; ++q) qs.push_back(q);
    qs.push_back(33);
    qs.push_back(40);
    for (const Index q : qs) {
        for (const bool diagonal : {false, true}) {
            const Matrix a = normal_matrix(q, q, rng);
            Matrix s = a * a.transpose() / static_cast<double>(q) + 0.5 * Matrix::Identity(q, q);
            if (diagonal) s = Matrix(s.diagonal().asDiagonal());
            const auto f = moekit::try_factor(s);
            REQUIRE(f.has_value());
            for (const Index n : {Index{1}, Index{7}, Index{61}, Index{4096 + 77}}) {
                // Residuals of a few standard deviations, some rows far out.
                Matrix r = 2.0 * normal_matrix(n, q, rng);
                r.row(0) *= 10.0;
                const Vector logp = moekit::log_normal_density(r, *f);
                REQUIRE(logp.size() == n);
                double worst = 0.0;
                for (Index i = 0; i < n; ++i) {
                    const double expected = naive_forward_log_density(r, i, f->lower, f->log_det);
                    worst = std::max(worst, std::abs(logp(i) - expected) / std::abs(expected));
                }
                INFO("q = " << q << ", diagonal = " << diagonal << ", n = " << n);
                REQUIRE(worst < 1e-13);
            }
        }
    }
}

TEST_CASE("log_normal_density of a sample does not depend on where it sits", "[covariance]") {
    // The same rows at other positions (another packet lane, chunk, the padded tail, another
    // block) give the same bits: the rows are rotated by a few offsets and compared exactly.
    moekit::Rng rng(7);
    for (const Index q : {Index{2}, Index{5}, Index{10}, Index{13}, Index{20}, Index{33}}) {
        for (const bool diagonal : {false, true}) {
            const Matrix a = normal_matrix(q, q, rng);
            Matrix s = a * a.transpose() / static_cast<double>(q) + Matrix::Identity(q, q);
            if (diagonal) s = Matrix(s.diagonal().asDiagonal());
            const auto f = moekit::try_factor(s);
            REQUIRE(f.has_value());
            const Index n = 4096 + 131;
            const Matrix r = normal_matrix(n, q, rng);
            const Vector base = moekit::log_normal_density(r, *f);
            for (const Index shift : {Index{1}, Index{3}, Index{37}, Index{4096 - 5}}) {
                Matrix rotated(n, q);
                for (Index i = 0; i < n; ++i) rotated.row((i + shift) % n) = r.row(i);
                const Vector moved = moekit::log_normal_density(rotated, *f);
                Index mismatches = 0;
                for (Index i = 0; i < n; ++i)
                    if (std::memcmp(&base(i), &moved((i + shift) % n), sizeof(double)) != 0) ++mismatches;
                INFO("q = " << q << ", diagonal = " << diagonal << ", shift = " << shift);
                REQUIRE(mismatches == 0);
            }
            // A single row alone (a padded chunk of one sample) gives the same bits too.
            const Vector one = moekit::log_normal_density(r.topRows(1), *f);
            REQUIRE(std::memcmp(&one(0), &base(0), sizeof(double)) == 0);
        }
    }
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
