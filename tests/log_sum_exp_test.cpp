// Tests of the one log-sum-exp (include/moekit/log_sum_exp.hpp) against a literal
// log(Σ exp) in long double where that is representable, and against Stan's edge-case
// contract (±∞, NaN, empty input, overflow at ±1e4) where it is not.

#include "moekit/log_sum_exp.hpp"
#include "moekit/rng.hpp"
#include "support/naive.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using moekit::Index;
using moekit::Matrix;
using moekit::Vector;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();
const double nan_value = std::numeric_limits<double>::quiet_NaN();

Vector vec(std::initializer_list<double> values) {
    Vector v(static_cast<Index>(values.size()));
    Index i = 0;
    for (double x : values)
        v(i++) = x;
    return v;
}

} // namespace

TEST_CASE("log_sum_exp matches a literal log(sum exp) where representable", "[log_sum_exp]") {
    moekit::Rng rng(20240601);
    for (int trial = 0; trial < 200; ++trial) {
        const Index n = 1 + static_cast<Index>(moekit::uniform_index(rng, 12));
        Vector v(n);
        std::vector<double> values;
        for (Index j = 0; j < n; ++j) {
            v(j) = -30.0 + 60.0 * moekit::uniform01(rng);
            values.push_back(v(j));
        }
        const double expected = moekit_test::naive_log_sum_exp(values);
        REQUIRE(moekit::log_sum_exp(v) == Approx(expected).epsilon(1e-14).margin(1e-14));
    }
}

TEST_CASE("log_sum_exp of one element is that element", "[log_sum_exp]") {
    REQUIRE(moekit::log_sum_exp(vec({-3.25})) == -3.25);
    REQUIRE(moekit::log_sum_exp(vec({700.5})) == 700.5);
}

TEST_CASE("log_sum_exp does not overflow or underflow at +-1e4", "[log_sum_exp]") {
    // exp(±1e4) is not representable; the exact answers are known by hand.
    REQUIRE(moekit::log_sum_exp(vec({1e4, 1e4})) == Approx(1e4 + std::log(2.0)).epsilon(1e-15));
    REQUIRE(moekit::log_sum_exp(vec({-1e4, -1e4})) == Approx(-1e4 + std::log(2.0)).epsilon(1e-15));
    REQUIRE(moekit::log_sum_exp(vec({1e4, 0.0})) == 1e4);
    REQUIRE(moekit::log_sum_exp(vec({-1e4, 0.0})) == 0.0);
    // 1e4 + log(1 + e^{-1}) : the shifted terms are representable.
    REQUIRE(moekit::log_sum_exp(vec({1e4, 1e4 - 1.0})) ==
            Approx(1e4 + std::log1p(std::exp(-1.0))).epsilon(1e-15));
    REQUIRE(moekit::log_add_exp(1e4, 1e4) == Approx(1e4 + std::log(2.0)).epsilon(1e-15));
    REQUIRE(moekit::log_add_exp(-1e4, -1e4) == Approx(-1e4 + std::log(2.0)).epsilon(1e-15));
    const Vector rows = moekit::log_sum_exp_rows((Matrix(2, 2) << 1e4, 1e4, -1e4, -1e4).finished());
    REQUIRE(rows(0) == Approx(1e4 + std::log(2.0)).epsilon(1e-15));
    REQUIRE(rows(1) == Approx(-1e4 + std::log(2.0)).epsilon(1e-15));
}

TEST_CASE("log_sum_exp of all -inf is -inf, not NaN", "[log_sum_exp]") {
    REQUIRE(moekit::log_sum_exp(vec({-inf, -inf, -inf})) == -inf);
    REQUIRE(moekit::log_add_exp(-inf, -inf) == -inf);
    Matrix a(2, 3);
    a << -inf, -inf, -inf, 0.0, -inf, std::log(3.0);
    const Vector rows = moekit::log_sum_exp_rows(a);
    REQUIRE(rows(0) == -inf);
    REQUIRE(rows(1) == Approx(std::log(4.0)).epsilon(1e-15));
    // A -inf entry contributes nothing.
    REQUIRE(moekit::log_sum_exp(vec({-inf, 2.0})) == 2.0);
    REQUIRE(moekit::log_add_exp(-inf, -7.5) == -7.5);
    REQUIRE(moekit::log_add_exp(-7.5, -inf) == -7.5);
}

TEST_CASE("log_sum_exp propagates +inf", "[log_sum_exp]") {
    REQUIRE(moekit::log_sum_exp(vec({1.0, inf})) == inf);
    REQUIRE(moekit::log_sum_exp(vec({-inf, inf})) == inf);
    REQUIRE(moekit::log_add_exp(inf, 3.0) == inf);
    REQUIRE(moekit::log_add_exp(3.0, inf) == inf);
    REQUIRE(moekit::log_add_exp(inf, -inf) == inf);
    const Vector rows = moekit::log_sum_exp_rows((Matrix(1, 3) << 0.0, inf, -inf).finished());
    REQUIRE(rows(0) == inf);
}

TEST_CASE("log_sum_exp propagates NaN", "[log_sum_exp]") {
    REQUIRE(std::isnan(moekit::log_sum_exp(vec({nan_value, 1.0}))));
    REQUIRE(std::isnan(moekit::log_sum_exp(vec({1.0, nan_value}))));
    REQUIRE(std::isnan(moekit::log_sum_exp(vec({-inf, nan_value}))));
    REQUIRE(std::isnan(moekit::log_sum_exp(vec({inf, nan_value}))));
    REQUIRE(std::isnan(moekit::log_add_exp(nan_value, 1.0)));
    REQUIRE(std::isnan(moekit::log_add_exp(1.0, nan_value)));
    REQUIRE(std::isnan(moekit::log_add_exp(-inf, nan_value)));
    Matrix a(3, 2);
    a << nan_value, 0.0, 0.0, nan_value, 1.0, 2.0;
    const Vector rows = moekit::log_sum_exp_rows(a);
    REQUIRE(std::isnan(rows(0)));
    REQUIRE(std::isnan(rows(1)));
    REQUIRE(rows(2) == Approx(moekit_test::naive_log_sum_exp({1.0, 2.0})).epsilon(1e-15));
}

TEST_CASE("log_sum_exp of an empty input is -inf", "[log_sum_exp]") {
    REQUIRE(moekit::log_sum_exp(Vector()) == -inf);
    const Vector rows = moekit::log_sum_exp_rows(Matrix(3, 0));
    REQUIRE(rows.size() == 3);
    for (Index i = 0; i < 3; ++i)
        REQUIRE(rows(i) == -inf);
    REQUIRE(moekit::log_sum_exp_rows(Matrix(0, 4)).size() == 0);
}

TEST_CASE("log_add_exp is symmetric and matches the literal formula", "[log_sum_exp]") {
    moekit::Rng rng(77);
    for (int trial = 0; trial < 500; ++trial) {
        const double a = -40.0 + 80.0 * moekit::uniform01(rng);
        const double b = -40.0 + 80.0 * moekit::uniform01(rng);
        REQUIRE(moekit::log_add_exp(a, b) == moekit::log_add_exp(b, a));
        REQUIRE(moekit::log_add_exp(a, b) ==
                Approx(moekit_test::naive_log_sum_exp({a, b})).epsilon(1e-14).margin(1e-14));
    }
    const double specials[] = {-inf, inf, -1e4, 1e4, 0.0, -745.0, 709.0};
    for (double a : specials)
        for (double b : specials) {
            const double ab = moekit::log_add_exp(a, b);
            const double ba = moekit::log_add_exp(b, a);
            REQUIRE(((ab == ba) || (std::isnan(ab) && std::isnan(ba))));
        }
    // log(e^0 + e^0) = log 2 exactly enough.
    REQUIRE(moekit::log_add_exp(0.0, 0.0) == Approx(std::log(2.0)).epsilon(1e-16));
}

TEST_CASE("log_sum_exp_rows agrees with the naive formula row by row", "[log_sum_exp]") {
    moekit::Rng rng(5);
    Matrix a(7, 4);
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < a.cols(); ++j)
            a(i, j) = -20.0 + 25.0 * moekit::uniform01(rng);
    const Vector rows = moekit::log_sum_exp_rows(a);
    REQUIRE(rows.size() == a.rows());
    for (Index i = 0; i < a.rows(); ++i) {
        std::vector<double> row;
        for (Index j = 0; j < a.cols(); ++j)
            row.push_back(a(i, j));
        REQUIRE(rows(i) == Approx(moekit_test::naive_log_sum_exp(row)).epsilon(1e-14));
    }
}

TEST_CASE("log_softmax_rows_in_place gives rows whose exp sums to 1", "[log_sum_exp]") {
    moekit::Rng rng(9);
    Matrix a(6, 3);
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < a.cols(); ++j)
            a(i, j) = -50.0 + 100.0 * moekit::uniform01(rng);
    a.row(4) << 1e4, 1e4 - 2.0, -1e4; // would overflow a literal exp
    a.row(5) << -inf, -inf, -inf;     // left as it is
    const Matrix original = a;
    const Vector norm = moekit::log_softmax_rows_in_place(a);
    REQUIRE(norm.size() == 6);
    for (Index i = 0; i < 5; ++i) {
        long double total = 0.0L;
        for (Index j = 0; j < 3; ++j)
            total += std::exp(static_cast<long double>(a(i, j)));
        // Each a_ij − norm_i is rounded to the precision of the inputs' magnitude, so the sum of
        // exponentials is 1 to a few ulps of max_j |a_ij| (1e4 for row 4: ~1e-12).
        const double magnitude = std::max(1.0, original.row(i).cwiseAbs().maxCoeff());
        REQUIRE(static_cast<double>(total) == Approx(1.0).epsilon(8.0 * magnitude * 2.3e-16));
        // Each entry was shifted by the row normaliser.
        for (Index j = 0; j < 3; ++j)
            if (std::isfinite(original(i, j)))
                REQUIRE(a(i, j) == Approx(original(i, j) - norm(i)).epsilon(1e-14).margin(1e-11));
    }
    for (Index i = 0; i < 4; ++i) {
        std::vector<double> row;
        for (Index j = 0; j < 3; ++j)
            row.push_back(original(i, j));
        REQUIRE(norm(i) == Approx(moekit_test::naive_log_sum_exp(row)).epsilon(1e-14));
    }
    REQUIRE(norm(4) == Approx(1e4 + std::log1p(std::exp(-2.0))).epsilon(1e-15));
    REQUIRE(norm(5) == -inf);
    for (Index j = 0; j < 3; ++j)
        REQUIRE(a(5, j) == -inf);
}

TEST_CASE("exp_of_log is within a few ulp of std::exp over the whole range, flushing below -708", "[log_sum_exp]") {
    // The blocked exp (a polynomial after Cody-Waite reduction, with a table of 2^(j/16) in
    // AVX-512 builds; vectorised) against glibc's
    // correctly rounded std::exp: 4099 values (vector lanes and a scalar tail), spread over
    // [-708, 709].
    moekit::Rng rng(77);
    Matrix a(4099, 3);
    for (Index i = 0; i < a.rows(); ++i) {
        a(i, 0) = -708.0 + 1417.0 * moekit::uniform01(rng);
        a(i, 1) = -1.0 + 2.0 * moekit::uniform01(rng); // near 0: the reduction's small range
        a(i, 2) = -40.0 * moekit::uniform01(rng);      // typical log responsibilities
    }
    a(0, 1) = 0.0;
    a(1, 1) = -708.0;
    a(2, 1) = 709.0;
    // Multiples of ln 2 / 16, where the AVX-512 form's reduced argument is about 0 and the
    // result is its table entry 2^(j/16) scaled (every entry, positive and negative m).
    for (Index j = -24; j < 24; ++j) a(27 + j, 1) = static_cast<double>(j) * std::log(2.0) / 16.0;
    const Matrix e = moekit::exp_of_log(a);
    double worst = 0.0;
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < a.cols(); ++j) {
            const double expected = std::exp(a(i, j));
            worst = std::max(worst, std::abs(e(i, j) - expected) / expected);
        }
    INFO("largest relative error " << worst);
    REQUIRE(worst < 4.0 * std::numeric_limits<double>::epsilon());
    REQUIRE(e(0, 1) == 1.0); // exp(0) is exactly 1: a lone expert's responsibility
    // Below -708 the result is flushed to exactly 0 (exp(-inf) too); above 709 and at NaN the
    // exact function decides (overflow to +inf, NaN propagates). Both paths: a short matrix (the
    // scalar tail) and rows inside a vector lane.
    for (const Index rows : {Index{1}, Index{9}}) {
        Matrix special = Matrix::Constant(rows, 6, 0.5);
        special.row(rows - 1) << -708.5, -1e300, -inf, 709.5, 710.0, nan_value;
        const Matrix s = moekit::exp_of_log(special);
        REQUIRE(s(rows - 1, 0) == 0.0);
        REQUIRE(s(rows - 1, 1) == 0.0);
        REQUIRE(s(rows - 1, 2) == 0.0);
        REQUIRE(s(rows - 1, 3) == std::exp(709.5));
        REQUIRE(s(rows - 1, 4) == inf);
        REQUIRE(std::isnan(s(rows - 1, 5)));
        if (rows > 1) REQUIRE(s(0, 0) == Approx(std::exp(0.5)).epsilon(1e-15));
    }
}

TEST_CASE("log_sum_exp_rows: a block with a NaN or infinite row keeps every other row exact", "[log_sum_exp]") {
    // 4105 rows of 5 columns (two sample blocks of the blocked kernel), with -inf entries (experts
    // routed away) in finite rows; the second block also has one row of each special kind, which
    // goes through the reference path (that row alone).
    moekit::Rng rng(78);
    Matrix a(4105, 5);
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < a.cols(); ++j)
            a(i, j) = -60.0 + 70.0 * moekit::uniform01(rng);
    for (Index i = 0; i < a.rows(); i += 7) a(i, i % 5) = -inf;
    a(4097, 2) = nan_value;
    a(4098, 1) = inf;
    a(4096, 0) = a(4096, 1) = a(4096, 2) = a(4096, 3) = a(4096, 4) = -inf;
    const Vector lse = moekit::log_sum_exp_rows(a);
    for (Index i = 0; i < a.rows(); ++i) {
        if (i >= 4096 && i <= 4098) continue;
        std::vector<double> row;
        for (Index j = 0; j < a.cols(); ++j) row.push_back(a(i, j));
        // m + log Σ exp(a − m) is exact to a few ulp of max(|m|, log K) in absolute terms.
        REQUIRE(lse(i) == Approx(moekit_test::naive_log_sum_exp(row)).epsilon(1e-14).margin(1e-13));
    }
    REQUIRE(lse(4096) == -inf);
    REQUIRE(std::isnan(lse(4097)));
    REQUIRE(lse(4098) == inf);
    // Only the special rows go through the reference: every other row of their block has the
    // bits it has in a block without them.
    Matrix clean = a;
    clean.row(4096).setZero();
    clean.row(4097).setZero();
    clean.row(4098).setZero();
    const Vector lse_clean = moekit::log_sum_exp_rows(clean);
    for (Index i = 4099; i < a.rows(); ++i) REQUIRE(lse(i) == lse_clean(i));
}

namespace {
/// Writes junk over a stretch of the stack (what a previous call could have left there).
void dirty_stack(double seed) {
    volatile double junk[8192];
    for (int i = 0; i < 8192; ++i) junk[i] = seed * (i % 13) - 1e300 * (i % 2);
}
} // namespace

TEST_CASE("log_sum_exp_rows gives the same bits whatever the stack held before", "[log_sum_exp]") {
    // Eigen 3.4's 8-lane AVX-512 logarithm returned results whose last bit depended on stale
    // stack contents (found in a -march=native build: the same fit gave different
    // log-likelihoods twice in one process). The block kernels take their logarithms four or
    // two lanes at a time (log_plus); this holds on every build, and has teeth where AVX-512 is on.
    moekit::Rng rng(8);
    for (const Index n : {9, 17, 300, 809, 4096 + 13}) {
        for (const Index K : {1, 2, 3, 5}) {
            Matrix a(n, K);
            for (Index i = 0; i < n; ++i)
                for (Index k = 0; k < K; ++k) a(i, k) = 5.0 * moekit::standard_normal(rng);
            dirty_stack(1.5);
            const Vector first = moekit::log_sum_exp_rows(a);
            for (int round = 0; round < 5; ++round) {
                dirty_stack(-3.0 * round - 0.25);
                REQUIRE(moekit::log_sum_exp_rows(a) == first);
            }
        }
    }
}
