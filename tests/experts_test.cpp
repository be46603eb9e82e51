// Tests of the experts and their M-step (include/moekit/experts.hpp).
// Truths: per-expert sample means and ML covariances written as plain loops, weighted least
// squares by the normal equations solved by long-double elimination, exact recovery of a
// noise-free line, the frequency-weight identity (weight 2 = the row twice), and per-sample
// densities from Boost.Math (q = 1) or elimination (q = 2).

#include "moekit/errors.hpp"
#include "moekit/experts.hpp"
#include "moekit/rng.hpp"
#include "support/naive.hpp"

#include <boost/math/distributions/normal.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

using moekit::CovarianceType;
using moekit::ExpertKind;
using moekit::Experts;
using moekit::Index;
using moekit::Matrix;
using moekit::RowVector;
using moekit::Vector;

namespace {

moekit::CovarianceFactor factor(const Matrix& s) {
    const auto f = moekit::try_factor(s);
    REQUIRE(f.has_value());
    return *f;
}

/// K experts with zero coefficients ((d+1)×q, d = 0 for Gaussian) and identity covariances.
Experts make_experts(ExpertKind kind, CovarianceType type, Index K, Index d, Index q) {
    Experts e;
    e.kind = kind;
    e.covariance_type = type;
    for (Index k = 0; k < K; ++k) {
        e.coefficients.push_back(Matrix::Zero(kind == ExpertKind::Gaussian ? 1 : d + 1, q));
        e.covariances.push_back(factor(Matrix::Identity(q, q)));
    }
    return e;
}

Matrix random_matrix(moekit::Rng& rng, Index rows, Index cols, double scale) {
    Matrix m(rows, cols);
    for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < cols; ++j)
            m(i, j) = scale * moekit::standard_normal(rng);
    return m;
}

/// n×K responsibilities, rows uniform on the simplex-ish (normalised uniforms), never 0.
Matrix random_resp(moekit::Rng& rng, Index n, Index K) {
    Matrix h(n, K);
    for (Index i = 0; i < n; ++i) {
        double total = 0.0;
        for (Index k = 0; k < K; ++k) {
            h(i, k) = 0.05 + moekit::uniform01(rng);
            total += h(i, k);
        }
        h.row(i) /= total;
    }
    return h;
}

Matrix one_hot(const std::vector<Index>& labels, Index K) {
    Matrix h = Matrix::Zero(static_cast<Index>(labels.size()), K);
    for (std::size_t i = 0; i < labels.size(); ++i)
        h(static_cast<Index>(i), labels[i]) = 1.0;
    return h;
}

moekit::ExpertRegularization no_ridge() {
    moekit::ExpertRegularization reg;
    reg.reg_covar = 0.0;
    return reg;
}

/// The factor stored with a covariance is consistent: L Lᵀ = Σ, log det = log of the
/// elimination determinant.
void check_factor(const moekit::CovarianceFactor& f) {
    const Matrix llt = f.lower * f.lower.transpose();
    REQUIRE(moekit_test::max_abs_diff(llt, f.covariance) <=
            1e-12 * f.covariance.cwiseAbs().maxCoeff());
    const long double det =
        moekit_test::naive_solve(f.covariance,
                                 Matrix::Identity(f.covariance.rows(), f.covariance.rows()))
            .determinant;
    REQUIRE(f.log_det == Approx(std::log(static_cast<double>(det))).epsilon(1e-10).margin(1e-10));
}

/// Rows of `m` whose label is k.
Matrix rows_with_label(const Matrix& m, const std::vector<Index>& labels, Index k) {
    std::vector<Index> idx;
    for (std::size_t i = 0; i < labels.size(); ++i)
        if (labels[i] == k) idx.push_back(static_cast<Index>(i));
    Matrix out(static_cast<Index>(idx.size()), m.cols());
    for (std::size_t r = 0; r < idx.size(); ++r)
        out.row(static_cast<Index>(r)) = m.row(idx[r]);
    return out;
}

} // namespace

TEST_CASE("one-hot M-step gives sample means and ML covariances for every structure", "[experts]") {
    moekit::Rng rng(11);
    const Index K = 3;
    const Index q = 2;
    const Index n = 36;
    std::vector<Index> labels;
    Matrix y(n, q);
    for (Index i = 0; i < n; ++i) {
        const Index k = i % K;
        labels.push_back(k);
        y(i, 0) = 5.0 * static_cast<double>(k) +
                  (1.0 + static_cast<double>(k)) * moekit::standard_normal(rng);
        y(i, 1) =
            -3.0 * static_cast<double>(k) + 0.5 * moekit::standard_normal(rng) + 0.3 * y(i, 0);
    }
    const moekit::Dataset data = moekit::make_dataset(y);
    const Matrix resp = one_hot(labels, K);

    // Naive per-expert truth.
    std::vector<RowVector> means;
    std::vector<Matrix> full;
    Matrix pooled = Matrix::Zero(q, q);
    for (Index k = 0; k < K; ++k) {
        const Matrix yk = rows_with_label(y, labels, k);
        const Vector ones = Vector::Ones(yk.rows());
        means.push_back(moekit_test::naive_weighted_mean(yk, ones));
        const Matrix centred = yk.rowwise() - means.back();
        full.push_back(moekit_test::naive_weighted_covariance(centred, ones)); // divides by n_k
        pooled += static_cast<double>(yk.rows()) * full.back();
    }
    pooled /= static_cast<double>(n); // pooled within-expert scatter / n

    for (CovarianceType type : {CovarianceType::Full,
                                CovarianceType::Tied,
                                CovarianceType::Diag,
                                CovarianceType::Spherical}) {
        INFO("covariance type " << moekit::to_string(type));
        Experts e = make_experts(ExpertKind::Gaussian, type, K, 0, q);
        const moekit::ExpertUpdateReport report = moekit::update_experts(e, data, resp, no_ridge());
        REQUIRE(report.kept.empty());
        REQUIRE(report.singular.empty());
        REQUIRE(e.n_experts() == K);
        for (Index k = 0; k < K; ++k) {
            INFO("expert " << k);
            REQUIRE(e.coefficients[k].rows() == 1);
            REQUIRE(e.coefficients[k].cols() == q);
            for (Index j = 0; j < q; ++j)
                REQUIRE(e.coefficients[k](0, j) ==
                        Approx(means[k](j)).epsilon(1e-12).margin(1e-12));
            Matrix expected;
            switch (type) {
            case CovarianceType::Full:
                expected = full[k];
                break;
            case CovarianceType::Tied:
                expected = pooled;
                break;
            case CovarianceType::Diag:
                expected = Matrix(full[k].diagonal().asDiagonal());
                break;
            case CovarianceType::Spherical:
                expected = (full[k].trace() / static_cast<double>(q)) * Matrix::Identity(q, q);
                break;
            }
            const Matrix& got = e.covariances[k].covariance;
            for (Index a = 0; a < q; ++a)
                for (Index b = 0; b < q; ++b)
                    REQUIRE(got(a, b) == Approx(expected(a, b)).epsilon(1e-11).margin(1e-13));
            check_factor(e.covariances[k]);
        }
    }
}

TEST_CASE("soft-responsibility M-step with sample weights matches the weighted formulas",
          "[experts]") {
    moekit::Rng rng(12);
    const Index K = 3;
    const Index q = 2;
    const Index n = 50;
    const Matrix y = random_matrix(rng, n, q, 2.0);
    moekit::Dataset data = moekit::make_dataset(y);
    for (Index i = 0; i < n; ++i)
        data.weights(i) = 0.5 + 1.5 * moekit::uniform01(rng);
    const Matrix resp = random_resp(rng, n, K);

    Matrix tied = Matrix::Zero(q, q);
    std::vector<RowVector> means;
    std::vector<Matrix> full;
    for (Index k = 0; k < K; ++k) {
        const Vector a = data.weights.cwiseProduct(resp.col(k));
        means.push_back(moekit_test::naive_weighted_mean(y, a));
        const Matrix centred = y.rowwise() - means.back();
        full.push_back(moekit_test::naive_weighted_covariance(centred, a));
        tied += a.sum() * full.back();
    }
    tied /= data.weights.sum(); // Σ_k Σ_i w_i h_ik r rᵀ / Σ_i w_i

    for (CovarianceType type : {CovarianceType::Full, CovarianceType::Tied}) {
        INFO("covariance type " << moekit::to_string(type));
        Experts e = make_experts(ExpertKind::Gaussian, type, K, 0, q);
        moekit::update_experts(e, data, resp, no_ridge());
        for (Index k = 0; k < K; ++k) {
            for (Index j = 0; j < q; ++j)
                REQUIRE(e.coefficients[k](0, j) ==
                        Approx(means[k](j)).epsilon(1e-12).margin(1e-12));
            const Matrix& expected = type == CovarianceType::Full ? full[k] : tied;
            for (Index a = 0; a < q; ++a)
                for (Index b = 0; b < q; ++b)
                    REQUIRE(e.covariances[k].covariance(a, b) ==
                            Approx(expected(a, b)).epsilon(1e-11).margin(1e-13));
        }
    }
}

TEST_CASE("Gaussian M-step statistics in registers (full: 1-4 targets, diagonal: 1-12) and stored (more): "
          "every covariance type, unit and weighted blocks, against the weighted formulas",
          "[experts]") {
    // Sample blocks are 4096 rows: two whole blocks and a tail block of 47 rows (not a whole
    // packet, nor a whole pair of packets). The data sit at 100 ± 2 and the experts start near
    // them (100 + 0.1 k), so the statistics around the current means are used as they are (no
    // exact second pass, which a far start would trigger). Weighted: the second block has
    // every third weight ≠ 1 and the tail block all of them; unit: every weight 1.
    moekit::Rng rng(32);
    const Index n = 2 * 4096 + 47;
    const Index K = 3;
    for (Index q : {1, 2, 3, 4, 5, 12, 13}) {
        for (bool weighted : {false, true}) {
            INFO("q = " << q << (weighted ? ", weighted" : ", unit weights"));
            Matrix y = random_matrix(rng, n, q, 2.0);
            y.array() += 100.0;
            moekit::Dataset data = moekit::make_dataset(y);
            if (weighted) {
                for (Index i = 4096; i < 8192; i += 3) data.weights(i) = 0.5 + 1.5 * moekit::uniform01(rng);
                for (Index i = 8192; i < n; ++i) data.weights(i) = 0.5 + 1.5 * moekit::uniform01(rng);
            }
            const Matrix resp = random_resp(rng, n, K);
            std::vector<RowVector> means;
            std::vector<Matrix> full;
            Matrix tied = Matrix::Zero(q, q);
            for (Index k = 0; k < K; ++k) {
                const Vector a = data.weights.cwiseProduct(resp.col(k));
                means.push_back(moekit_test::naive_weighted_mean(y, a));
                full.push_back(moekit_test::naive_weighted_covariance(y.rowwise() - means.back(), a));
                tied += a.sum() * full.back();
            }
            tied /= data.weights.sum();
            for (CovarianceType type :
                 {CovarianceType::Full, CovarianceType::Diag, CovarianceType::Spherical, CovarianceType::Tied}) {
                INFO("covariance type " << moekit::to_string(type));
                Experts e = make_experts(ExpertKind::Gaussian, type, K, 0, q);
                for (Index k = 0; k < K; ++k)
                    e.coefficients[k].setConstant(100.0 + 0.1 * static_cast<double>(k));
                moekit::update_experts(e, data, resp, no_ridge());
                for (Index k = 0; k < K; ++k) {
                    INFO("expert " << k);
                    for (Index j = 0; j < q; ++j)
                        REQUIRE(e.coefficients[k](0, j) == Approx(means[k](j)).epsilon(1e-12));
                    Matrix expected = full[k];
                    if (type == CovarianceType::Tied) expected = tied;
                    if (type == CovarianceType::Diag) expected = Matrix(full[k].diagonal().asDiagonal());
                    if (type == CovarianceType::Spherical)
                        expected = (full[k].trace() / static_cast<double>(q)) * Matrix::Identity(q, q);
                    const Matrix& got = e.covariances[k].covariance;
                    for (Index a = 0; a < q; ++a)
                        for (Index b = 0; b < q; ++b)
                            REQUIRE(got(a, b) == Approx(expected(a, b)).epsilon(1e-10).margin(1e-12));
                }
            }
        }
    }
}

TEST_CASE("reg_covar adds reg_covar times the scale to the diagonal", "[experts]") {
    moekit::Rng rng(13);
    const Index n = 40;
    const Matrix y = random_matrix(rng, n, 2, 1.0);
    const moekit::Dataset data = moekit::make_dataset(y);
    const Matrix resp = Matrix::Ones(n, 1);
    moekit::ExpertRegularization reg;
    reg.reg_covar = 0.25;
    reg.scale = (Vector(2) << 2.0, 8.0).finished();
    Experts e = make_experts(ExpertKind::Gaussian, CovarianceType::Full, 1, 0, 2);
    moekit::update_experts(e, data, resp, reg);
    const RowVector mean = moekit_test::naive_weighted_mean(y, Vector::Ones(n));
    Matrix expected = moekit_test::naive_weighted_covariance(y.rowwise() - mean, Vector::Ones(n));
    expected(0, 0) += 0.25 * 2.0;
    expected(1, 1) += 0.25 * 8.0;
    for (Index a = 0; a < 2; ++a)
        for (Index b = 0; b < 2; ++b)
            REQUIRE(e.covariances[0].covariance(a, b) ==
                    Approx(expected(a, b)).epsilon(1e-12).margin(1e-14));
}

TEST_CASE("linear experts recover a noise-free line exactly", "[experts]") {
    // Expert 0 owns y = 1 + 2x, expert 1 owns y = −3 + 0.5x; no noise at all. The covariance
    // estimate is then 0 + reg_covar·scale, with the scale fixed at 1 here.
    const Index n = 20;
    Matrix x(n, 1);
    Matrix y(n, 1);
    std::vector<Index> labels;
    for (Index i = 0; i < n; ++i) {
        x(i, 0) = -2.0 + 4.0 * static_cast<double>(i) / static_cast<double>(n - 1);
        const Index k = i % 2;
        labels.push_back(k);
        y(i, 0) = k == 0 ? 1.0 + 2.0 * x(i, 0) : -3.0 + 0.5 * x(i, 0);
    }
    const moekit::Dataset data = moekit::make_dataset(y, x);
    moekit::ExpertRegularization reg;
    reg.reg_covar = 1e-8;
    reg.scale = Vector::Ones(1);
    Experts e = make_experts(ExpertKind::Linear, CovarianceType::Full, 2, 1, 1);
    const moekit::ExpertUpdateReport report =
        moekit::update_experts(e, data, one_hot(labels, 2), reg);
    REQUIRE(report.kept.empty());
    REQUIRE(report.singular.empty());
    REQUIRE_FALSE(report.rank_deficient);
    REQUIRE(e.coefficients[0](0, 0) == Approx(1.0).epsilon(0).margin(1e-12));
    REQUIRE(e.coefficients[0](1, 0) == Approx(2.0).epsilon(0).margin(1e-12));
    REQUIRE(e.coefficients[1](0, 0) == Approx(-3.0).epsilon(0).margin(1e-12));
    REQUIRE(e.coefficients[1](1, 0) == Approx(0.5).epsilon(0).margin(1e-12));
    for (Index k = 0; k < 2; ++k)
        REQUIRE(e.covariances[k].covariance(0, 0) == Approx(1e-8).epsilon(1e-6));
}

TEST_CASE("linear experts solve the weighted normal equations with weights w_i h_ik", "[experts]") {
    moekit::Rng rng(14);
    const Index n = 60;
    const Index d = 2;
    const Index q = 2;
    const Index K = 3;
    const Matrix x = random_matrix(rng, n, d, 1.5);
    Matrix y(n, q);
    for (Index i = 0; i < n; ++i) {
        y(i, 0) = 1.0 + 2.0 * x(i, 0) - x(i, 1) + 0.7 * moekit::standard_normal(rng);
        y(i, 1) = -0.5 + 0.3 * x(i, 1) + 0.2 * moekit::standard_normal(rng);
    }
    moekit::Dataset data = moekit::make_dataset(y, x);
    for (Index i = 0; i < n; ++i)
        data.weights(i) = 0.5 + 1.5 * moekit::uniform01(rng);
    const Matrix resp = random_resp(rng, n, K);
    Matrix design(n, d + 1);
    design.col(0).setOnes();
    design.rightCols(d) = x;

    Experts e = make_experts(ExpertKind::Linear, CovarianceType::Full, K, d, q);
    const moekit::ExpertUpdateReport report = moekit::update_experts(e, data, resp, no_ridge());
    REQUIRE(report.kept.empty());
    REQUIRE_FALSE(report.rank_deficient);
    for (Index k = 0; k < K; ++k) {
        INFO("expert " << k);
        const Vector a = data.weights.cwiseProduct(resp.col(k));
        const Matrix w = moekit_test::naive_weighted_least_squares(design, y, a);
        REQUIRE(e.coefficients[k].rows() == d + 1);
        REQUIRE(e.coefficients[k].cols() == q);
        for (Index r = 0; r < d + 1; ++r)
            for (Index c = 0; c < q; ++c)
                REQUIRE(e.coefficients[k](r, c) == Approx(w(r, c)).epsilon(1e-10).margin(1e-12));
        const Matrix cov = moekit_test::naive_weighted_covariance(y - design * w, a);
        for (Index r = 0; r < q; ++r)
            for (Index c = 0; c < q; ++c)
                REQUIRE(e.covariances[k].covariance(r, c) ==
                        Approx(cov(r, c)).epsilon(1e-10).margin(1e-13));
        check_factor(e.covariances[k]);
    }
}

TEST_CASE("linear experts: blocks of unit weights (responsibilities read in place) and weighted blocks agree "
          "with the weighted normal equations",
          "[experts]") {
    // The Gram of a block whose weights are all 1 reads h_k in place; a block with another
    // weight forms w h_k. Sample blocks are 4096 rows: one whole block and a tail block of 45
    // rows (not a whole packet). Mixed: weights ≠ 1 in the first block only, so the tail block
    // is read in place; unit: every block. K = 5 pads the tile rows of the 16-register builds.
    moekit::Rng rng(31);
    const Index n = 4096 + 45;
    const Index d = 3;
    const Index K = 5;
    for (bool mixed : {true, false}) {
        INFO((mixed ? "first block weighted" : "unit weights"));
        const Matrix x = random_matrix(rng, n, d, 1.5);
        Matrix y(n, 1);
        for (Index i = 0; i < n; ++i)
            y(i, 0) = 1.0 + 2.0 * x(i, 0) - x(i, 1) + 0.5 * x(i, 2) + 0.7 * moekit::standard_normal(rng);
        moekit::Dataset data = moekit::make_dataset(y, x);
        if (mixed)
            for (Index i = 0; i < 4096; i += 7) data.weights(i) = 2.5;
        const Matrix resp = random_resp(rng, n, K);
        Matrix design(n, d + 1);
        design.col(0).setOnes();
        design.rightCols(d) = x;

        Experts e = make_experts(ExpertKind::Linear, CovarianceType::Full, K, d, 1);
        const moekit::ExpertUpdateReport report = moekit::update_experts(e, data, resp, no_ridge());
        REQUIRE(report.kept.empty());
        for (Index k = 0; k < K; ++k) {
            INFO("expert " << k);
            const Vector a = data.weights.cwiseProduct(resp.col(k));
            const Matrix w = moekit_test::naive_weighted_least_squares(design, y, a);
            for (Index r = 0; r < d + 1; ++r)
                REQUIRE(e.coefficients[k](r, 0) == Approx(w(r, 0)).epsilon(1e-10).margin(1e-12));
            const Matrix cov = moekit_test::naive_weighted_covariance(y - design * w, a);
            REQUIRE(e.covariances[k].covariance(0, 0) == Approx(cov(0, 0)).epsilon(1e-10));
        }
    }
}

TEST_CASE("a sample weight of 2 equals duplicating the row", "[experts]") {
    moekit::Rng rng(15);
    const Index n = 15;
    const Matrix x = random_matrix(rng, n, 1, 1.0);
    Matrix y(n, 1);
    for (Index i = 0; i < n; ++i)
        y(i, 0) = 0.5 - x(i, 0) + 0.4 * moekit::standard_normal(rng);
    const Matrix resp = random_resp(rng, n, 2);
    const Index dup = 4;

    moekit::Dataset weighted = moekit::make_dataset(y, x);
    weighted.weights(dup) = 2.0;

    Matrix x2(n + 1, 1);
    Matrix y2(n + 1, 1);
    Matrix resp2(n + 1, 2);
    x2 << x, x.row(dup);
    y2 << y, y.row(dup);
    resp2 << resp, resp.row(dup);
    const moekit::Dataset duplicated = moekit::make_dataset(y2, x2);

    for (ExpertKind kind : {ExpertKind::Linear, ExpertKind::Gaussian}) {
        INFO("expert kind " << moekit::to_string(kind));
        Experts a = make_experts(kind, CovarianceType::Full, 2, 1, 1);
        Experts b = a;
        moekit::update_experts(a, weighted, resp, no_ridge());
        moekit::update_experts(b, duplicated, resp2, no_ridge());
        for (Index k = 0; k < 2; ++k) {
            for (Index r = 0; r < a.coefficients[k].rows(); ++r)
                REQUIRE(a.coefficients[k](r, 0) ==
                        Approx(b.coefficients[k](r, 0)).epsilon(1e-12).margin(1e-14));
            REQUIRE(a.covariances[k].covariance(0, 0) ==
                    Approx(b.covariances[k].covariance(0, 0)).epsilon(1e-12));
        }
    }
    // target_scale treats weights as frequencies too.
    REQUIRE(moekit::target_scale(weighted)(0) ==
            Approx(moekit::target_scale(duplicated)(0)).epsilon(1e-12));
}

TEST_CASE("an expert below min_expert_size keeps its parameters and is reported", "[experts]") {
    moekit::Rng rng(16);
    const Index n = 12;
    const Matrix y = random_matrix(rng, n, 2, 1.0);
    moekit::Dataset data = moekit::make_dataset(y);

    Experts start = make_experts(ExpertKind::Gaussian, CovarianceType::Full, 2, 0, 2);
    start.coefficients[1] << 7.0, -7.0;
    start.covariances[1] = factor((Matrix(2, 2) << 2.0, 0.5, 0.5, 1.0).finished());

    SECTION("automatic threshold (d + 2 = 2 for Gaussian experts): one sample is too few") {
        std::vector<Index> labels(n, 0);
        labels[3] = 1;
        Experts e = start;
        const moekit::ExpertUpdateReport report =
            moekit::update_experts(e, data, one_hot(labels, 2), no_ridge());
        REQUIRE(report.kept == std::vector<Index>{1});
        REQUIRE(e.coefficients[1] == start.coefficients[1]);
        REQUIRE(e.covariances[1].covariance == start.covariances[1].covariance);
        REQUIRE(e.covariances[1].lower == start.covariances[1].lower);
        REQUIRE(e.covariances[1].log_det == start.covariances[1].log_det);
        // Expert 0 was updated with its 11 samples.
        const Matrix y0 = rows_with_label(y, labels, 0);
        const RowVector mean0 = moekit_test::naive_weighted_mean(y0, Vector::Ones(y0.rows()));
        REQUIRE(e.coefficients[0](0, 0) == Approx(mean0(0)).epsilon(1e-12).margin(1e-12));
        REQUIRE(e.coefficients[0](0, 1) == Approx(mean0(1)).epsilon(1e-12).margin(1e-12));
    }

    SECTION("explicit threshold counts Σ w_i h_ik, sample weights included") {
        std::vector<Index> labels(n, 0);
        labels[2] = 1;
        labels[5] = 1;
        // Two samples give a rank-one scatter, so a small ridge keeps the estimate SPD.
        moekit::ExpertRegularization reg;
        reg.reg_covar = 1e-6;
        reg.scale = Vector::Ones(2);
        reg.min_expert_size = 5.0;
        const Matrix resp = one_hot(labels, 2);

        data.weights(2) = 2.0;
        data.weights(5) = 2.0; // effective size 4 < 5: kept
        Experts e = start;
        moekit::ExpertUpdateReport report = moekit::update_experts(e, data, resp, reg);
        REQUIRE(report.kept == std::vector<Index>{1});
        REQUIRE(e.coefficients[1] == start.coefficients[1]);
        REQUIRE(e.covariances[1].covariance == start.covariances[1].covariance);

        data.weights(2) = 3.0;
        data.weights(5) = 3.0; // effective size 6 >= 5: updated
        e = start;
        report = moekit::update_experts(e, data, resp, reg);
        REQUIRE(report.kept.empty());
        // Weighted mean of the two samples with equal weights is their midpoint.
        REQUIRE(e.coefficients[1](0, 0) ==
                Approx(0.5 * (y(2, 0) + y(5, 0))).epsilon(1e-12).margin(1e-12));
        REQUIRE(e.coefficients[1](0, 1) ==
                Approx(0.5 * (y(2, 1) + y(5, 1))).epsilon(1e-12).margin(1e-12));
    }
}

TEST_CASE("expert_log_densities matches per-sample naive densities", "[experts]") {
    moekit::Rng rng(17);
    SECTION("Gaussian experts, q = 2, full covariances") {
        Experts e;
        e.kind = ExpertKind::Gaussian;
        e.covariance_type = CovarianceType::Full;
        e.coefficients = {(Matrix(1, 2) << 0.0, 1.0).finished(),
                          (Matrix(1, 2) << 3.0, -2.0).finished()};
        const std::vector<Matrix> covs = {(Matrix(2, 2) << 4.0, 2.0, 2.0, 3.0).finished(),
                                          (Matrix(2, 2) << 0.5, -0.1, -0.1, 0.2).finished()};
        e.covariances = {factor(covs[0]), factor(covs[1])};
        const Matrix y = random_matrix(rng, 10, 2, 2.0);
        const moekit::Dataset data = moekit::make_dataset(y);
        const Matrix logp = moekit::expert_log_densities(e, data);
        REQUIRE(logp.rows() == 10);
        REQUIRE(logp.cols() == 2);
        for (Index i = 0; i < 10; ++i)
            for (Index k = 0; k < 2; ++k) {
                const RowVector r = y.row(i) - e.coefficients[k].row(0);
                // Hand formula for 2×2: Σ⁻¹ = adj(Σ)/det(Σ).
                const Matrix& s = covs[k];
                const double det = s(0, 0) * s(1, 1) - s(0, 1) * s(1, 0);
                const double maha =
                    (s(1, 1) * r(0) * r(0) - 2.0 * s(0, 1) * r(0) * r(1) + s(0, 0) * r(1) * r(1)) /
                    det;
                const double expected =
                    -std::log(2.0 * std::numbers::pi) - 0.5 * std::log(det) - 0.5 * maha;
                REQUIRE(logp(i, k) == Approx(expected).epsilon(1e-13));
            }
    }
    SECTION("linear experts, q = 1") {
        Experts e;
        e.kind = ExpertKind::Linear;
        e.covariance_type = CovarianceType::Full;
        e.coefficients = {(Matrix(2, 1) << 1.0, 2.0).finished(),
                          (Matrix(2, 1) << -1.0, 0.5).finished()};
        const std::vector<double> variances = {0.25, 2.0};
        e.covariances = {factor(Matrix::Constant(1, 1, variances[0])),
                         factor(Matrix::Constant(1, 1, variances[1]))};
        const Matrix x = random_matrix(rng, 8, 1, 1.0);
        const Matrix y = random_matrix(rng, 8, 1, 2.0);
        const moekit::Dataset data = moekit::make_dataset(y, x);
        const Matrix logp = moekit::expert_log_densities(e, data);
        for (Index i = 0; i < 8; ++i)
            for (Index k = 0; k < 2; ++k) {
                const double mean = e.coefficients[k](0, 0) + e.coefficients[k](1, 0) * x(i, 0);
                const boost::math::normal_distribution<double> normal(mean,
                                                                      std::sqrt(variances[k]));
                REQUIRE(logp(i, k) ==
                        Approx(std::log(boost::math::pdf(normal, y(i, 0)))).epsilon(1e-13));
            }
        // expert_mean and expert_design agree with x̃ W_k written out.
        const Matrix design = moekit::expert_design(e, data);
        REQUIRE(design.cols() == 2);
        for (Index i = 0; i < 8; ++i) {
            REQUIRE(design(i, 0) == 1.0);
            REQUIRE(design(i, 1) == x(i, 0));
        }
        const Matrix mean1 = moekit::expert_mean(e, data, 1);
        for (Index i = 0; i < 8; ++i)
            REQUIRE(mean1(i, 0) == Approx(-1.0 + 0.5 * x(i, 0)).epsilon(1e-15).margin(1e-15));
    }
    SECTION("linear experts, q = 1: many experts and inputs, two blocks and a tail") {
        // Residual and density in the register of the fitted mean, four experts per sweep; more
        // than 32 inputs go through memory. Against long-double sums per sample.
        const Index n = 4096 + 37;
        for (const Index d : {0, 3, 33}) {
            for (const Index K : {1, 3, 5, 9}) {
                INFO("d = " << d << ", K = " << K);
                Experts e = make_experts(ExpertKind::Linear, CovarianceType::Full, K, d, 1);
                for (Index k = 0; k < K; ++k) {
                    e.coefficients[k] = random_matrix(rng, d + 1, 1, 1.0);
                    e.covariances[k] = factor(Matrix::Constant(1, 1, 0.1 + moekit::uniform01(rng)));
                }
                const Matrix x = random_matrix(rng, n, d, 1.0);
                const Matrix y = random_matrix(rng, n, 1, 3.0);
                const moekit::Dataset data = moekit::make_dataset(y, x);
                const Matrix logp = moekit::expert_log_densities(e, data);
                for (Index i = 0; i < n; i += 7)
                    for (Index k = 0; k < K; ++k) {
                        long double mean = e.coefficients[k](0, 0);
                        for (Index l = 0; l < d; ++l)
                            mean += static_cast<long double>(e.coefficients[k](l + 1, 0)) * x(i, l);
                        const long double r = y(i, 0) - mean;
                        const long double var = e.covariances[k].covariance(0, 0);
                        const long double expected =
                            -0.5L * std::log(2.0L * std::numbers::pi_v<long double> * var) - 0.5L * r * r / var;
                        REQUIRE(logp(i, k) == Approx(static_cast<double>(expected)).epsilon(1e-12).margin(1e-12));
                    }
            }
        }
    }
}

TEST_CASE("Gaussian experts ignore x: their design is a column of ones", "[experts]") {
    Experts e = make_experts(ExpertKind::Gaussian, CovarianceType::Full, 2, 0, 1);
    e.coefficients[1] << 4.5;
    const moekit::Dataset data =
        moekit::make_dataset(Matrix::Zero(5, 1), Matrix::Constant(5, 3, 9.0));
    const Matrix design = moekit::expert_design(e, data);
    REQUIRE(design.rows() == 5);
    REQUIRE(design.cols() == 1);
    REQUIRE(design == Matrix::Ones(5, 1));
    REQUIRE(moekit::expert_mean(e, data, 1) == Matrix::Constant(5, 1, 4.5));
}

TEST_CASE("n_parameters of experts: coefficients plus covariances", "[experts]") {
    // Gaussian, q = 2, K = 3: 3·2 means plus 3·3 (full), 3 (tied), 3·2 (diag), 3 (spherical).
    REQUIRE(moekit::n_parameters(
                make_experts(ExpertKind::Gaussian, CovarianceType::Full, 3, 0, 2)) == 6 + 9);
    REQUIRE(moekit::n_parameters(
                make_experts(ExpertKind::Gaussian, CovarianceType::Tied, 3, 0, 2)) == 6 + 3);
    REQUIRE(moekit::n_parameters(
                make_experts(ExpertKind::Gaussian, CovarianceType::Diag, 3, 0, 2)) == 6 + 6);
    REQUIRE(moekit::n_parameters(
                make_experts(ExpertKind::Gaussian, CovarianceType::Spherical, 3, 0, 2)) == 6 + 3);
    // Linear, d = 2, q = 1, K = 2: 2·3 coefficients + 2 variances (NPreg: 8 + 1 mixing weight = 9).
    REQUIRE(moekit::n_parameters(make_experts(ExpertKind::Linear, CovarianceType::Full, 2, 2, 1)) ==
            8);
    // Linear, d = 1, q = 2, K = 2, full: 2·(2·2) + 2·3 = 14.
    REQUIRE(moekit::n_parameters(make_experts(ExpertKind::Linear, CovarianceType::Full, 2, 1, 2)) ==
            14);
}

TEST_CASE("target_scale is a per-target variance, positive for constant targets", "[experts]") {
    moekit::Rng rng(18);
    const Index n = 30;
    Matrix y = random_matrix(rng, n, 2, 3.0);
    y.col(1) = 0.1 * y.col(1);
    const moekit::Dataset base = moekit::make_dataset(y);
    const Vector s = moekit::target_scale(base);
    REQUIRE(s.size() == 2);
    REQUIRE(s(0) > 0.0);
    REQUIRE(s(1) > 0.0);
    // A variance: scaling y by 2 multiplies it by 4, shifting y leaves it alone, and each
    // target has its own.
    const Vector s2 = moekit::target_scale(moekit::make_dataset(Matrix(2.0 * y)));
    REQUIRE(s2(0) == Approx(4.0 * s(0)).epsilon(1e-12));
    REQUIRE(s2(1) == Approx(4.0 * s(1)).epsilon(1e-12));
    const Vector s3 = moekit::target_scale(moekit::make_dataset(Matrix(y.array() + 100.0)));
    REQUIRE(s3(0) == Approx(s(0)).epsilon(1e-9));
    REQUIRE(s3(1) == Approx(s(1)).epsilon(1e-9));
    REQUIRE(s(1) < 0.1 * s(0));
    // A constant target still gets a positive ridge: its squared value, or 1 if it is 0.
    Matrix constant(n, 2);
    constant.col(0).setConstant(5.0);
    constant.col(1).setZero();
    const Vector c = moekit::target_scale(moekit::make_dataset(constant));
    REQUIRE(c(0) == Approx(25.0).epsilon(1e-15));
    REQUIRE(c(1) == 1.0);
}

TEST_CASE("initial_experts: own estimates, and the pooled estimate for an empty expert",
          "[experts]") {
    moekit::Rng rng(19);
    const Index n = 24;
    const Matrix y = random_matrix(rng, n, 2, 1.0);
    const moekit::Dataset data = moekit::make_dataset(y);
    std::vector<Index> labels;
    for (Index i = 0; i < n; ++i)
        labels.push_back(i % 2); // expert 2 gets nothing
    const Experts e = moekit::initial_experts(
        ExpertKind::Gaussian, CovarianceType::Full, data, one_hot(labels, 3), no_ridge());
    REQUIRE(e.n_experts() == 3);
    REQUIRE(e.kind == ExpertKind::Gaussian);
    REQUIRE(e.covariance_type == CovarianceType::Full);
    for (Index k = 0; k < 2; ++k) {
        const Matrix yk = rows_with_label(y, labels, k);
        const RowVector mean = moekit_test::naive_weighted_mean(yk, Vector::Ones(yk.rows()));
        REQUIRE(e.coefficients[k](0, 0) == Approx(mean(0)).epsilon(1e-12).margin(1e-12));
        REQUIRE(e.coefficients[k](0, 1) == Approx(mean(1)).epsilon(1e-12).margin(1e-12));
    }
    const Vector ones = Vector::Ones(n);
    const RowVector all_mean = moekit_test::naive_weighted_mean(y, ones);
    const Matrix all_cov = moekit_test::naive_weighted_covariance(y.rowwise() - all_mean, ones);
    REQUIRE(e.coefficients[2](0, 0) == Approx(all_mean(0)).epsilon(1e-12).margin(1e-12));
    REQUIRE(e.coefficients[2](0, 1) == Approx(all_mean(1)).epsilon(1e-12).margin(1e-12));
    for (Index a = 0; a < 2; ++a)
        for (Index b = 0; b < 2; ++b)
            REQUIRE(e.covariances[2].covariance(a, b) ==
                    Approx(all_cov(a, b)).epsilon(1e-11).margin(1e-13));
    for (Index k = 0; k < 3; ++k)
        check_factor(e.covariances[k]);
}

TEST_CASE("expert kinds parse and print", "[experts]") {
    REQUIRE(moekit::to_string(ExpertKind::Gaussian) == "gaussian");
    REQUIRE(moekit::to_string(ExpertKind::Linear) == "linear");
    REQUIRE(moekit::parse_expert_kind("Gaussian") == ExpertKind::Gaussian);
    REQUIRE(moekit::parse_expert_kind("LINEAR") == ExpertKind::Linear);
    REQUIRE_THROWS_AS(moekit::parse_expert_kind("poisson"), moekit::InvalidArgument);
}

TEST_CASE("the one-pass M-step matches the naive statistics from near and from far coefficients", "[experts]") {
    // update_experts gathers its statistics around the current coefficients and subtracts the
    // update's share; when that would lose more than 10 bits (coefficients 1e4 standard
    // deviations off, or inputs far from the origin, where intercept and slopes cancel) it
    // recomputes the scatter by a second pass. Every way gives the naive weighted least squares
    // and covariance, for every covariance structure. Targets far from the origin (offset 1e3).
    // One target (its own kernel) and two.
    moekit::Rng rng(31);
    const Index n = 5000; // two sample blocks
    const Index d = 2;
    const Index K = 2;
    const Matrix x0 = random_matrix(rng, n, d, 1.0);
    Matrix noise(n, 2);
    for (Index i = 0; i < n; ++i)
        for (Index t = 0; t < 2; ++t) noise(i, t) = moekit::standard_normal(rng);
    const Matrix resp = random_resp(rng, n, K);
    for (const Index q : {1, 2}) {
        for (const double x_offset : {0.0, 1e3}) {
            const Matrix x = x0.array() + x_offset;
            Matrix y2(n, 2);
            for (Index i = 0; i < n; ++i) {
                y2(i, 0) = 1e3 + 2.0 * x0(i, 0) + noise(i, 0);
                y2(i, 1) = -1e3 - x0(i, 1) + 0.5 * noise(i, 1) + 0.3 * y2(i, 0);
            }
            const Matrix y = y2.leftCols(q);
            Matrix design(n, d + 1);
            design.col(0).setOnes();
            design.rightCols(d) = x;
            for (const ExpertKind kind : {ExpertKind::Gaussian, ExpertKind::Linear}) {
                const moekit::Dataset data =
                    kind == ExpertKind::Linear ? moekit::make_dataset(y, x) : moekit::make_dataset(y);
                const Matrix dm = kind == ExpertKind::Linear ? design : Matrix(Matrix::Ones(n, 1));
                // The naive truth per expert, and the pooled scatter for the tied structure.
                std::vector<Matrix> w_true;
                std::vector<Matrix> cov_true;
                Matrix pooled = Matrix::Zero(q, q);
                double total = 0.0;
                for (Index k = 0; k < K; ++k) {
                    const Vector a = data.weights.cwiseProduct(resp.col(k));
                    w_true.push_back(moekit_test::naive_weighted_least_squares(dm, y, a));
                    cov_true.push_back(moekit_test::naive_weighted_covariance(y - dm * w_true.back(), a));
                    pooled += a.sum() * cov_true.back();
                    total += a.sum();
                }
                pooled /= total;
                for (const CovarianceType type :
                     {CovarianceType::Full, CovarianceType::Diag, CovarianceType::Spherical, CovarianceType::Tied}) {
                    for (const double offset : {0.3, 1e4}) { // near: one pass; far: the second pass
                        INFO("q = " << q << ", x offset " << x_offset << ", kind " << moekit::to_string(kind) << ", covariance "
                                         << moekit::to_string(type) << ", coefficient offset " << offset);
                        Experts e = make_experts(kind, type, K, d, q);
                        for (Index k = 0; k < K; ++k) {
                            e.coefficients[k] = w_true[static_cast<std::size_t>(k)];
                            e.coefficients[k].row(0).array() += offset;
                        }
                        moekit::update_experts(e, data, resp, no_ridge());
                        for (Index k = 0; k < K; ++k) {
                            const Matrix& cov = cov_true[static_cast<std::size_t>(k)];
                            Matrix expected = cov;
                            if (type == CovarianceType::Diag) expected = Matrix(cov.diagonal().asDiagonal());
                            if (type == CovarianceType::Spherical)
                                expected = cov.trace() / static_cast<double>(q) * Matrix::Identity(q, q);
                            if (type == CovarianceType::Tied) expected = pooled;
                            const double scale = std::max(1.0, w_true[static_cast<std::size_t>(k)].cwiseAbs().maxCoeff());
                            REQUIRE(moekit_test::max_abs_diff(e.coefficients[k], w_true[static_cast<std::size_t>(k)]) <= 1e-7 * scale); // cond(G) ~ 1e7 with x far out
                            for (Index r = 0; r < q; ++r)
                                for (Index c = 0; c < q; ++c)
                                    REQUIRE(e.covariances[k].covariance(r, c) == Approx(expected(r, c)).epsilon(1e-9).margin(1e-12));
                        }
                    }
                }
            }
        }
    }
}

TEST_CASE("linear experts' M-step equals naive weighted least squares for many experts and inputs", "[experts]") {
    // The design part X̃ᵀ diag(w h_k) X̃ of every expert comes from one register-tiled sweep over
    // the block (all experts at once, a narrower last tile, a scalar tail): naive weighted least
    // squares and residual covariances per expert, over three sample blocks (the last partial).
    // With one target, X̃ᵀ A_k r_k and r_kᵀ A_k r_k come from sweeps over two experts and up to
    // five inputs at a time: d = 5, 6, 12 end a group exactly, one past, and mid-way.
    moekit::Rng rng(91);
    const Index n = 9001;
    for (const Index q : {1, 2}) {
        for (const Index d : {1, 5, 6, 9, 12}) {
            for (const Index K : {1, 2, 3, 7}) {
                INFO("q = " << q << ", d = " << d << ", K = " << K);
                const Matrix x = random_matrix(rng, n, d, 1.0);
                Matrix y(n, q);
                for (Index i = 0; i < n; ++i)
                    for (Index t = 0; t < q; ++t) y(i, t) = x.row(i).sum() * (t + 1.0) + moekit::standard_normal(rng);
                moekit::Dataset data = moekit::make_dataset(y, x);
                for (Index i = 0; i < n; ++i) data.weights(i) = 0.5 + moekit::uniform01(rng);
                const Matrix resp = random_resp(rng, n, K);
                Matrix design(n, d + 1);
                design.col(0).setOnes();
                design.rightCols(d) = x;
                Experts e = make_experts(ExpertKind::Linear, CovarianceType::Full, K, d, q);
                moekit::update_experts(e, data, resp, no_ridge());
                for (Index k = 0; k < K; ++k) {
                    const Vector a = data.weights.cwiseProduct(resp.col(k));
                    const Matrix w = moekit_test::naive_weighted_least_squares(design, y, a);
                    const Matrix cov = moekit_test::naive_weighted_covariance(y - design * w, a);
                    REQUIRE(moekit_test::max_abs_diff(e.coefficients[k], w) <= 1e-10 * std::max(1.0, w.cwiseAbs().maxCoeff()));
                    REQUIRE(moekit_test::max_abs_diff(e.covariances[k].covariance, cov) <= 1e-10 * cov.cwiseAbs().maxCoeff());
                }
            }
        }
    }
}

TEST_CASE("update_experts and initial_experts reject misuse, naming the function and the argument", "[experts]") {
    moekit::Rng rng(33);
    const Index n = 20;
    const Matrix y = random_matrix(rng, n, 2, 1.0);
    const Matrix x = random_matrix(rng, n, 3, 1.0);
    const moekit::Dataset data = moekit::make_dataset(y, x);
    const Matrix resp = random_resp(rng, n, 2);
    using Catch::Matchers::Contains;
    // No targets: the register kernels index their tables by q − 1 (a crash before this check).
    const moekit::Dataset no_targets = moekit::make_dataset(Matrix(n, 0));
    Experts g = make_experts(ExpertKind::Gaussian, CovarianceType::Full, 2, 0, 1);
    REQUIRE_THROWS_WITH(moekit::update_experts(g, no_targets, resp, no_ridge()),
                        Contains("update_experts") && Contains("data.y's column count"));
    REQUIRE_THROWS_AS(moekit::initial_experts(ExpertKind::Gaussian, CovarianceType::Full, no_targets, resp, no_ridge()),
                      moekit::InvalidArgument);
    // Responsibilities of the wrong shape.
    Experts e = make_experts(ExpertKind::Linear, CovarianceType::Full, 2, 3, 2);
    const Experts before = e;
    REQUIRE_THROWS_WITH(moekit::update_experts(e, data, resp.topRows(n - 1), no_ridge()),
                        Contains("update_experts") && Contains("resp's row count") && Contains("19"));
    REQUIRE_THROWS_WITH(moekit::update_experts(e, data, random_resp(rng, n, 3), no_ridge()),
                        Contains("resp's column count") && Contains("number of experts, 2"));
    REQUIRE_THROWS_WITH(
        moekit::initial_experts(ExpertKind::Linear, CovarianceType::Full, data, resp.topRows(3), no_ridge()),
        Contains("initial_experts") && Contains("resp's row count"));
    // Coefficients that do not fit the data (experts of 2 inputs on data with 3).
    Experts narrow = make_experts(ExpertKind::Linear, CovarianceType::Full, 2, 2, 2);
    REQUIRE_THROWS_WITH(moekit::update_experts(narrow, data, resp, no_ridge()),
                        Contains("experts.coefficients[0]'s shape") && Contains("3 x 2") && Contains("4 x 2"));
    // The failed calls left the experts as they were; valid arguments still update them.
    for (Index k = 0; k < 2; ++k) {
        REQUIRE(e.coefficients[k] == before.coefficients[k]);
        REQUIRE(e.covariances[k].covariance == before.covariances[k].covariance);
    }
    REQUIRE_NOTHROW(moekit::update_experts(e, data, resp, no_ridge()));
    REQUIRE(e.coefficients[0] != before.coefficients[0]);
}
