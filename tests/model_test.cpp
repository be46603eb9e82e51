// Tests of the model operations (include/moekit/model.hpp): log_joint, the E-step, the
// log-likelihood, predictions and parameter counts.
// Truths: a naive double loop over samples and experts (log softmax of the gate scores plus
// Boost.Math / elimination log densities), a literal long-double log(Σ exp) for the
// normaliser, and the parameter counts written out from their definitions.

#include "moekit/errors.hpp"
#include "moekit/model.hpp"
#include "moekit/rng.hpp"
#include "support/naive.hpp"

#include <boost/math/distributions/normal.hpp>
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <variant>
#include <vector>

using moekit::ConstantGate;
using moekit::CovarianceType;
using moekit::ExpertKind;
using moekit::Index;
using moekit::Matrix;
using moekit::Model;
using moekit::RowVector;
using moekit::SoftmaxGate;
using moekit::Vector;

namespace {

moekit::CovarianceFactor factor(const Matrix& s) {
    const auto f = moekit::try_factor(s);
    REQUIRE(f.has_value());
    return *f;
}

/// Linear experts (d = 1, q = 1) with a softmax gate on one gate input, K = 3.
Model softmax_linear_model() {
    Model m;
    Matrix v(2, 3);
    v << 0.0, 0.5, -1.0, //
        0.0, 1.5, -2.0;
    m.gate = SoftmaxGate{v};
    m.experts.kind = ExpertKind::Linear;
    m.experts.covariance_type = CovarianceType::Full;
    m.experts.coefficients = {(Matrix(2, 1) << 1.0, 2.0).finished(),
                              (Matrix(2, 1) << -1.0, 0.5).finished(),
                              (Matrix(2, 1) << 3.0, -1.0).finished()};
    m.experts.covariances = {factor(Matrix::Constant(1, 1, 0.25)),
                             factor(Matrix::Constant(1, 1, 1.0)),
                             factor(Matrix::Constant(1, 1, 4.0))};
    m.target_names = {"y"};
    m.input_names = {"x"};
    m.gate_input_names = {"z"};
    return m;
}

/// Gaussian experts (q = 2, full) with a constant gate, K = 2.
Model constant_gaussian_model() {
    Model m;
    m.gate = ConstantGate{(Vector(2) << 0.3, 0.7).finished()};
    m.experts.kind = ExpertKind::Gaussian;
    m.experts.covariance_type = CovarianceType::Full;
    m.experts.coefficients = {(Matrix(1, 2) << 0.0, 0.0).finished(),
                              (Matrix(1, 2) << 3.0, 1.0).finished()};
    m.experts.covariances = {factor((Matrix(2, 2) << 1.0, 0.3, 0.3, 0.5).finished()),
                             factor((Matrix(2, 2) << 2.0, -0.4, -0.4, 1.0).finished())};
    m.target_names = {"a", "b"};
    return m;
}

double boost_log_normal(double y, double mean, double variance) {
    const boost::math::normal_distribution<double> normal(mean, std::sqrt(variance));
    return std::log(boost::math::pdf(normal, y));
}

/// Naive log g_k(z_i) + log p_k(y_i | x_i) for the softmax-linear model.
Matrix naive_log_joint_linear(const Model& m, const moekit::Dataset& data) {
    const Matrix& v = std::get<SoftmaxGate>(m.gate).coefficients;
    Matrix out(data.y.rows(), 3);
    for (Index i = 0; i < data.y.rows(); ++i) {
        const std::vector<double> g =
            moekit_test::naive_softmax(moekit_test::naive_gate_scores(data.z, i, v));
        for (Index k = 0; k < 3; ++k) {
            const Matrix& w = m.experts.coefficients[static_cast<std::size_t>(k)];
            const double mean = w(0, 0) + w(1, 0) * data.x(i, 0);
            const double var = m.experts.covariances[static_cast<std::size_t>(k)].covariance(0, 0);
            out(i, k) = std::log(g[static_cast<std::size_t>(k)]) +
                        boost_log_normal(data.y(i, 0), mean, var);
        }
    }
    return out;
}

/// Naive log π_k + log N(y_i; μ_k, Σ_k) for the constant-Gaussian model.
Matrix naive_log_joint_gaussian(const Model& m, const moekit::Dataset& data) {
    const Vector& pi = std::get<ConstantGate>(m.gate).weights;
    Matrix out(data.y.rows(), 2);
    for (Index i = 0; i < data.y.rows(); ++i)
        for (Index k = 0; k < 2; ++k) {
            const RowVector r =
                data.y.row(i) - m.experts.coefficients[static_cast<std::size_t>(k)].row(0);
            out(i, k) = std::log(pi(k)) +
                        moekit_test::naive_normal_log_density(
                            r, m.experts.covariances[static_cast<std::size_t>(k)].covariance);
        }
    return out;
}

moekit::Dataset linear_data(std::uint64_t seed, Index n) {
    moekit::Rng rng(seed);
    Matrix x(n, 1);
    Matrix y(n, 1);
    Matrix z(n, 1);
    for (Index i = 0; i < n; ++i) {
        x(i, 0) = -2.0 + 4.0 * moekit::uniform01(rng);
        z(i, 0) = x(i, 0) + 0.3 * moekit::standard_normal(rng);
        y(i, 0) = x(i, 0) + 2.0 * moekit::standard_normal(rng);
    }
    moekit::Dataset data = moekit::make_dataset(y, x, z);
    for (Index i = 0; i < n; ++i)
        data.weights(i) = 0.5 + moekit::uniform01(rng);
    return data;
}

moekit::Dataset gaussian_data(std::uint64_t seed, Index n) {
    moekit::Rng rng(seed);
    Matrix y(n, 2);
    for (Index i = 0; i < n; ++i) {
        y(i, 0) = 1.5 + 2.0 * moekit::standard_normal(rng);
        y(i, 1) = 0.5 + moekit::standard_normal(rng);
    }
    moekit::Dataset data = moekit::make_dataset(y);
    data.target_names = {"a", "b"};
    return data;
}

void check_e_step(const Model& m, const moekit::Dataset& data, const Matrix& naive_joint) {
    const Index n = data.n_samples();
    const Index K = naive_joint.cols();
    const Matrix joint = moekit::log_joint(m, data);
    REQUIRE(joint.rows() == n);
    REQUIRE(joint.cols() == K);
    const moekit::Responsibilities r = moekit::e_step(m, data);
    REQUIRE(r.log_resp.rows() == n);
    REQUIRE(r.log_resp.cols() == K);
    REQUIRE(r.log_norm.size() == n);
    long double loglik = 0.0L;
    for (Index i = 0; i < n; ++i) {
        INFO("sample " << i);
        std::vector<double> row;
        for (Index k = 0; k < K; ++k) {
            REQUIRE(joint(i, k) == Approx(naive_joint(i, k)).epsilon(1e-12).margin(1e-12));
            row.push_back(naive_joint(i, k));
        }
        const double norm = moekit_test::naive_log_sum_exp(row); // log Σ_k exp(log g + log p)
        REQUIRE(r.log_norm(i) == Approx(norm).epsilon(1e-12).margin(1e-12));
        long double total = 0.0L;
        for (Index k = 0; k < K; ++k) {
            REQUIRE(r.log_resp(i, k) ==
                    Approx(naive_joint(i, k) - norm).epsilon(1e-11).margin(1e-11));
            total += std::exp(static_cast<long double>(r.log_resp(i, k)));
        }
        REQUIRE(static_cast<double>(total) == Approx(1.0).epsilon(1e-13));
        loglik += static_cast<long double>(data.weights(i)) * norm;
    }
    REQUIRE(moekit::log_likelihood(m, data) == Approx(static_cast<double>(loglik)).epsilon(1e-12));
    const Vector samples = moekit::log_likelihood_samples(m, data);
    REQUIRE(samples.size() == n);
    for (Index i = 0; i < n; ++i) REQUIRE(samples(i) == r.log_norm(i)); // one normaliser kernel: the same bits
    // The E-step as probabilities (the EM loop's one n×K array): the same normalisers, and
    // exp of the naive log responsibilities, rows summing to 1.
    Matrix h;
    Vector log_norm;
    moekit::e_step_probabilities(m, data, h, log_norm);
    REQUIRE(h.rows() == n);
    REQUIRE(h.cols() == K);
    for (Index i = 0; i < n; ++i) {
        INFO("sample " << i);
        REQUIRE(log_norm(i) == r.log_norm(i));
        std::vector<double> row;
        for (Index k = 0; k < K; ++k) row.push_back(naive_joint(i, k));
        const double norm = moekit_test::naive_log_sum_exp(row);
        for (Index k = 0; k < K; ++k)
            REQUIRE(h(i, k) == Approx(std::exp(naive_joint(i, k) - norm)).epsilon(1e-11).margin(1e-15));
        REQUIRE(h.row(i).sum() == Approx(1.0).epsilon(1e-15 * static_cast<double>(K)));
    }
}

} // namespace

TEST_CASE("e_step matches a naive double loop: softmax gate, linear experts", "[model]") {
    const Model m = softmax_linear_model();
    REQUIRE_NOTHROW(moekit::validate(m, "test"));
    const moekit::Dataset data = linear_data(1, 25);
    check_e_step(m, data, naive_log_joint_linear(m, data));
}

TEST_CASE("e_step matches a naive double loop: constant gate, Gaussian experts", "[model]") {
    const Model m = constant_gaussian_model();
    REQUIRE_NOTHROW(moekit::validate(m, "test"));
    moekit::Dataset data = gaussian_data(2, 25);
    moekit::Rng rng(3);
    for (Index i = 0; i < data.n_samples(); ++i)
        data.weights(i) = 0.25 + 2.0 * moekit::uniform01(rng);
    check_e_step(m, data, naive_log_joint_gaussian(m, data));
}

TEST_CASE("e_step matches a naive double loop over two sample blocks (vectorised kernels)", "[model]") {
    // 4101 samples: a whole 4096-row block of the blocked E-step and a short one.
    const Model m = constant_gaussian_model();
    check_e_step(m, gaussian_data(4, 4101), naive_log_joint_gaussian(m, gaussian_data(4, 4101)));
}

TEST_CASE("e_step and e_step_probabilities agree bit for bit for 1 to 10 experts", "[model]") {
    // Up to 8 experts the probabilities come from exponentials kept in registers, pairs of
    // packets of rows at a time, the rows after them through the general loop; the
    // normalisers must have log_likelihood_samples' and e_step's bits wherever a row sits.
    moekit::Rng rng(23);
    const Index n = 4096 + 21;
    const moekit::Dataset data = gaussian_data(5, n);
    for (Index K = 1; K <= 10; ++K) {
        INFO("K = " << K);
        Model m;
        m.experts.kind = ExpertKind::Gaussian;
        m.experts.covariance_type = CovarianceType::Full;
        Vector weights(K);
        for (Index k = 0; k < K; ++k) {
            Matrix mean(1, 2);
            mean << 4.0 * moekit::uniform01(rng) - 2.0, 4.0 * moekit::uniform01(rng) - 2.0;
            m.experts.coefficients.push_back(mean);
            m.experts.covariances.push_back(factor(Matrix::Identity(2, 2) * (0.2 + moekit::uniform01(rng))));
            weights(k) = 0.1 + moekit::uniform01(rng);
        }
        m.gate = ConstantGate{weights / weights.sum()};
        m.target_names = data.target_names;
        const moekit::Responsibilities r = moekit::e_step(m, data);
        Matrix h;
        Vector log_norm;
        moekit::e_step_probabilities(m, data, h, log_norm);
        const Vector samples = moekit::log_likelihood_samples(m, data);
        for (Index i = 0; i < n; ++i) {
            REQUIRE(log_norm(i) == r.log_norm(i));
            REQUIRE(samples(i) == r.log_norm(i));
            for (Index k = 0; k < K; ++k) {
                // e_k / s against exp(a_k − log-normaliser): the roundings of the normaliser and
                // of the difference (half an ulp of their magnitudes) are relative errors of exp.
                const double expected = std::exp(r.log_resp(i, k));
                const double tolerance = 2.2e-16 * (4.0 + std::abs(r.log_norm(i)) + std::abs(r.log_resp(i, k)));
                REQUIRE(std::abs(h(i, k) - expected) <= tolerance * expected + 1e-300);
            }
        }
    }
}

TEST_CASE("e_step stays finite for a sample far from every expert", "[model]") {
    // y = 1e3 is ~1e3 standard deviations from both experts: every density underflows in
    // linear space, so only a log-space E-step gets a finite normaliser and responsibilities.
    const Model m = constant_gaussian_model();
    moekit::Dataset data = moekit::make_dataset((Matrix(2, 2) << 1e3, -1e3, 0.1, 0.2).finished());
    data.target_names = {"a", "b"};
    const moekit::Responsibilities r = moekit::e_step(m, data);
    const Matrix naive = naive_log_joint_gaussian(m, data);
    REQUIRE(r.log_resp.allFinite());
    REQUIRE(r.log_norm.allFinite());
    for (Index i = 0; i < 2; ++i) {
        const double top = std::max(naive(i, 0), naive(i, 1));
        // max_k a_k <= log Σ_k e^{a_k} <= max_k a_k + log K
        REQUIRE(r.log_norm(i) >= top - 1e-9 * std::fabs(top));
        REQUIRE(r.log_norm(i) <= top + std::log(2.0) + 1e-9 * std::fabs(top));
        long double total = 0.0L;
        for (Index k = 0; k < 2; ++k)
            total += std::exp(static_cast<long double>(r.log_resp(i, k)));
        REQUIRE(static_cast<double>(total) == Approx(1.0).epsilon(1e-13));
    }
    // The far sample belongs to the expert with the larger log joint (by the hand values).
    const Index winner = naive(0, 0) > naive(0, 1) ? 0 : 1;
    REQUIRE(r.log_resp(0, winner) == Approx(0.0).epsilon(0).margin(1e-12));
}

TEST_CASE("gate_probabilities, predict_mean and predict_expert match naive loops", "[model]") {
    const Model m = softmax_linear_model();
    const moekit::Dataset data = linear_data(4, 20);
    const Matrix v = std::get<SoftmaxGate>(m.gate).coefficients;
    const Matrix g = moekit::gate_probabilities(m, data);
    const Matrix mean = moekit::predict_mean(m, data);
    const Eigen::VectorXi expert = moekit::predict_expert(m, data);
    REQUIRE(g.rows() == 20);
    REQUIRE(g.cols() == 3);
    REQUIRE(mean.rows() == 20);
    REQUIRE(mean.cols() == 1);
    REQUIRE(expert.size() == 20);
    for (Index i = 0; i < 20; ++i) {
        const std::vector<double> gn =
            moekit_test::naive_softmax(moekit_test::naive_gate_scores(data.z, i, v));
        long double expected = 0.0L;
        Index best = 0;
        for (Index k = 0; k < 3; ++k) {
            const std::size_t ks = static_cast<std::size_t>(k);
            REQUIRE(g(i, k) == Approx(gn[ks]).epsilon(1e-13).margin(1e-15));
            const Matrix& w = m.experts.coefficients[ks];
            expected += static_cast<long double>(gn[ks]) * (w(0, 0) + w(1, 0) * data.x(i, 0));
            if (gn[ks] > gn[static_cast<std::size_t>(best)]) best = k;
        }
        REQUIRE(mean(i, 0) == Approx(static_cast<double>(expected)).epsilon(1e-12).margin(1e-12));
        REQUIRE(expert(i) == best);
    }
}

TEST_CASE("predict_mean of Gaussian experts with a constant gate is the mixture mean", "[model]") {
    const Model m = constant_gaussian_model();
    const moekit::Dataset data = gaussian_data(5, 4);
    const Matrix mean = moekit::predict_mean(m, data);
    // 0.3·(0, 0) + 0.7·(3, 1) = (2.1, 0.7) for every sample.
    for (Index i = 0; i < 4; ++i) {
        REQUIRE(mean(i, 0) == Approx(2.1).epsilon(1e-14));
        REQUIRE(mean(i, 1) == Approx(0.7).epsilon(1e-14));
        REQUIRE(moekit::predict_expert(m, data)(i) == 1);
    }
}

TEST_CASE("n_parameters of a model is gate plus experts", "[model]") {
    const Model a = softmax_linear_model();
    // gate (K−1)(g+1) = 2·2 = 4; experts K(d+1)q = 3·2 = 6 coefficients + 3 variances.
    REQUIRE(moekit::n_parameters(a) == 4 + 6 + 3);
    REQUIRE(moekit::n_parameters(a) ==
            moekit::n_parameters(a.gate) + moekit::n_parameters(a.experts));
    const Model b = constant_gaussian_model();
    // faithful-like: 1 mixing weight + 2·2 means + 2·3 covariance entries = 11.
    REQUIRE(moekit::n_parameters(b) == 11);
    REQUIRE(a.n_experts() == 3);
    REQUIRE(b.n_experts() == 2);
}

TEST_CASE("validate(Model) rejects inconsistent models", "[model]") {
    {
        Model m = constant_gaussian_model();
        std::get<ConstantGate>(m.gate).weights << 0.3, 0.6; // sums to 0.9
        REQUIRE_THROWS_AS(moekit::validate(m, "test"), moekit::InvalidArgument);
    }
    {
        Model m = constant_gaussian_model();
        std::get<ConstantGate>(m.gate).weights << 1.2, -0.2; // negative weight
        REQUIRE_THROWS_AS(moekit::validate(m, "test"), moekit::InvalidArgument);
    }
    {
        Model m = constant_gaussian_model();
        m.target_names = {"a"}; // q = 2 but one name
        REQUIRE_THROWS_AS(moekit::validate(m, "test"), moekit::InvalidArgument);
    }
    {
        Model m = constant_gaussian_model();
        m.experts.covariances[1].lower(1, 1) *= 2.0; // factor no longer matches the covariance
        REQUIRE_THROWS_AS(moekit::validate(m, "test"), moekit::InvalidArgument);
    }
    {
        Model m = constant_gaussian_model();
        m.experts.coefficients[0](0, 1) = std::numeric_limits<double>::quiet_NaN();
        REQUIRE_THROWS_AS(moekit::validate(m, "test"), moekit::InvalidArgument);
    }
    {
        Model m = softmax_linear_model();
        m.experts.coefficients.pop_back(); // gate has 3 experts, experts 2
        m.experts.covariances.pop_back();
        REQUIRE_THROWS_AS(moekit::validate(m, "test"), moekit::InvalidArgument);
    }
}

TEST_CASE("check_compatible checks the columns a model needs", "[model]") {
    const Model m = softmax_linear_model();
    const moekit::Dataset good = linear_data(6, 5);
    REQUIRE_NOTHROW(moekit::check_compatible(m, good, true, "test"));
    // No gate input.
    const moekit::Dataset no_z = moekit::make_dataset(good.y, good.x);
    REQUIRE_THROWS_AS(moekit::check_compatible(m, no_z, true, "test"), moekit::InvalidArgument);
    // No targets: fine for prediction, not when targets are needed.
    const moekit::Dataset no_y = moekit::make_dataset(Matrix(), good.x, good.z);
    REQUIRE_NOTHROW(moekit::check_compatible(m, no_y, false, "test"));
    REQUIRE_THROWS_AS(moekit::check_compatible(m, no_y, true, "test"), moekit::InvalidArgument);
    // Prediction without targets works and agrees with the targets-present prediction.
    REQUIRE(moekit_test::max_abs_diff(moekit::predict_mean(m, no_y),
                                      moekit::predict_mean(m, good)) == 0.0);
}

TEST_CASE("e_step_probabilities: routed-away experts get exactly 0, an impossible sample a row of 0", "[model]") {
    // Top-1 routing makes two of three log joints -inf in every row; sample 17's target is so
    // far out that its squared residual overflows, so its kept expert's density is 0 as well.
    Model m = softmax_linear_model();
    m.top_k = 1;
    moekit::Dataset data = linear_data(5, 5000);
    data.y(17, 0) = 1e300;
    const moekit::Responsibilities r = moekit::e_step(m, data);
    Matrix h;
    Vector log_norm;
    moekit::e_step_probabilities(m, data, h, log_norm);
    const Index n = data.n_samples();
    REQUIRE(log_norm(17) == -std::numeric_limits<double>::infinity());
    REQUIRE(r.log_norm(17) == -std::numeric_limits<double>::infinity());
    REQUIRE((h.row(17).array() == 0.0).all());
    for (Index i = 0; i < n; ++i) {
        if (i == 17) continue;
        INFO("sample " << i);
        REQUIRE(log_norm(i) == r.log_norm(i));
        Index zeros = 0;
        for (Index k = 0; k < 3; ++k) {
            const double expected = std::exp(r.log_resp(i, k));
            REQUIRE(h(i, k) == Approx(expected).epsilon(1e-15).margin(1e-300));
            zeros += h(i, k) == 0.0 ? 1 : 0;
        }
        REQUIRE(zeros == 2);
        REQUIRE(h.row(i).sum() == 1.0);
    }
    // The impossible sample changes nothing for the others, to the bit: its block is not sent
    // through the reference kernel as a whole, only its own row.
    moekit::Dataset clean = data;
    clean.y(17, 0) = 0.5;
    Matrix h_clean;
    Vector log_norm_clean;
    moekit::e_step_probabilities(m, clean, h_clean, log_norm_clean);
    for (Index i = 0; i < n; ++i) {
        if (i == 17) continue;
        REQUIRE(log_norm(i) == log_norm_clean(i));
        for (Index k = 0; k < 3; ++k) REQUIRE(h(i, k) == h_clean(i, k));
    }
}

TEST_CASE("e_step_probabilities: a NaN with a payload (R's NA) in a mean stays NaN", "[model]") {
    // A NaN's low bits travel with it through arithmetic; R's NA is such a NaN. The expert whose
    // mean is one makes every row's log joint NaN in that column, so every row goes through the
    // reference path, where NaN must propagate whatever the payload: exp(NaN) is NaN.
    for (const std::uint64_t bits : {std::uint64_t{0x7ff80000000007a2}, std::uint64_t{0x7ff8000000000001},
                                     std::uint64_t{0x7ff8000000000fff}, std::uint64_t{0xfff8000000000abc}}) {
        INFO("NaN bits " << std::hex << bits);
        Model m = constant_gaussian_model();
        m.experts.coefficients[1](0, 0) = std::bit_cast<double>(bits);
        const moekit::Dataset data = gaussian_data(3, 37);
        Matrix h;
        Vector log_norm;
        moekit::e_step_probabilities(m, data, h, log_norm);
        for (Index i = 0; i < data.n_samples(); ++i) {
            INFO("sample " << i);
            REQUIRE(std::isnan(log_norm(i)));
            REQUIRE(std::isnan(h(i, 1)));
        }
    }
}
