// Tests of EM fitting (include/moekit/fit.hpp).
// Truths: the EM monotonicity theorem (the log-likelihood never decreases, also for a
// generalised M-step), exact reproducibility from a seed, recovery of simulated parameters
// within a few standard errors computed from the known truth, closed-form ML estimates for
// K = 1 written as naive loops, and the value semantics promised by the API.

#include "moekit/csv.hpp"
#include "moekit/errors.hpp"
#include "moekit/fit.hpp"
#include "moekit/simulate.hpp"
#include "support/matching.hpp"
#include "support/naive.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>
#include <string>
#include <variant>
#include <utility>
#include <vector>

using moekit::ConstantGate;
using moekit::CovarianceType;
using moekit::ExpertKind;
using moekit::FitOptions;
using moekit::FitResult;
using moekit::GateKind;
using moekit::Index;
using moekit::Matrix;
using moekit::Model;
using moekit::RowVector;
using moekit::SoftmaxGate;
using moekit::Vector;

namespace {

/// A bundled data file (appended piece by piece: GCC 12 warns falsely, -Warray-bounds, on
/// std::string(literal) + "literal" here).
std::string data_file(const char* name) {
    std::string path = MOEKIT_DATA_DIR;
    path += '/';
    path += name;
    return path;
}

moekit::Dataset faithful() {
    moekit::CsvSpec spec;
    spec.targets = {"eruptions", "waiting"};
    return moekit::read_csv(data_file("faithful.csv"), spec);
}

moekit::Dataset npreg(bool with_gate_input) {
    moekit::CsvSpec spec;
    spec.targets = {"yn"};
    spec.inputs = {"x", "x2"};
    if (with_gate_input) spec.gate_inputs = {"x"};
    return moekit::read_csv(data_file("NPreg.csv"), spec);
}

moekit::CovarianceFactor factor(const Matrix& s) {
    const auto f = moekit::try_factor(s);
    REQUIRE(f.has_value());
    return *f;
}

/// Every trace step: L_{t+1} >= L_t − 1e-9·|L_t|.
void require_monotone(const std::vector<double>& trace) {
    REQUIRE(trace.size() >= 2);
    for (std::size_t t = 0; t + 1 < trace.size(); ++t) {
        INFO("iteration " << t << ": " << trace[t] << " -> " << trace[t + 1]);
        REQUIRE(std::isfinite(trace[t + 1]));
        REQUIRE(trace[t + 1] >= trace[t] - 1e-9 * std::fabs(trace[t]));
    }
}

/// Exact equality of two models, field by field.
void require_identical(const Model& a, const Model& b) {
    REQUIRE(a.gate.index() == b.gate.index());
    if (std::holds_alternative<ConstantGate>(a.gate)) {
        REQUIRE(std::get<ConstantGate>(a.gate).weights == std::get<ConstantGate>(b.gate).weights);
    } else if (std::holds_alternative<moekit::TreeGate>(a.gate)) {
        const auto& ta = std::get<moekit::TreeGate>(a.gate);
        const auto& tb = std::get<moekit::TreeGate>(b.gate);
        REQUIRE(ta.branching == tb.branching);
        REQUIRE(ta.nodes.size() == tb.nodes.size());
        for (std::size_t j = 0; j < ta.nodes.size(); ++j) REQUIRE(ta.nodes[j] == tb.nodes[j]);
    } else {
        REQUIRE(std::get<SoftmaxGate>(a.gate).coefficients ==
                std::get<SoftmaxGate>(b.gate).coefficients);
    }
    REQUIRE(a.experts.kind == b.experts.kind);
    REQUIRE(a.experts.covariance_type == b.experts.covariance_type);
    REQUIRE(a.experts.n_experts() == b.experts.n_experts());
    for (std::size_t k = 0; k < a.experts.coefficients.size(); ++k) {
        REQUIRE(a.experts.coefficients[k] == b.experts.coefficients[k]);
        REQUIRE(a.experts.covariances[k].covariance == b.experts.covariances[k].covariance);
        REQUIRE(a.experts.covariances[k].lower == b.experts.covariances[k].lower);
        REQUIRE(a.experts.covariances[k].log_det == b.experts.covariances[k].log_det);
    }
    REQUIRE(a.target_names == b.target_names);
    REQUIRE(a.input_names == b.input_names);
    REQUIRE(a.gate_input_names == b.gate_input_names);
}

void require_identical(const FitResult& a, const FitResult& b) {
    REQUIRE(a.trace == b.trace);
    REQUIRE(a.log_likelihood == b.log_likelihood);
    REQUIRE(a.iterations == b.iterations);
    REQUIRE(a.converged == b.converged);
    REQUIRE(a.best_restart == b.best_restart);
    REQUIRE(a.restart_log_likelihoods == b.restart_log_likelihoods);
    REQUIRE(a.n_parameters == b.n_parameters);
    REQUIRE(a.bic == b.bic);
    REQUIRE(a.responsibilities.log_resp == b.responsibilities.log_resp);
    require_identical(a.model, b.model);
}

/// Checks shared by every fit: bookkeeping agrees with its definitions.
void require_consistent(const FitResult& r,
                        const moekit::Dataset& data,
                        const FitOptions& options) {
    REQUIRE(std::isfinite(r.log_likelihood));
    REQUIRE(r.log_likelihood == Approx(moekit::log_likelihood(r.model, data)).epsilon(1e-12));
    REQUIRE(r.n_samples == Approx(data.weights.sum()).epsilon(1e-15));
    REQUIRE(r.n_parameters == moekit::n_parameters(r.model));
    const double p = static_cast<double>(r.n_parameters);
    REQUIRE(r.aic == Approx(-2.0 * r.log_likelihood + 2.0 * p).epsilon(1e-13));
    REQUIRE(r.bic == Approx(-2.0 * r.log_likelihood + p * std::log(r.n_samples)).epsilon(1e-13));
    REQUIRE(r.restart_log_likelihoods.size() == static_cast<std::size_t>(options.restarts));
    REQUIRE(r.best_restart >= 0);
    REQUIRE(r.best_restart < options.restarts);
    for (double l : r.restart_log_likelihoods)
        REQUIRE(r.log_likelihood >= l - 1e-9 * std::fabs(l));
    REQUIRE(r.model.n_experts() == options.n_experts);
    REQUIRE_NOTHROW(moekit::validate(r.model, "test"));
}

} // namespace

TEST_CASE("EM is monotone on faithful (Gaussian, full, K = 3, reg_covar = 0)", "[em]") {
    const moekit::Dataset data = faithful();
    FitOptions options;
    options.expert = ExpertKind::Gaussian;
    options.covariance = CovarianceType::Full;
    options.n_experts = 3;
    options.regularization.reg_covar = 0.0;
    options.seed = 3;
    options.restarts = 1;
    const FitResult r = moekit::fit(data, options);
    require_monotone(r.trace);
    REQUIRE(r.log_likelihood >= r.trace.back() - 1e-9 * std::fabs(r.trace.back()));
    for (const auto& intervention : r.interventions)
        REQUIRE(intervention.kind != "likelihood_decrease");
    require_consistent(r, data, options);
}

TEST_CASE("EM is monotone on NPreg with a softmax gate (linear experts)", "[em]") {
    const moekit::Dataset data = npreg(true);
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.gate = GateKind::Softmax;
    options.n_experts = 2;
    options.regularization.reg_covar = 0.0;
    options.seed = 5;
    options.restarts = 1;
    const FitResult r = moekit::fit(data, options);
    require_monotone(r.trace);
    REQUIRE(r.log_likelihood >= r.trace.back() - 1e-9 * std::fabs(r.trace.back()));
    for (const auto& intervention : r.interventions)
        REQUIRE(intervention.kind != "likelihood_decrease");
    require_consistent(r, data, options);
    // The reference column of the gate stays 0.
    const Matrix& v = std::get<SoftmaxGate>(r.model.gate).coefficients;
    REQUIRE(v.rows() == 2);
    REQUIRE(v.col(0).isZero(0.0));
}

TEST_CASE("every start of a multi-start fit is monotone", "[em]") {
    const moekit::Dataset data = faithful();
    FitOptions options;
    options.covariance = CovarianceType::Diag;
    options.n_experts = 3;
    options.regularization.reg_covar = 0.0;
    options.seed = 17;
    options.restarts = 4;
    for (int restart = 0; restart < options.restarts; ++restart) {
        moekit::Rng rng(moekit::derive_seed(options.seed, static_cast<std::uint64_t>(restart)));
        const Model init = moekit::initialize(data, options, rng);
        const FitResult r = moekit::fit_em(data, init, options, restart);
        INFO("restart " << restart);
        require_monotone(r.trace);
    }
}

TEST_CASE("the same seed gives an identical FitResult", "[em]") {
    SECTION("Gaussian experts, constant gate") {
        const moekit::Dataset data = faithful();
        FitOptions options;
        options.n_experts = 2;
        options.restarts = 3;
        options.seed = 42;
        const FitResult a = moekit::fit(data, options);
        const FitResult b = moekit::fit(data, options);
        require_identical(a, b);
    }
    SECTION("linear experts, softmax gate") {
        const moekit::Dataset data = npreg(true);
        FitOptions options;
        options.expert = ExpertKind::Linear;
        options.gate = GateKind::Softmax;
        options.n_experts = 2;
        options.restarts = 3;
        options.seed = 43;
        const FitResult a = moekit::fit(data, options);
        const FitResult b = moekit::fit(data, options);
        require_identical(a, b);
    }
}

TEST_CASE("EM recovers a well-separated 3-expert Gaussian mixture", "[em]") {
    // Truth: K = 3, q = 2, means 8 units apart, standard deviations <= 1.3.
    Model truth;
    const std::vector<double> pi = {0.2, 0.3, 0.5};
    truth.gate = ConstantGate{(Vector(3) << pi[0], pi[1], pi[2]).finished()};
    truth.experts.kind = ExpertKind::Gaussian;
    truth.experts.covariance_type = CovarianceType::Full;
    truth.experts.coefficients = {(Matrix(1, 2) << 0.0, 0.0).finished(),
                                  (Matrix(1, 2) << 8.0, 0.0).finished(),
                                  (Matrix(1, 2) << 0.0, 8.0).finished()};
    const std::vector<Matrix> sigma = {(Matrix(2, 2) << 1.0, 0.3, 0.3, 0.5).finished(),
                                       (Matrix(2, 2) << 0.6, -0.2, -0.2, 1.2).finished(),
                                       (Matrix(2, 2) << 1.5, 0.0, 0.0, 1.5).finished()};
    for (const Matrix& s : sigma)
        truth.experts.covariances.push_back(factor(s));
    truth.target_names = {"y1", "y2"};

    const Index n = 3000;
    moekit::Rng rng(20240607);
    const moekit::Simulation sim = moekit::simulate(truth, n, rng);
    REQUIRE(sim.data.y.rows() == n);
    REQUIRE(sim.data.y.cols() == 2);

    FitOptions options;
    options.n_experts = 3;
    options.restarts = 3;
    options.seed = 11;
    const FitResult r = moekit::fit(sim.data, options);
    REQUIRE(r.converged);
    require_consistent(r, sim.data, options);

    // Label-switch-safe matching on the distance between means.
    const auto cost = [&](int j, int k) {
        return (r.model.experts.coefficients[static_cast<std::size_t>(j)] -
                truth.experts.coefficients[static_cast<std::size_t>(k)])
            .norm();
    };
    const std::vector<int> perm = moekit_test::best_permutation(3, cost);
    REQUIRE(moekit_test::matching_ambiguity(3, cost) < 0.1);

    // Tolerances: 5 standard errors of the complete-data ML estimates (the components are so
    // far apart that the responsibilities are essentially 0/1, so EM's estimates are those):
    //  weight π_k:  sqrt(π(1−π)/n);  mean_j: sqrt(Σ_jj / n_k);
    //  covariance_ab: sqrt((Σ_aa Σ_bb + Σ_ab²) / n_k), with n_k = n π_k.
    const Vector& w = std::get<ConstantGate>(r.model.gate).weights;
    for (int j = 0; j < 3; ++j) {
        const std::size_t js = static_cast<std::size_t>(j);
        const std::size_t k = static_cast<std::size_t>(perm[js]);
        const double nk = static_cast<double>(n) * pi[k];
        INFO("fitted expert " << j << " = true expert " << k);
        REQUIRE(std::fabs(w(j) - pi[k]) < 5.0 * std::sqrt(pi[k] * (1.0 - pi[k]) / n));
        for (Index a = 0; a < 2; ++a) {
            REQUIRE(std::fabs(r.model.experts.coefficients[js](0, a) -
                              truth.experts.coefficients[k](0, a)) <
                    5.0 * std::sqrt(sigma[k](a, a) / nk));
            for (Index b = 0; b < 2; ++b) {
                const double se = std::sqrt(
                    (sigma[k](a, a) * sigma[k](b, b) + sigma[k](a, b) * sigma[k](a, b)) / nk);
                REQUIRE(std::fabs(r.model.experts.covariances[js].covariance(a, b) -
                                  sigma[k](a, b)) < 5.0 * se);
            }
        }
    }
}

TEST_CASE("EM recovers a 2-expert linear model with a softmax gate", "[em]") {
    // Truth: y = 4 + 1.5x + 0.5ε (expert 0) or y = −4 + 0.5x + 0.8ε (expert 1), x ~ U(−3, 3),
    // P(expert 1 | z = x) = logistic(0.5 + 1.5x). The lines are >= 5 apart on the whole range.
    Model truth;
    Matrix v(2, 2);
    v << 0.0, 0.5, //
        0.0, 1.5;
    truth.gate = SoftmaxGate{v};
    truth.experts.kind = ExpertKind::Linear;
    truth.experts.covariance_type = CovarianceType::Full;
    truth.experts.coefficients = {(Matrix(2, 1) << 4.0, 1.5).finished(),
                                  (Matrix(2, 1) << -4.0, 0.5).finished()};
    const std::vector<double> sd = {0.5, 0.8};
    truth.experts.covariances = {factor(Matrix::Constant(1, 1, sd[0] * sd[0])),
                                 factor(Matrix::Constant(1, 1, sd[1] * sd[1]))};
    truth.target_names = {"y"};
    truth.input_names = {"x"};
    truth.gate_input_names = {"z"};

    const Index n = 3000;
    moekit::Rng rng(777);
    Matrix x(n, 1);
    for (Index i = 0; i < n; ++i)
        x(i, 0) = -3.0 + 6.0 * moekit::uniform01(rng);
    moekit::Dataset inputs = moekit::make_dataset(Matrix(), x, x);
    const moekit::Simulation sim = moekit::simulate(truth, inputs, rng);
    REQUIRE(sim.data.y.rows() == n);
    REQUIRE(sim.data.y.cols() == 1);
    REQUIRE(sim.data.x == x);

    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.gate = GateKind::Softmax;
    options.n_experts = 2;
    options.restarts = 3;
    options.seed = 13;
    const FitResult r = moekit::fit(sim.data, options);
    REQUIRE(r.converged);
    require_consistent(r, sim.data, options);

    const auto cost = [&](int j, int k) {
        return (r.model.experts.coefficients[static_cast<std::size_t>(j)] -
                truth.experts.coefficients[static_cast<std::size_t>(k)])
            .norm();
    };
    const std::vector<int> perm = moekit_test::best_permutation(2, cost);
    REQUIRE(moekit_test::matching_ambiguity(2, cost) < 0.1);

    // Standard errors of the complete-data ML estimates at the truth (the experts are so far
    // apart that EM's responsibilities are essentially the true labels):
    //  coefficients: σ_k² (X̃_kᵀ X̃_k)⁻¹ over the samples of expert k;
    //  σ_k: σ_k / sqrt(2 n_k);
    //  gate: inverse Fisher information of the logistic regression, (Σ p(1−p) z̃ z̃ᵀ)⁻¹.
    for (int j = 0; j < 2; ++j) {
        const std::size_t js = static_cast<std::size_t>(j);
        const int k = perm[js];
        const std::size_t ks = static_cast<std::size_t>(k);
        Matrix gram = Matrix::Zero(2, 2);
        double nk = 0.0;
        for (Index i = 0; i < n; ++i)
            if (sim.expert(i) == k) {
                nk += 1.0;
                gram(0, 0) += 1.0;
                gram(0, 1) += x(i, 0);
                gram(1, 1) += x(i, 0) * x(i, 0);
            }
        gram(1, 0) = gram(0, 1);
        const Matrix inverse = moekit_test::naive_solve(gram, Matrix::Identity(2, 2)).solution;
        INFO("fitted expert " << j << " = true expert " << k);
        for (Index a = 0; a < 2; ++a) {
            const double se = sd[ks] * std::sqrt(inverse(a, a));
            REQUIRE(std::fabs(r.model.experts.coefficients[js](a, 0) -
                              truth.experts.coefficients[ks](a, 0)) < 5.0 * se);
        }
        const double fitted_sd = std::sqrt(r.model.experts.covariances[js].covariance(0, 0));
        REQUIRE(std::fabs(fitted_sd - sd[ks]) < 5.0 * sd[ks] / std::sqrt(2.0 * nk));
    }
    Matrix info = Matrix::Zero(2, 2);
    for (Index i = 0; i < n; ++i) {
        const double p = 1.0 / (1.0 + std::exp(-(0.5 + 1.5 * x(i, 0))));
        const double wgt = p * (1.0 - p);
        info(0, 0) += wgt;
        info(0, 1) += wgt * x(i, 0);
        info(1, 1) += wgt * x(i, 0) * x(i, 0);
    }
    info(1, 0) = info(0, 1);
    const Matrix gate_cov = moekit_test::naive_solve(info, Matrix::Identity(2, 2)).solution;
    // Fitted gate difference (column of true expert 1) − (column of true expert 0).
    const Matrix& fv = std::get<SoftmaxGate>(r.model.gate).coefficients;
    const Index col1 = perm[0] == 1 ? 0 : 1;
    const Index col0 = 1 - col1;
    for (Index a = 0; a < 2; ++a) {
        const double diff = fv(a, col1) - fv(a, col0);
        REQUIRE(std::fabs(diff - v(a, 1)) < 5.0 * std::sqrt(gate_cov(a, a)));
    }
}

TEST_CASE("fit never modifies the warm-start model", "[em]") {
    const moekit::Dataset data = faithful();
    FitOptions options;
    options.n_experts = 2;
    options.seed = 1;
    options.max_iter = 3; // a rough model, far from convergence
    const FitResult rough = moekit::fit(data, options);
    const Model warm = rough.model;
    const Model copy = warm;
    options.max_iter = 1000;
    options.restarts = 2;
    const FitResult r = moekit::fit(data, options, &warm);
    require_identical(warm, copy);
    REQUIRE(r.log_likelihood >= rough.log_likelihood);
    // fit_em takes its start by value too.
    const FitResult e = moekit::fit_em(data, warm, options);
    require_identical(warm, copy);
    require_monotone(e.trace);
}

TEST_CASE("K larger than the number of distinct rows throws InvalidArgument", "[em]") {
    Matrix y(12, 1);
    for (Index i = 0; i < 12; ++i)
        y(i, 0) = static_cast<double>(i % 3); // 3 distinct rows
    const moekit::Dataset data = moekit::make_dataset(y);
    FitOptions options;
    options.n_experts = 4;
    REQUIRE_THROWS_AS(moekit::fit(data, options), moekit::InvalidArgument);
}

TEST_CASE("bad fit options throw InvalidArgument", "[em]") {
    const moekit::Dataset data = faithful();
    {
        FitOptions options;
        options.n_experts = 0;
        REQUIRE_THROWS_AS(moekit::fit(data, options), moekit::InvalidArgument);
    }
    {
        FitOptions options;
        options.tol = -1.0;
        REQUIRE_THROWS_AS(moekit::validate(options, "test"), moekit::InvalidArgument);
    }
    {
        FitOptions options;
        options.restarts = 0;
        REQUIRE_THROWS_AS(moekit::validate(options, "test"), moekit::InvalidArgument);
    }
    {
        FitOptions options;
        options.max_iter = -5;
        REQUIRE_THROWS_AS(moekit::validate(options, "test"), moekit::InvalidArgument);
    }
    {
        FitOptions options;
        options.regularization.reg_covar = -1e-3;
        REQUIRE_THROWS_AS(moekit::validate(options, "test"), moekit::InvalidArgument);
    }
    {
        // A softmax gate needs gate inputs.
        FitOptions options;
        options.gate = GateKind::Softmax;
        REQUIRE_THROWS_AS(moekit::fit(data, options), moekit::InvalidArgument);
    }
    REQUIRE_NOTHROW(moekit::validate(FitOptions{}, "test"));
}

TEST_CASE("K = 1 equals the closed-form ML fit", "[em]") {
    SECTION("Gaussian, full covariance, faithful") {
        const moekit::Dataset data = faithful();
        FitOptions options;
        options.n_experts = 1;
        options.regularization.reg_covar = 0.0;
        const FitResult r = moekit::fit(data, options);
        const Index n = data.y.rows();
        const Vector ones = Vector::Ones(n);
        const RowVector mean = moekit_test::naive_weighted_mean(data.y, ones);
        const Matrix cov =
            moekit_test::naive_weighted_covariance(data.y.rowwise() - mean, ones); // divide by n
        long double loglik = 0.0L;
        for (Index i = 0; i < n; ++i)
            loglik += moekit_test::naive_normal_log_density(data.y.row(i) - mean, cov);
        REQUIRE(r.model.n_experts() == 1);
        REQUIRE(std::get<ConstantGate>(r.model.gate).weights(0) == Approx(1.0).epsilon(1e-15));
        for (Index a = 0; a < 2; ++a) {
            REQUIRE(r.model.experts.coefficients[0](0, a) == Approx(mean(a)).epsilon(1e-12));
            for (Index b = 0; b < 2; ++b)
                REQUIRE(r.model.experts.covariances[0].covariance(a, b) ==
                        Approx(cov(a, b)).epsilon(1e-10));
        }
        REQUIRE(r.log_likelihood == Approx(static_cast<double>(loglik)).epsilon(1e-12));
        // 2 means + 3 covariance entries, no free mixing weight.
        REQUIRE(r.n_parameters == 5);
        REQUIRE(r.bic ==
                Approx(-2.0 * static_cast<double>(loglik) + 5.0 * std::log(static_cast<double>(n)))
                    .epsilon(1e-12));
    }
    SECTION("linear regression, NPreg") {
        const moekit::Dataset data = npreg(false);
        FitOptions options;
        options.expert = ExpertKind::Linear;
        options.n_experts = 1;
        options.regularization.reg_covar = 0.0;
        const FitResult r = moekit::fit(data, options);
        const Index n = data.y.rows();
        Matrix design(n, 3);
        design.col(0).setOnes();
        design.rightCols(2) = data.x;
        const Vector ones = Vector::Ones(n);
        const Matrix w = moekit_test::naive_weighted_least_squares(design, data.y, ones); // OLS
        long double rss = 0.0L;
        for (Index i = 0; i < n; ++i) {
            const double res =
                data.y(i, 0) - (w(0, 0) + w(1, 0) * data.x(i, 0) + w(2, 0) * data.x(i, 1));
            rss += static_cast<long double>(res) * res;
        }
        const double s2 = static_cast<double>(rss / n);
        // Profile log-likelihood at the ML noise variance: −n/2 (log 2πσ̂² + 1).
        const double loglik =
            -0.5 * static_cast<double>(n) * (std::log(2.0 * std::numbers::pi * s2) + 1.0);
        for (Index a = 0; a < 3; ++a)
            REQUIRE(r.model.experts.coefficients[0](a, 0) ==
                    Approx(w(a, 0)).epsilon(1e-9).margin(1e-12));
        REQUIRE(r.model.experts.covariances[0].covariance(0, 0) == Approx(s2).epsilon(1e-10));
        REQUIRE(r.log_likelihood == Approx(loglik).epsilon(1e-12));
        REQUIRE(r.n_parameters == 4); // 3 coefficients + 1 variance
    }
}

TEST_CASE("aic and bic follow their definitions", "[em]") {
    REQUIRE(moekit::aic(-100.0, 5) == Approx(210.0).epsilon(1e-15));
    REQUIRE(moekit::bic(-100.0, 5, 100.0) == Approx(200.0 + 5.0 * std::log(100.0)).epsilon(1e-15));
    REQUIRE(moekit::bic(145.416848157236, 7, 150.0) ==
            Approx(-255.759249255798).epsilon(1e-12)); // tonedata
}

namespace {

/// EM written with the public passes, one per step: e_step_probabilities, update_experts,
/// update_gate; `iterations` iterations from `init`. The reference for fit_em, whose E-step pass
/// also gathers the experts' M-step statistics and the softmax gate's Newton start.
std::pair<Model, std::vector<double>> separate_pass_em(const moekit::Dataset& data,
                                                       Model model,
                                                       const FitOptions& options,
                                                       int iterations) {
    moekit::ExpertRegularization reg = options.regularization;
    if (reg.reg_covar != 0.0) reg.scale = moekit::target_scale(data);
    std::vector<double> trace;
    Matrix h;
    Vector log_norm;
    moekit::e_step_probabilities(model, data, h, log_norm);
    trace.push_back(data.weights.dot(log_norm));
    for (int it = 0; it < iterations; ++it) {
        moekit::update_experts(model.experts, data, h, reg);
        moekit::update_gate(model.gate, data, h, options.gate_options);
        moekit::e_step_probabilities(model, data, h, log_norm);
        trace.push_back(data.weights.dot(log_norm));
    }
    return {model, trace};
}

/// A three-regime regression with a gate input, n rows (several sample blocks), some weights.
moekit::Dataset three_regimes(Index n) {
    moekit::Rng rng(77);
    Matrix y(n, 2);
    Matrix x(n, 2);
    Matrix z(n, 1);
    Vector w(n);
    for (Index i = 0; i < n; ++i) {
        const double t = 6.0 * moekit::uniform01(rng) - 3.0;
        x(i, 0) = t;
        x(i, 1) = moekit::standard_normal(rng);
        z(i, 0) = t;
        const int regime = t < -1.0 ? 0 : (t < 1.0 ? 1 : 2);
        const double slope = regime == 0 ? -2.0 : (regime == 1 ? 0.5 : 3.0);
        y(i, 0) = slope * t + 0.3 * x(i, 1) + 0.2 * moekit::standard_normal(rng) + 100.0;
        y(i, 1) = -slope * t + 0.1 * moekit::standard_normal(rng) + 0.5 * y(i, 0);
        w(i) = 0.5 + moekit::uniform01(rng);
    }
    moekit::Dataset data = moekit::make_dataset(y, x, z);
    data.weights = w;
    return data;
}

} // namespace

TEST_CASE("fit_em's one pass per iteration gives the separate passes' EM path", "[em]") {
    // fit_em gathers the experts' M-step statistics and a softmax gate's first Newton
    // evaluation in the E-step's pass (same kernels, same block order): with a softmax gate the
    // path is bit-identical to EM built from e_step_probabilities, update_experts and
    // update_gate; with a constant gate (whose loop keeps no responsibilities) the mixing
    // weights come from the statistics' sums Σ w h_k instead of a separate column sum, equal to
    // rounding.
    const Index n = 9001; // three sample blocks, the last partial
    const moekit::Dataset data = three_regimes(n);
    struct Case {
        CovarianceType type;
        GateKind gate;
        double reg_covar;
        ExpertKind expert;
        Index K;
    };
    std::vector<Case> cases;
    for (const CovarianceType type :
         {CovarianceType::Full, CovarianceType::Diag, CovarianceType::Spherical, CovarianceType::Tied})
        for (const GateKind gate : {GateKind::Softmax, GateKind::Constant, GateKind::Tree}) {
            for (const double reg_covar : {0.0, 1e-6})
                for (const ExpertKind expert : {ExpertKind::Linear, ExpertKind::Gaussian})
                    cases.push_back({type, gate, reg_covar, expert, 3});
            // K = 6: the E-step pass keeps the residuals of all experts, computed in one group
            // (more than the four of a sweep); e_step's passes take groups of four.
            cases.push_back({type, gate, 0.0, ExpertKind::Linear, 6});
        }
    for (const Case& c : cases) {
        INFO("covariance " << moekit::to_string(c.type) << ", gate " << moekit::to_string(c.gate) << ", reg_covar "
                           << c.reg_covar << ", expert " << moekit::to_string(c.expert) << ", K " << c.K);
        FitOptions options;
        options.expert = c.expert;
        options.gate = c.gate;
        if (c.gate == GateKind::Tree) options.tree = {c.K}; // one softmax node, through the tree code
        options.covariance = c.type;
        options.n_experts = c.K;
        options.regularization.reg_covar = c.reg_covar;
        options.seed = 3;
        options.max_iter = 6;
        options.tol = 0.0;
        moekit::Rng rng(11);
        const Model init = moekit::initialize(data, options, rng);
        const FitResult fused = moekit::fit_em(data, init, options);
        REQUIRE(fused.iterations == 6);
        const auto [reference, trace] = separate_pass_em(data, init, options, 6);
        REQUIRE(fused.trace.size() == trace.size());
        // The log-likelihoods are summed per block in the E-step pass (not by one dot product
        // over all samples): equal to rounding.
        for (std::size_t t = 0; t < trace.size(); ++t) REQUIRE(fused.trace[t] == Approx(trace[t]).epsilon(1e-13));
        if (c.gate != GateKind::Constant) {
            require_identical(fused.model, reference);
        } else {
            const Vector& a = std::get<ConstantGate>(fused.model.gate).weights;
            const Vector& b = std::get<ConstantGate>(reference.gate).weights;
            REQUIRE(moekit_test::max_abs_diff(a, b) <= 1e-13);
            for (std::size_t k = 0; k < static_cast<std::size_t>(c.K); ++k)
                REQUIRE(moekit_test::max_abs_diff(fused.model.experts.coefficients[k], reference.experts.coefficients[k]) <=
                        1e-10);
        }
    }
}

TEST_CASE("fit_em without kept responsibilities computes them for the exact second pass", "[em]") {
    // With a constant gate the EM loop keeps no responsibilities; when the one-pass M-step
    // would lose too many bits (a start 10⁴ standard deviations off) the exact second pass needs
    // them and fit_em computes them for it. The path equals EM built from the public passes.
    const Index n = 9001;
    const moekit::Dataset data = three_regimes(n);
    FitOptions options;
    options.expert = ExpertKind::Gaussian;
    options.gate = GateKind::Constant;
    options.covariance = CovarianceType::Full;
    options.n_experts = 2;
    options.regularization.reg_covar = 0.0;
    options.max_iter = 4;
    options.tol = 0.0;
    moekit::Rng rng(2);
    Model init = moekit::initialize(moekit::make_dataset(data.y), options, rng);
    // Both experts moved (so both keep their share of the mass and both updates are large).
    for (Index k = 0; k < 2; ++k)
        init.experts.coefficients[k].array() += 1e4 * std::sqrt(init.experts.covariances[k].covariance(0, 0));
    const moekit::Dataset gaussian = moekit::make_dataset(data.y);
    const FitResult fused = moekit::fit_em(gaussian, init, options);
    const auto [reference, trace] = separate_pass_em(gaussian, init, options, 4);
    REQUIRE(fused.iterations == 4);
    for (std::size_t t = 0; t < trace.size(); ++t) REQUIRE(fused.trace[t] == Approx(trace[t]).epsilon(1e-12));
    for (std::size_t k = 0; k < 2; ++k) {
        REQUIRE(moekit_test::max_abs_diff(fused.model.experts.coefficients[k], reference.experts.coefficients[k]) <=
                1e-9 * std::max(1.0, reference.experts.coefficients[k].cwiseAbs().maxCoeff()));
        REQUIRE(moekit_test::max_abs_diff(fused.model.experts.covariances[k].covariance,
                                          reference.experts.covariances[k].covariance) <=
                1e-9 * reference.experts.covariances[k].covariance.cwiseAbs().maxCoeff());
    }
}

/// How many times fit_em predicted a stop that did not come, replayed from the trace with
/// fit_em's rule (at iteration t >= 3 a stop is predicted when the last change c shrank from the
/// previous one p and c·(c / p) < tol / 2; the change is |L_t − L_{t−1}| / Σ w).
int wrong_predictions(const FitResult& r, double tol, double total) {
    int wrong = 0;
    for (std::size_t t = 3; t < r.trace.size(); ++t) {
        const double previous = std::abs(r.trace[t - 2] - r.trace[t - 3]) / total;
        const double last = std::abs(r.trace[t - 1] - r.trace[t - 2]) / total;
        const double change = std::abs(r.trace[t] - r.trace[t - 1]) / total;
        const bool predicted = tol > 0.0 && previous > 0.0 && last < previous && last * (last / previous) < 0.5 * tol;
        if (predicted && change >= tol && t < r.trace.size() - 1) ++wrong;
    }
    return wrong;
}

TEST_CASE("the fit's last E-step is a plain one, with the same bits", "[em]") {
    // The iteration that ends a fit (the max_iter-th, or one predicted to converge) runs a plain
    // E-step into the result instead of the pass that gathers the next M-step's statistics; a
    // wrong prediction is followed by that pass. Neither may change a bit: the trace of a
    // shorter fit is a prefix of a longer one's, a converged fit's trace is that of the fit run
    // for the same number of iterations without tol, and the returned responsibilities and
    // log-likelihood are e_step's and log_likelihood's of the returned model. fit() with one
    // start returns its start's responsibilities; with several, each start's last E-step is
    // log_likelihood alone. Wrong predictions must occur both where the loop keeps the
    // responsibilities (softmax, tree gates) and where it does not (constant gate).
    const moekit::Dataset data = three_regimes(9001);
    const double total = data.weights.sum();
    int wrong_kept = 0;
    int wrong_unkept = 0;
    struct Case {
        GateKind gate;
        ExpertKind expert;
        Index K;
    };
    const std::vector<Case> cases = {{GateKind::Constant, ExpertKind::Linear, 3},  {GateKind::Constant, ExpertKind::Gaussian, 3},
                                     {GateKind::Constant, ExpertKind::Linear, 1},  {GateKind::Softmax, ExpertKind::Linear, 3},
                                     {GateKind::Softmax, ExpertKind::Gaussian, 3}, {GateKind::Tree, ExpertKind::Linear, 4},
                                     {GateKind::Tree, ExpertKind::Gaussian, 4}};
    for (const Case& c : cases) {
        INFO("gate " << moekit::to_string(c.gate) << ", expert " << moekit::to_string(c.expert) << ", K = " << c.K);
        FitOptions options;
        options.expert = c.expert;
        options.gate = c.gate;
        if (c.gate == GateKind::Tree) options.tree = {2, 2};
        options.n_experts = c.K;
        options.tol = 0.0;
        moekit::Rng rng(5);
        const Model init = moekit::initialize(data, options, rng);
        options.max_iter = 12;
        const FitResult longer = moekit::fit_em(data, init, options);
        REQUIRE(longer.iterations == 12);
        auto require_consistent = [&](const FitResult& r) {
            REQUIRE(r.trace.size() == static_cast<std::size_t>(r.iterations) + 1);
            for (std::size_t t = 0; t < r.trace.size(); ++t) REQUIRE(r.trace[t] == longer.trace[t]);
            REQUIRE(r.log_likelihood == r.trace.back());
            REQUIRE(r.log_likelihood == moekit::log_likelihood(r.model, data));
            const moekit::Responsibilities e = moekit::e_step(r.model, data);
            REQUIRE((r.responsibilities.log_resp.array() == e.log_resp.array()).all());
            REQUIRE((r.responsibilities.log_norm.array() == e.log_norm.array()).all());
        };
        for (const int max_iter : {0, 1, 2, 5}) {
            options.max_iter = max_iter;
            const FitResult shorter = moekit::fit_em(data, init, options);
            REQUIRE(shorter.iterations == max_iter);
            require_consistent(shorter);
        }
        // Tolerances from 1e-2 to 1e-8: fits that stop at different iterations, some after a
        // predicted stop that did not come (the ratio of successive changes varies here).
        options.max_iter = 12;
        for (int step = 0; step <= 24; ++step) {
            const double tol = std::pow(10.0, -2.0 - 0.25 * step);
            options.tol = tol;
            const FitResult converged = moekit::fit_em(data, init, options);
            INFO("tol " << tol << ": " << converged.iterations << " iterations");
            require_consistent(converged);
            (c.gate == GateKind::Constant ? wrong_unkept : wrong_kept) += wrong_predictions(converged, tol, total);
        }
        // fit(): one start (its responsibilities are returned) and three (each start's last
        // E-step is log_likelihood alone; the best one's responsibilities are computed after).
        options.tol = 1e-6;
        options.seed = 5;
        for (const int restarts : {1, 3}) {
            options.restarts = restarts;
            const FitResult f = moekit::fit(data, options);
            const moekit::Responsibilities e = moekit::e_step(f.model, data);
            REQUIRE((f.responsibilities.log_resp.array() == e.log_resp.array()).all());
            REQUIRE(f.log_likelihood == moekit::log_likelihood(f.model, data));
            REQUIRE(f.log_likelihood == f.trace.back());
        }
    }
    // A constant gate whose EM on these data does not predict wrongly; Old Faithful with three
    // spherical components from this start does (twice over the tolerances below).
    const moekit::Dataset geyser = faithful();
    FitOptions options;
    options.expert = ExpertKind::Gaussian;
    options.gate = GateKind::Constant;
    options.covariance = CovarianceType::Spherical;
    options.n_experts = 3;
    options.max_iter = 200;
    moekit::Rng rng(2);
    const Model init = moekit::initialize(geyser, options, rng);
    for (int step = 0; step <= 24; ++step) {
        options.tol = std::pow(10.0, -2.0 - 0.25 * step);
        const FitResult converged = moekit::fit_em(geyser, init, options);
        options.tol = 0.0;
        options.max_iter = converged.iterations;
        const FitResult fixed = moekit::fit_em(geyser, init, options);
        options.max_iter = 200;
        REQUIRE(converged.trace == fixed.trace);
        require_identical(converged.model, fixed.model);
        REQUIRE((converged.responsibilities.log_resp.array() == fixed.responsibilities.log_resp.array()).all());
        wrong_unkept += wrong_predictions(converged, std::pow(10.0, -2.0 - 0.25 * step), geyser.weights.sum());
    }
    REQUIRE(wrong_kept > 0);
    REQUIRE(wrong_unkept > 0);
}
