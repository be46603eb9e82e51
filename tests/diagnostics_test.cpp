// Diagnostics of fitted models (include/moekit/diagnostics.hpp), their place in the model file,
// and the CLI outputs that show them (fit's summary and --json, the responsibilities CSV of fit
// and predict, progress lines).
// Truths: responsibilities, entropies and criteria recomputed by hand in long double from the
// textbook formulas (normal densities written out, softmax written out) on tiny data sets;
// exact values of symmetric cases (h = 1/2 gives entropy n log 2); eigenvalues of 2×2 matrices in
// closed form; hand-made traces and restart lists; the peer reference optimum of faithful.

#include "moekit/csv.hpp"
#include "moekit/diagnostics.hpp"
#include "moekit/errors.hpp"
#include "moekit/model_io.hpp"
#include "support/cli_runner.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numbers>
#include <sstream>
#include <string>
#include <vector>

using moekit::Index;
using moekit::Matrix;
using moekit::Vector;

namespace {

const std::string data_dir = MOEKIT_DATA_DIR;

constexpr double faithful_log_likelihood = -1130.26396; // tests/reference/faithful_K2_full.json

moekit::CovarianceFactor factor(const Matrix& s) {
    return moekit::factor_or_throw(s, "diagnostics_test", "covariance");
}

/// Two Gaussian experts on one target: means 0 and 3, variances 1 and 4, weights 0.3 and 0.7.
moekit::Model two_gaussians() {
    moekit::Model model;
    model.gate = moekit::ConstantGate{(Vector(2) << 0.3, 0.7).finished()};
    model.experts.kind = moekit::ExpertKind::Gaussian;
    model.experts.covariance_type = moekit::CovarianceType::Full;
    model.experts.coefficients = {Matrix::Constant(1, 1, 0.0), Matrix::Constant(1, 1, 3.0)};
    model.experts.covariances = {factor(Matrix::Constant(1, 1, 1.0)),
                                 factor(Matrix::Constant(1, 1, 4.0))};
    model.target_names = {"y1"};
    return model;
}

/// Hand computation: joint_ik = π_k N(y_i; μ_k, σ_k²) in long double, straight from the formula.
struct Hand {
    std::vector<std::vector<long double>> h; ///< responsibilities
    long double log_likelihood = 0;
    long double entropy = 0;
    long double map_entropy = 0; ///< −Σ w log max h
};

Hand by_hand(const std::vector<double>& y,
             const std::vector<double>& w,
             const std::vector<double>& pi,
             const std::vector<double>& mu,
             const std::vector<double>& var) {
    Hand out;
    const long double two_pi = 2 * std::numbers::pi_v<long double>;
    for (std::size_t i = 0; i < y.size(); ++i) {
        std::vector<long double> joint;
        long double total = 0;
        for (std::size_t k = 0; k < pi.size(); ++k) {
            const long double r = y[i] - mu[k];
            joint.push_back(pi[k] * std::exp(-r * r / (2 * var[k])) / std::sqrt(two_pi * var[k]));
            total += joint.back();
        }
        out.log_likelihood += w[i] * std::log(total);
        long double largest = 0;
        for (auto& j : joint) {
            j /= total;
            if (j > 0) out.entropy -= w[i] * j * std::log(j);
            largest = std::max(largest, j);
        }
        out.map_entropy -= w[i] * std::log(largest);
        out.h.push_back(joint);
    }
    return out;
}

moekit::Dataset faithful() {
    moekit::CsvSpec spec;
    spec.targets = {"eruptions", "waiting"};
    return moekit::read_csv(data_dir + "/faithful.csv", spec);
}

moekit::FitResult fit_faithful(int restarts = 5) {
    moekit::FitOptions options;
    options.n_experts = 2;
    options.restarts = restarts;
    options.seed = 1;
    return moekit::fit(faithful(), options);
}

} // namespace

TEST_CASE("diagnose: criteria, entropy and expert quantities match a hand computation",
          "[diagnostics]") {
    const std::vector<double> y{-1.0, 0.5, 2.0, 4.0, 7.5};
    const std::vector<double> w{1.0, 2.0, 1.0, 0.5, 1.5};
    moekit::Dataset data = moekit::make_dataset(Eigen::Map<const Vector>(y.data(), 5));
    data.weights = Eigen::Map<const Vector>(w.data(), 5);
    const moekit::Model model = two_gaussians();
    const Hand hand = by_hand(y, w, {0.3, 0.7}, {0.0, 3.0}, {1.0, 4.0});

    const moekit::Diagnostics d = moekit::diagnose(model, data);
    const double n = 6.0;      // Σ w
    const Index p = 1 + 2 + 2; // K − 1 weights, K means, K variances
    const double ll = static_cast<double>(hand.log_likelihood);
    CHECK(d.n_samples == n);
    CHECK(d.n_parameters == p);
    CHECK(d.log_likelihood == Approx(ll).epsilon(1e-13));
    CHECK(d.aic == Approx(-2 * ll + 2 * p).epsilon(1e-13));
    CHECK(d.bic == Approx(-2 * ll + p * std::log(n)).epsilon(1e-13));
    CHECK(d.entropy == Approx(static_cast<double>(hand.entropy)).epsilon(1e-12));
    CHECK(d.icl == Approx(d.bic + 2 * static_cast<double>(hand.entropy)).epsilon(1e-13));
    CHECK(d.icl_map == Approx(d.bic + 2 * static_cast<double>(hand.map_entropy)).epsilon(1e-13));
    CHECK(d.normalized_entropy ==
          Approx(static_cast<double>(hand.entropy) / (n * std::log(2.0))).epsilon(1e-12));
    CHECK(d.icl_map <= d.icl); // −log max_k h <= −Σ_k h log h
    CHECK_FALSE(d.fit_history);
    CHECK_FALSE(d.selection);
    CHECK(d.tree_nodes.empty());

    REQUIRE(d.experts.size() == 2);
    for (std::size_t k = 0; k < 2; ++k) {
        long double size = 0;
        long double hard = 0;
        long double posterior = 0;
        for (std::size_t i = 0; i < y.size(); ++i) {
            size += w[i] * hand.h[i][k];
            const std::size_t map = hand.h[i][0] >= hand.h[i][1] ? 0 : 1;
            if (map == k) {
                hard += w[i];
                posterior += w[i] * hand.h[i][k];
            }
        }
        INFO("expert " << k);
        const auto& e = d.experts[k];
        CHECK(e.effective_size == Approx(static_cast<double>(size)).epsilon(1e-12));
        CHECK(e.gate_mass == Approx(n * (k == 0 ? 0.3 : 0.7)).epsilon(1e-14));
        CHECK(e.hard_size == static_cast<double>(hard));
        CHECK(e.average_posterior == Approx(static_cast<double>(posterior / hard)).epsilon(1e-12));
        CHECK(e.min_eigenvalue == Approx(k == 0 ? 1.0 : 4.0).epsilon(1e-15));
        CHECK(e.condition_number == Approx(1.0).epsilon(1e-15));
    }
}

TEST_CASE("diagnose: equal experts give h = 1/2, entropy n log 2 and an empty hard class",
          "[diagnostics]") {
    moekit::Model model = two_gaussians();
    model.gate = moekit::ConstantGate{(Vector(2) << 0.5, 0.5).finished()};
    model.experts.coefficients[1] = model.experts.coefficients[0];
    model.experts.covariances[1] = model.experts.covariances[0];
    const moekit::Dataset data = moekit::make_dataset((Matrix(4, 1) << -2, 0, 1, 3).finished());

    const moekit::Diagnostics d = moekit::diagnose(model, data);
    CHECK(d.entropy == Approx(4 * std::log(2.0)).epsilon(1e-14));
    CHECK(d.normalized_entropy == Approx(1.0).epsilon(1e-14));
    CHECK(d.icl == Approx(d.bic + 8 * std::log(2.0)).epsilon(1e-14));
    CHECK(d.icl_map == Approx(d.icl).epsilon(1e-14));
    // Ties go to the first expert: expert 2 has no hard members and no AvePP.
    CHECK(d.experts[0].hard_size == 4.0);
    CHECK(d.experts[0].average_posterior == Approx(0.5).epsilon(1e-14));
    CHECK(d.experts[1].hard_size == 0.0);
    CHECK(std::isnan(d.experts[1].average_posterior));
    CHECK(d.experts[1].effective_size == Approx(2.0).epsilon(1e-14));
}

TEST_CASE("diagnose: one expert has zero entropy and ICL equal to BIC", "[diagnostics]") {
    moekit::Model model = two_gaussians();
    model.gate = moekit::ConstantGate{Vector::Ones(1)};
    model.experts.coefficients.resize(1);
    model.experts.covariances.resize(1);
    const moekit::Dataset data = moekit::make_dataset((Matrix(3, 1) << -1, 0, 2).finished());
    const moekit::Diagnostics d = moekit::diagnose(model, data);
    CHECK(d.entropy == 0.0);
    CHECK(d.normalized_entropy == 0.0);
    CHECK(d.icl == d.bic);
    CHECK(d.experts[0].average_posterior == 1.0);
}

TEST_CASE("diagnose: covariance spectrum in closed form (2x2)", "[diagnostics]") {
    // [[a, b], [b, c]] has eigenvalues (a + c)/2 ± sqrt(((a − c)/2)² + b²).
    moekit::Model model;
    model.gate = moekit::ConstantGate{(Vector(2) << 0.5, 0.5).finished()};
    model.experts.kind = moekit::ExpertKind::Gaussian;
    model.experts.covariance_type = moekit::CovarianceType::Full;
    model.experts.coefficients = {Matrix::Zero(1, 2), Matrix::Constant(1, 2, 5.0)};
    const Matrix s1 = (Matrix(2, 2) << 2, 1, 1, 2).finished();
    const Matrix s2 = (Matrix(2, 2) << 10, 3, 3, 0.95).finished();
    model.experts.covariances = {factor(s1), factor(s2)};
    model.target_names = {"y1", "y2"};
    const moekit::Dataset data =
        moekit::make_dataset((Matrix(3, 2) << 0, 0, 1, 2, 5, 4).finished());
    const moekit::Diagnostics d = moekit::diagnose(model, data);
    CHECK(d.experts[0].min_eigenvalue == Approx(1.0).epsilon(1e-14));
    CHECK(d.experts[0].max_eigenvalue == Approx(3.0).epsilon(1e-14));
    CHECK(d.experts[0].condition_number == Approx(3.0).epsilon(1e-14));
    const double mid = (10 + 0.95) / 2;
    const double radius = std::sqrt(std::pow((10 - 0.95) / 2, 2) + 9);
    CHECK(d.experts[1].min_eigenvalue == Approx(mid - radius).epsilon(1e-12));
    CHECK(d.experts[1].condition_number == Approx((mid + radius) / (mid - radius)).epsilon(1e-12));
}

TEST_CASE("diagnose: the gate mass of a softmax gate is the sum of the written-out softmax",
          "[diagnostics]") {
    moekit::Model model = two_gaussians();
    model.gate = moekit::SoftmaxGate{(Matrix(2, 2) << 0, 0.4, 0, -1.3).finished()};
    model.gate_input_names = {"z1"};
    const Matrix z = (Matrix(4, 1) << -1, 0, 0.5, 2).finished();
    moekit::Dataset data =
        moekit::make_dataset((Matrix(4, 1) << 0, 1, 2, 3).finished(), Matrix(), z);
    data.weights << 1, 3, 0.5, 2;
    double mass = 0;
    for (Index i = 0; i < 4; ++i) {
        const double e = std::exp(0.4 - 1.3 * z(i, 0));
        mass += data.weights(i) * e / (1 + e);
    }
    const moekit::Diagnostics d = moekit::diagnose(model, data);
    CHECK(d.experts[1].gate_mass == Approx(mass).epsilon(1e-14));
    CHECK(d.experts[0].gate_mass + d.experts[1].gate_mass == Approx(6.5).epsilon(1e-14));
    CHECK(d.n_parameters == 2 + 2 + 2);
}

TEST_CASE("diagnose: a model and data that do not match are rejected", "[diagnostics]") {
    const moekit::Dataset two_targets = moekit::make_dataset(Matrix::Ones(3, 2));
    CHECK_THROWS_AS(moekit::diagnose(two_gaussians(), two_targets), moekit::InvalidArgument);
    const moekit::Dataset no_targets = moekit::make_dataset(Matrix(), Matrix::Ones(3, 1));
    CHECK_THROWS_AS(moekit::diagnose(two_gaussians(), no_targets), moekit::InvalidArgument);
}

TEST_CASE("fit history: monotone within 1e-9 relative, largest decrease", "[diagnostics]") {
    const std::vector<double> finals{-100.0};
    auto history = [&](const std::vector<double>& trace) {
        return moekit::fit_history_diagnostics(trace, finals, 0, true, false, 3, {});
    };
    const auto rising = history({-120.0, -101.0, -100.0, -100.0});
    CHECK(rising.monotone);
    CHECK(rising.largest_decrease == 0.0);
    // 5e-8 below −99 is within 1e-9 × 99 = 9.9e-8: round-off, still monotone.
    const auto tiny = history({-100.0, -99.0, -99.0 - 5e-8});
    CHECK(tiny.monotone);
    CHECK(tiny.largest_decrease == Approx(5e-8).epsilon(1e-6));
    const auto falls = history({-100.0, -99.0, -99.0 - 2e-7, -98.0});
    CHECK_FALSE(falls.monotone);
    CHECK(falls.largest_decrease == Approx(2e-7).epsilon(1e-6));
    // Near zero the tolerance has a floor of 1e-9 (absolute).
    CHECK(history({-1e-3, -1e-3 - 5e-10}).monotone);
    CHECK_FALSE(history({-1e-3, -1e-3 - 5e-9}).monotone);
    CHECK(history({}).monotone);
    CHECK(rising.converged);
    CHECK(rising.iterations == 3);
}

TEST_CASE("fit history: restarts best, spread, reached and failed", "[diagnostics]") {
    const double inf = std::numeric_limits<double>::infinity();
    const std::vector<double> finals{-10.0, -5.0, -5.000001, -inf, -7.0, -5.1};
    const auto h = moekit::fit_history_diagnostics({-6.0, -5.0}, finals, 1, false, false, 1, {});
    CHECK(h.restarts.count == 6);
    CHECK(h.restarts.best == 1);
    CHECK(h.restarts.best_log_likelihood == -5.0);
    CHECK(h.restarts.failed == 1);
    CHECK(h.restarts.spread == 5.0);
    // |−5.000001 + 5| = 1e-6 <= 1e-6 × max(1, 5): reached; −5.1 is not.
    CHECK(h.restarts.reached_best == 2);
    CHECK_FALSE(h.converged);

    const auto one = moekit::fit_history_diagnostics({}, {-3.0}, 0, true, false, 0, {});
    CHECK(one.restarts.spread == 0.0);
    CHECK(one.restarts.reached_best == 1);
}

TEST_CASE("diagnose with a fit result: criteria agree with the fit, sizes add up",
          "[diagnostics]") {
    const moekit::FitResult result = fit_faithful();
    const moekit::Dataset data = faithful();
    const moekit::Diagnostics d = moekit::diagnose(result.model, data, &result);
    CHECK(d.log_likelihood == Approx(faithful_log_likelihood).margin(1e-5));
    CHECK(d.log_likelihood == Approx(result.log_likelihood).epsilon(1e-12));
    CHECK(d.bic == Approx(result.bic).epsilon(1e-12));
    CHECK(d.aic == Approx(result.aic).epsilon(1e-12));
    CHECK(d.n_parameters == result.n_parameters);
    double size = 0, mass = 0, hard = 0;
    for (const auto& e : d.experts) {
        size += e.effective_size;
        mass += e.gate_mass;
        hard += e.hard_size;
        CHECK(e.average_posterior >= 0.5);
        CHECK(e.average_posterior <= 1.0);
        CHECK(e.condition_number >= 1.0);
        CHECK(e.min_eigenvalue > 0.0);
    }
    CHECK(size == Approx(272).epsilon(1e-12));
    CHECK(mass == Approx(272).epsilon(1e-12));
    CHECK(hard == 272);
    REQUIRE(d.fit_history);
    CHECK(d.fit_history->converged == result.converged);
    CHECK(d.fit_history->iterations == result.iterations);
    CHECK(d.fit_history->monotone);
    CHECK(d.fit_history->restarts.count == 5);
    CHECK(d.fit_history->restarts.best == result.best_restart);
    CHECK(d.fit_history->restarts.reached_best >= 1);
    CHECK(d.fit_history->interventions.size() == result.interventions.size());
}

TEST_CASE("diagnose: tree gates report their nodes", "[diagnostics][tree]") {
    moekit::CsvSpec spec;
    spec.targets = {"yn"};
    spec.inputs = {"x"};
    spec.gate_inputs = {"x"};
    const moekit::Dataset data = moekit::read_csv(data_dir + "/NPreg.csv", spec);
    moekit::FitOptions options;
    options.expert = moekit::ExpertKind::Linear;
    options.gate = moekit::GateKind::Tree;
    options.tree = {2, 2};
    options.n_experts = 4;
    options.seed = 3;
    const moekit::FitResult result = moekit::fit(data, options);
    const moekit::Diagnostics d = moekit::diagnose(result.model, data, &result);
    const auto expected =
        moekit::tree_diagnostics(std::get<moekit::TreeGate>(result.model.gate),
                                 data,
                                 moekit::responsibility_matrix(moekit::e_step(result.model, data)));
    REQUIRE(d.tree_nodes.size() == 3);
    for (std::size_t j = 0; j < 3; ++j) {
        CHECK(d.tree_nodes[j].node == expected[j].node);
        CHECK(d.tree_nodes[j].responsibility_mass ==
              Approx(expected[j].responsibility_mass).epsilon(1e-12));
        CHECK(d.tree_nodes[j].gate_entropy == Approx(expected[j].gate_entropy).epsilon(1e-12));
    }
    CHECK(d.tree_nodes[0].responsibility_mass == Approx(200).epsilon(1e-12));
}

TEST_CASE("hard assignments and classification uncertainty", "[diagnostics]") {
    moekit::Responsibilities r;
    r.log_resp = (Matrix(3, 3) << 0.2, 0.5, 0.3, 0.9, 0.05, 0.05, 0.25, 0.25, 0.5)
                     .finished()
                     .array()
                     .log()
                     .matrix();
    r.log_norm = Vector::Zero(3);
    const Eigen::VectorXi hard = moekit::hard_assignments(r);
    CHECK(hard(0) == 1);
    CHECK(hard(1) == 0);
    CHECK(hard(2) == 2);
    const Vector u = moekit::classification_uncertainty(r);
    CHECK(u(0) == Approx(0.5).epsilon(1e-14));
    CHECK(u(1) == Approx(0.1).epsilon(1e-13));
    CHECK(u(2) == Approx(0.5).epsilon(1e-14));
}

TEST_CASE("criterion names and expert ranges parse", "[diagnostics][select]") {
    for (auto c : {moekit::Criterion::Bic, moekit::Criterion::Icl, moekit::Criterion::Aic})
        CHECK(moekit::parse_criterion(moekit::to_string(c)) == c);
    CHECK(moekit::parse_criterion("ICL") == moekit::Criterion::Icl);
    CHECK_THROWS_AS(moekit::parse_criterion("dic"), moekit::InvalidArgument);

    CHECK(moekit::parse_expert_range("1:6") == std::vector<Index>{1, 2, 3, 4, 5, 6});
    CHECK(moekit::parse_expert_range("3") == std::vector<Index>{3});
    CHECK(moekit::parse_expert_range("1,2,4") == std::vector<Index>{1, 2, 4});
    CHECK(moekit::parse_expert_range("2:2") == std::vector<Index>{2});
    for (const char* bad :
         {"", "0:3", "5:2", "a", "1:", ":3", "1,,2", "1.5", "-1", "1:5000", "2x2"}) {
        INFO(bad);
        CHECK_THROWS_AS(moekit::parse_expert_range(bad), moekit::InvalidArgument);
    }
}

TEST_CASE("model files carry diagnostics: bit-exact round trip, null for a missing AvePP",
          "[diagnostics][model_io]") {
    const moekit::FitResult result = fit_faithful(3);
    moekit::FitOptions options;
    options.n_experts = 2;
    options.restarts = 3;
    options.seed = 1;
    const moekit::FitRecord record = moekit::make_fit_record(result, options);
    moekit::Diagnostics d = moekit::diagnose(result.model, faithful(), &result);
    d.experts[1].average_posterior = std::numeric_limits<double>::quiet_NaN();
    d.fit_history->interventions.push_back({0, 4, "expert_kept", 1, "a \"quoted\" message"});
    moekit::SelectionTable table;
    table.criterion = moekit::Criterion::Icl;
    moekit::SelectionCandidate ok;
    ok.n_experts = 2;
    ok.ok = true;
    ok.log_likelihood = -1130.25;
    ok.n_parameters = 11;
    ok.bic = 2322.1;
    ok.icl = 2323.5;
    ok.aic = 2282.5;
    ok.min_share = 0.35;
    ok.restarts = 3;
    ok.reached_best = 3;
    moekit::SelectionCandidate failed;
    failed.n_experts = 400;
    failed.covariance = moekit::CovarianceType::Diag;
    failed.gate = moekit::GateKind::Softmax;
    failed.error = "fit: too many experts";
    table.candidates = {ok, failed};
    d.selection = table;

    const std::string text = moekit::model_to_json(result.model, &record, &d);
    const auto json = nlohmann::json::parse(text);
    CHECK(json.at("diagnostics").at("experts").at(1).at("average_posterior").is_null());
    CHECK(json.at("diagnostics").at("selection").at("candidates").at(1).at("bic").is_null());
    const moekit::ModelFile back = moekit::model_from_json(text, "round_trip.json");
    REQUIRE(back.diagnostics);
    CHECK(moekit::model_to_json(back.model, &*back.fit, &*back.diagnostics) == text);
    const moekit::Diagnostics& b = *back.diagnostics;
    CHECK(b.icl == d.icl);
    CHECK(b.icl_map == d.icl_map);
    CHECK(b.experts[0].condition_number == d.experts[0].condition_number);
    CHECK(std::isnan(b.experts[1].average_posterior));
    REQUIRE(b.fit_history);
    CHECK(b.fit_history->restarts.reached_best == d.fit_history->restarts.reached_best);
    CHECK(b.fit_history->interventions.back().message == "a \"quoted\" message");
    CHECK(b.fit_history->interventions.back().expert == 1);
    REQUIRE(b.selection);
    CHECK(b.selection->criterion == moekit::Criterion::Icl);
    CHECK(b.selection->candidates[1].error == "fit: too many experts");
    CHECK_FALSE(b.selection->candidates[1].ok);
    CHECK(b.selection->candidates[1].gate == moekit::GateKind::Softmax);

    // A file without the object (as written before it existed) still loads.
    const moekit::ModelFile plain =
        moekit::model_from_json(moekit::model_to_json(result.model, &record), "plain.json");
    CHECK_FALSE(plain.diagnostics);
}

TEST_CASE("model files: a malformed diagnostics object is rejected with its key path",
          "[diagnostics][model_io]") {
    const moekit::FitResult result = fit_faithful(1);
    const moekit::Diagnostics d = moekit::diagnose(result.model, faithful(), &result);
    const auto good =
        nlohmann::ordered_json::parse(moekit::model_to_json(result.model, nullptr, &d));
    auto rejected = [&](const std::function<void(nlohmann::ordered_json&)>& edit,
                        const std::string& fragment) {
        nlohmann::ordered_json bad = good;
        edit(bad);
        INFO(fragment);
        try {
            moekit::model_from_json(bad.dump(), "bad.json");
            FAIL("accepted");
        } catch (const moekit::DataError& e) {
            CHECK(std::string(e.what()).find(fragment) != std::string::npos);
        }
    };
    rejected([](auto& j) { j["diagnostics"]["surprise"] = 1; },
             "unknown key 'diagnostics.surprise'");
    rejected([](auto& j) { j["diagnostics"]["experts"].erase(1); }, "diagnostics.experts");
    rejected([](auto& j) { j["diagnostics"]["bic"] = "low"; }, "diagnostics.bic");
    rejected([](auto& j) { j["diagnostics"]["fit_history"]["monotone"] = 1; },
             "diagnostics.fit_history.monotone");
    rejected(
        [](auto& j) { j["diagnostics"]["tree_nodes"].push_back(nlohmann::ordered_json::object()); },
        "diagnostics.tree_nodes");
    rejected([](auto& j) { j["diagnostics"].erase("entropy"); },
             "missing key 'diagnostics.entropy'");
}

#ifdef MOEKIT_CLI

TEST_CASE("cli: fit prints the diagnostics and saves them in the model file",
          "[diagnostics][cli]") {
    moekit_test::TempDir dir;
    const auto result = moekit_test::run_cli(dir,
                                             {"fit",
                                              data_dir + "/faithful.csv",
                                              "-y",
                                              "eruptions,waiting",
                                              "-k",
                                              "2",
                                              "--restarts",
                                              "5",
                                              "--seed",
                                              "1",
                                              "-o",
                                              "model.json"});
    REQUIRE(result.exit_code == 0);
    for (const char* line : {"diagnostics:",
                             "  ICL: ",
                             "  entropy: ",
                             "  log-likelihood trace monotone: yes",
                             "  restarts reaching the best log-likelihood: ",
                             "AvePP",
                             "min eigenvalue"})
        CHECK(result.out.find(line) != std::string::npos);
    const auto model = nlohmann::json::parse(moekit_test::read_text(dir.file("model.json")));
    const auto& d = model.at("diagnostics");
    CHECK(d.at("log_likelihood").get<double>() == Approx(faithful_log_likelihood).margin(1e-5));
    CHECK(d.at("bic").get<double>() == model.at("fit").at("bic").get<double>());
    CHECK(d.at("fit_history").at("restarts").at("count").get<int>() == 5);
    CHECK(d.at("experts").size() == 2);
}

TEST_CASE("cli: fit --json prints the model file with fit and diagnostics, and nothing else",
          "[diagnostics][cli]") {
    moekit_test::TempDir dir;
    const std::vector<std::string> args{"fit",
                                        data_dir + "/faithful.csv",
                                        "-y",
                                        "eruptions,waiting",
                                        "-k",
                                        "2",
                                        "--restarts",
                                        "5",
                                        "--seed",
                                        "1"};
    std::vector<std::string> with_json = args;
    with_json.push_back("--json");
    with_json.push_back("-o");
    with_json.push_back("model.json");
    const auto result = moekit_test::run_cli(dir, with_json);
    REQUIRE(result.exit_code == 0);
    const auto json = nlohmann::json::parse(result.out); // throws unless stdout is pure JSON
    CHECK(json.at("format") == "moekit-model");
    CHECK(json.at("diagnostics").at("icl").get<double>() >
          json.at("diagnostics").at("bic").get<double>());
    CHECK(json.at("fit").at("log_likelihood").get<double>() ==
          Approx(faithful_log_likelihood).margin(1e-5));
    // The same bytes as the saved model file.
    CHECK(result.out == moekit_test::read_text(dir.file("model.json")));
}

TEST_CASE("cli: predict --responsibilities writes exactly what fit --responsibilities wrote",
          "[diagnostics][cli]") {
    moekit_test::TempDir dir;
    const std::string npreg = data_dir + "/NPreg.csv";
    const auto fit = moekit_test::run_cli(dir,
                                          {"fit",
                                           npreg,
                                           "-y",
                                           "yn",
                                           "-x",
                                           "x,x2",
                                           "--gate-inputs",
                                           "x",
                                           "--expert",
                                           "linear",
                                           "--gate",
                                           "softmax",
                                           "-k",
                                           "2",
                                           "--restarts",
                                           "3",
                                           "--seed",
                                           "3",
                                           "-q",
                                           "-o",
                                           "moe.json",
                                           "--responsibilities",
                                           "fit_resp.csv"});
    REQUIRE(fit.exit_code == 0);
    const auto predict = moekit_test::run_cli(
        dir,
        {"predict", "moe.json", npreg, "-o", "pred.csv", "--responsibilities", "predict_resp.csv"});
    REQUIRE(predict.exit_code == 0);
    const std::string written = moekit_test::read_text(dir.file("fit_resp.csv"));
    CHECK(written.rfind("row,resp_1,resp_2,gate_1,gate_2,expert,log_lik\n", 0) == 0);
    CHECK(written == moekit_test::read_text(dir.file("predict_resp.csv")));

    // Without the targets there are no responsibilities to write.
    moekit_test::write_text(dir.file("x.csv"), "x,x2\n1,1\n2,4\n");
    const auto no_targets =
        moekit_test::run_cli(dir, {"predict", "moe.json", "x.csv", "--responsibilities", "r.csv"});
    CHECK(no_targets.exit_code == 1);
    CHECK(no_targets.err.find("--responsibilities") != std::string::npos);
}

TEST_CASE("cli: progress lines with --verbose, none when stderr is not a terminal",
          "[diagnostics][cli][progress]") {
    moekit_test::TempDir dir;
    const std::vector<std::string> args{"fit",
                                        data_dir + "/faithful.csv",
                                        "-y",
                                        "eruptions,waiting",
                                        "-k",
                                        "2",
                                        "--restarts",
                                        "2",
                                        "--seed",
                                        "1",
                                        "-o",
                                        "model.json"};
    const auto plain = moekit_test::run_cli(dir, args);
    REQUIRE(plain.exit_code == 0);
    CHECK(plain.err.empty());

    std::vector<std::string> verbose = args;
    verbose.push_back("--verbose");
    const auto loud = moekit_test::run_cli(dir, verbose);
    REQUIRE(loud.exit_code == 0);
    const auto model = nlohmann::json::parse(moekit_test::read_text(dir.file("model.json")));
    const int iterations = model.at("fit").at("iterations").get<int>();
    const int best = model.at("fit").at("best_restart").get<int>();
    // One line per EM iteration of every start (the hook runs after each iteration that does not
    // end the start), in the documented format, and no terminal control characters.
    std::istringstream lines(loud.err);
    std::string line;
    int winner_lines = 0;
    int total_lines = 0;
    const std::string winner = "moekit: restart " + std::to_string(best + 1) + "/2, iteration ";
    while (std::getline(lines, line)) {
        ++total_lines;
        CHECK(line.rfind("moekit: restart ", 0) == 0);
        CHECK(line.find(", log-likelihood -") != std::string::npos);
        if (line.rfind(winner, 0) == 0) ++winner_lines;
    }
    CHECK(winner_lines >= iterations - 1);
    CHECK(total_lines > winner_lines);
    CHECK(loud.err.find("moekit: restart 1/2, iteration 1, log-likelihood ") != std::string::npos);
    CHECK(loud.err.find("moekit: restart 2/2, iteration 1, log-likelihood ") != std::string::npos);
    CHECK(loud.err.find("\r") == std::string::npos);
    CHECK(loud.out == plain.out);

    std::vector<std::string> quiet = verbose;
    quiet.push_back("--quiet");
    const auto silent = moekit_test::run_cli(dir, quiet);
    REQUIRE(silent.exit_code == 0);
    CHECK(silent.out.empty());
    CHECK(silent.err.empty());
}

#endif
