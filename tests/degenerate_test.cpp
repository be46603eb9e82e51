// Degenerate data: every fit either completes with a finite log-likelihood, a
// valid model and the interventions it needed recorded, or stops with a clear
// InvalidArgument / NumericalError; a model with NaN or inf is never written.
// Truths: exact invariances of the Gaussian likelihood (duplicating every row
// multiplies the log-likelihood by the number of copies; scaling target j by
// s_j shifts it by −n Σ_j log s_j), closed-form ML estimates written as naive
// loops (OLS by the normal equations, means of constant columns), the published
// faithful optimum (−1130.26396, tests/reference) and the construction of each
// data set (which rows are identical, which inputs are collinear, which gate
// input separates the regimes).

#include "moekit/csv.hpp"
#include "moekit/errors.hpp"
#include "moekit/fit.hpp"
#include "moekit/model_io.hpp"
#include "moekit/rng.hpp"
#include "support/cli_runner.hpp"
#include "support/naive.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <variant>
#include <vector>

using moekit::CovarianceType;
using moekit::Dataset;
using moekit::ExpertKind;
using moekit::FitOptions;
using moekit::FitResult;
using moekit::GateKind;
using moekit::Index;
using moekit::Matrix;
using moekit::Model;
using moekit::Vector;

namespace {

constexpr double faithful_log_likelihood = -1130.26396; // tests/reference/faithful_K2_full.json

Dataset faithful() {
    moekit::CsvSpec spec;
    spec.targets = {"eruptions", "waiting"};
    return moekit::read_csv(std::string(MOEKIT_DATA_DIR) + "/faithful.csv", spec);
}

/// `data` with its targets multiplied column by column by `scale`.
Dataset scaled(Dataset data, const std::vector<double>& scale) {
    for (Index j = 0; j < data.y.cols(); ++j)
        data.y.col(j) *= scale[static_cast<std::size_t>(j)];
    return data;
}

bool has_intervention(const FitResult& result, const std::string& kind) {
    return std::any_of(result.interventions.begin(),
                       result.interventions.end(),
                       [&](const moekit::Intervention& item) { return item.kind == kind; });
}

/// The common promise of every completed fit: finite numbers, a valid model,
/// and a model file that loads back to the same bytes.
void require_sound(const FitResult& result, const Dataset& data) {
    REQUIRE(std::isfinite(result.log_likelihood));
    moekit::validate(result.model, "degenerate_test");
    CHECK(result.log_likelihood ==
          Approx(moekit::log_likelihood(result.model, data)).epsilon(1e-9));
    for (double value : result.trace)
        CHECK(std::isfinite(value));
    const std::string text = moekit::model_to_json(result.model);
    CHECK(text.find("nan") == std::string::npos);
    CHECK(text.find("inf") == std::string::npos);
    const moekit::ModelFile back = moekit::model_from_json(text, "degenerate_test.json");
    CHECK(moekit::model_to_json(back.model) == text);
}

FitOptions gaussian_options(Index k, int restarts = 1) {
    FitOptions options;
    options.n_experts = k;
    options.restarts = restarts;
    options.seed = 11;
    return options;
}

} // namespace

TEST_CASE("degenerate: every row three times gives three times the log-likelihood",
          "[degenerate]") {
    const Dataset once = faithful();
    Dataset thrice = once;
    const Index n = once.n_samples();
    thrice.y.resize(3 * n, 2);
    for (Index c = 0; c < 3; ++c)
        thrice.y.middleRows(c * n, n) = once.y;
    thrice.x.resize(3 * n, 0);
    thrice.z.resize(3 * n, 0);
    thrice.weights = Vector::Ones(3 * n);
    thrice.line_numbers.clear();

    const FitResult result = moekit::fit(thrice, gaussian_options(2, 5));
    require_sound(result, thrice);
    CHECK(result.log_likelihood == Approx(3.0 * faithful_log_likelihood).epsilon(1e-8));
}

TEST_CASE("degenerate: clusters of identical points collapse onto the ridge, "
          "finitely",
          "[degenerate]") {
    // 40 copies of (0, 0), 40 of (5, 5) and 20 scattered points. An expert on a copy gets
    // exactly that point as mean and the ridge reg_covar · s_j² as covariance (the scatter of
    // identical points is 0; s_j² is the variance of target j over all data).
    Matrix y(100, 2);
    moekit::Rng rng(5);
    for (Index i = 0; i < 100; ++i) {
        if (i < 40)
            y.row(i) << 0.0, 0.0;
        else if (i < 80)
            y.row(i) << 5.0, 5.0;
        else
            y.row(i) << 2.5 + 3.0 * moekit::standard_normal(rng),
                2.5 + 3.0 * moekit::standard_normal(rng);
    }
    const Dataset data = moekit::make_dataset(y);
    const FitOptions options = gaussian_options(3, 3);
    // From k-means++ starts EM may or may not find the point masses (it is a local method): the
    // fit must be sound either way.
    require_sound(moekit::fit(data, options), data);

    // Started with experts at the two points (unit covariances), EM collapses them onto the
    // points.
    Model start;
    start.target_names = data.target_names;
    start.gate = moekit::ConstantGate{Vector::Constant(3, 1.0 / 3.0)};
    for (const double centre : {0.0, 5.0, 2.5}) {
        Matrix mean(1, 2);
        mean << centre, centre;
        start.experts.coefficients.push_back(mean);
        start.experts.covariances.push_back(*moekit::try_factor(Matrix::Identity(2, 2)));
    }
    const FitResult result = moekit::fit(data, options, &start);
    require_sound(result, data);

    Vector variance(2);
    for (Index j = 0; j < 2; ++j)
        variance(j) = (y.col(j).array() - y.col(j).mean()).square().sum() / 100.0;
    for (std::size_t k = 0; k < 2; ++k) {
        INFO("expert " << k + 1);
        const double point = k == 0 ? 0.0 : 5.0;
        const Matrix& mean = result.model.experts.coefficients[k];
        CHECK(std::abs(mean(0, 0) - point) <= 1e-9);
        CHECK(std::abs(mean(0, 1) - point) <= 1e-9);
        const Matrix& cov = result.model.experts.covariances[k].covariance;
        for (Index j = 0; j < 2; ++j)
            CHECK(cov(j, j) ==
                  Approx(options.regularization.reg_covar * variance(j)).epsilon(1e-6));
        CHECK(std::abs(cov(0, 1)) <= 1e-12 * std::sqrt(variance(0) * variance(1)));
    }
}

TEST_CASE("degenerate: a constant target column gets its own mean and the "
          "ridge variance",
          "[degenerate]") {
    Dataset data = faithful();
    data.y.col(1).setConstant(7.0);
    FitOptions options = gaussian_options(2, 3);
    const FitResult result = moekit::fit(data, options);
    require_sound(result, data);
    const double ridge =
        options.regularization.reg_covar * 49.0; // scale of a constant column: its square
    for (Index k = 0; k < 2; ++k) {
        const auto u = static_cast<std::size_t>(k);
        CHECK(result.model.experts.coefficients[u](0, 1) == Approx(7.0).epsilon(1e-12));
        CHECK(result.model.experts.covariances[u].covariance(1, 1) == Approx(ridge).epsilon(1e-6));
    }
}

TEST_CASE("degenerate: perfectly collinear inputs give the fit of one of them, "
          "recorded",
          "[degenerate]") {
    moekit::CsvSpec spec;
    spec.targets = {"yn"};
    spec.inputs = {"x"};
    Dataset data = moekit::read_csv(std::string(MOEKIT_DATA_DIR) + "/NPreg.csv", spec);
    const Index n = data.n_samples();
    // x2 = 2·x − 1: the design (1, x, x2) has rank 2.
    Dataset collinear = data;
    collinear.x.resize(n, 2);
    collinear.x.col(0) = data.x.col(0);
    collinear.x.col(1) = 2.0 * data.x.col(0).array() - 1.0;
    collinear.input_names = {"x", "x2"};

    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.n_experts = 1;
    options.regularization.reg_covar = 0.0;
    const FitResult result = moekit::fit(collinear, options);
    require_sound(result, collinear);
    CHECK(has_intervention(result, "rank_deficient"));

    // Truth: OLS of yn on (1, x) by the normal equations; L = −n/2 (log 2πσ̂² +
    // 1), σ̂² = RSS/n.
    Matrix design(n, 2);
    design.col(0).setOnes();
    design.col(1) = data.x.col(0);
    const Matrix beta = moekit_test::naive_weighted_least_squares(design, data.y, Vector::Ones(n));
    const double rss = (data.y - design * beta).squaredNorm();
    const double sigma2 = rss / static_cast<double>(n);
    const double expected =
        -0.5 * static_cast<double>(n) * (std::log(2.0 * std::numbers::pi * sigma2) + 1.0);
    CHECK(result.log_likelihood == Approx(expected).epsilon(1e-10));
    // The same predictions as the one-input fit.
    const Matrix predicted = moekit::predict_mean(result.model, collinear);
    CHECK(moekit_test::max_abs_diff(predicted, design * beta) < 1e-9 * (1.0 + beta.norm()));

    // K = 2 completes as well.
    options.n_experts = 2;
    options.restarts = 3;
    require_sound(moekit::fit(collinear, options), collinear);
}

TEST_CASE("degenerate: a constant input is collinear with the intercept, recorded",
          "[degenerate]") {
    moekit::CsvSpec spec;
    spec.targets = {"yn"};
    spec.inputs = {"x"};
    Dataset data = moekit::read_csv(std::string(MOEKIT_DATA_DIR) + "/NPreg.csv", spec);
    const Vector x = data.x.col(0);
    data.x.resize(data.n_samples(), 2);
    data.x.col(0) = x;
    data.x.col(1).setConstant(3.0);
    data.input_names = {"x", "three"};
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.n_experts = 2;
    options.restarts = 3;
    options.seed = 4;
    const FitResult result = moekit::fit(data, options);
    require_sound(result, data);
    CHECK(has_intervention(result, "rank_deficient"));
}

TEST_CASE("degenerate: an expert on a single point keeps its parameters, recorded",
          "[degenerate]") {
    // Two tight clusters and one far outlier; the warm start puts expert 3 on the
    // outlier. Its size is 1 < the automatic minimum (d + 1 + 1 = 2), so it keeps
    // its parameters.
    Matrix y(41, 2);
    moekit::Rng rng(9);
    for (Index i = 0; i < 40; ++i)
        y.row(i) << moekit::standard_normal(rng) + (i < 20 ? 0.0 : 10.0),
            moekit::standard_normal(rng);
    y.row(40) << 100.0, 100.0;
    const Dataset data = moekit::make_dataset(y);

    Model start;
    start.target_names = data.target_names;
    start.gate = moekit::ConstantGate{Vector::Constant(3, 1.0 / 3.0)};
    start.experts.kind = ExpertKind::Gaussian;
    start.experts.covariance_type = CovarianceType::Full;
    const double centres[3][2] = {{0.0, 0.0}, {10.0, 0.0}, {100.0, 100.0}};
    for (const auto& centre : centres) {
        Matrix mean(1, 2);
        mean << centre[0], centre[1];
        start.experts.coefficients.push_back(mean);
        const auto factor = moekit::try_factor(Matrix::Identity(2, 2));
        REQUIRE(factor.has_value());
        start.experts.covariances.push_back(*factor);
    }
    FitOptions options = gaussian_options(3);
    const FitResult kept = moekit::fit(data, options, &start);
    require_sound(kept, data);
    REQUIRE(has_intervention(kept, "expert_kept"));
    CHECK(kept.model.experts.coefficients[2](0, 0) == 100.0);
    CHECK(kept.model.experts.covariances[2].covariance == Matrix::Identity(2, 2));

    // Allowing experts of size 1: the expert collapses onto the point, held by
    // the ridge.
    options.regularization.min_expert_size = 0.5;
    const FitResult collapsed = moekit::fit(data, options, &start);
    require_sound(collapsed, data);
    CHECK(collapsed.model.experts.coefficients[2](0, 0) == Approx(100.0).epsilon(1e-12));
}

TEST_CASE("degenerate: y exactly linear in x leaves only the ridge as residual "
          "variance",
          "[degenerate]") {
    const Index n = 50;
    Matrix x(n, 1);
    Matrix y(n, 1);
    for (Index i = 0; i < n; ++i) {
        x(i, 0) = static_cast<double>(i) / 7.0 - 3.0;
        y(i, 0) = 1.0 + 2.0 * x(i, 0);
    }
    const Dataset data = moekit::make_dataset(y, x);
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.n_experts = 1;
    const FitResult one = moekit::fit(data, options);
    require_sound(one, data);
    CHECK(one.model.experts.coefficients[0](0, 0) == Approx(1.0).margin(1e-10));
    CHECK(one.model.experts.coefficients[0](1, 0) == Approx(2.0).margin(1e-10));
    // Residual scatter ~1e-30; the covariance is the ridge reg_covar · var(y).
    const double var_y = (y.array() - y.mean()).square().sum() / static_cast<double>(n);
    CHECK(one.model.experts.covariances[0].covariance(0, 0) ==
          Approx(options.regularization.reg_covar * var_y).epsilon(1e-6));

    options.n_experts = 2;
    options.restarts = 3;
    require_sound(moekit::fit(data, options), data);
}

TEST_CASE("degenerate: y exactly linear in x without a ridge completes at "
          "rounding level",
          "[degenerate]") {
    // The residuals are rounding errors (~1e-15): the variance estimate is tiny
    // but positive definite, and the log-likelihood large but finite. y is the
    // line rounded once from long double (1 + 2x with x = i/7), so whatever
    // coefficients the normal equations give, y − x̃W is not exactly 0 in every
    // row (with y = 1.0 + 2.0 * x in double, an exact solve gives exactly 0).
    const Index n = 50;
    Matrix x(n, 1);
    Matrix y(n, 1);
    for (Index i = 0; i < n; ++i) {
        x(i, 0) = static_cast<double>(i) / 7.0;
        y(i, 0) = static_cast<double>(1.0L + 2.0L * static_cast<long double>(x(i, 0)));
    }
    const Dataset data = moekit::make_dataset(y, x);
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.n_experts = 1;
    options.regularization.reg_covar = 0.0;
    const FitResult result = moekit::fit(data, options);
    require_sound(result, data);
    const double var_y = (y.array() - y.mean()).square().sum() / static_cast<double>(n);
    CHECK(result.model.experts.covariances[0].covariance(0, 0) < 1e-20 * var_y);
}

TEST_CASE("degenerate: a constant target without a ridge stops with a clear message",
          "[degenerate]") {
    // The scatter is exactly 0: no covariance can be estimated, and the message
    // says what to do.
    const Dataset data = moekit::make_dataset(Matrix::Constant(50, 1, 2.5));
    FitOptions options;
    options.n_experts = 1;
    options.regularization.reg_covar = 0.0;
    try {
        (void)moekit::fit(data, options);
        FAIL("a zero covariance was accepted");
    } catch (const moekit::NumericalError& e) {
        const std::string message = e.what();
        INFO(message);
        CHECK(message.find('\n') == std::string::npos);
        CHECK(message.find("--reg-covar") != std::string::npos);
    }
}

TEST_CASE("degenerate: a gate input that separates the experts keeps finite "
          "coefficients",
          "[degenerate]") {
    // z < 0: y ~ N(−5, 1); z > 0: y ~ N(5, 1). The regimes are perfectly
    // separable in z, so the unpenalised gate would send its slope to infinity.
    const Index n = 200;
    Matrix y(n, 1);
    Matrix z(n, 1);
    moekit::Rng rng(3);
    for (Index i = 0; i < n; ++i) {
        z(i, 0) = (static_cast<double>(i) + 0.5) / static_cast<double>(n) * 2.0 - 1.0;
        y(i, 0) = (z(i, 0) < 0.0 ? -5.0 : 5.0) + moekit::standard_normal(rng);
    }
    const Dataset data = moekit::make_dataset(y, Matrix(), z);
    for (const double gate_l2 : {1e-8, 0.0}) {
        INFO("gate_l2 = " << gate_l2);
        FitOptions options = gaussian_options(2, 3);
        options.gate = GateKind::Softmax;
        options.gate_options.gate_l2 = gate_l2;
        options.max_iter = 300;
        const FitResult result = moekit::fit(data, options);
        require_sound(result, data);
        const Matrix& v = std::get<moekit::SoftmaxGate>(result.model.gate).coefficients;
        CHECK(v.allFinite());
        // The gate separates the regimes: every sample's most probable expert is
        // the one whose mean has the sign of its z.
        const Eigen::VectorXi expert = moekit::predict_expert(result.model, data);
        for (Index i = 0; i < n; ++i) {
            const double mean =
                result.model.experts.coefficients[static_cast<std::size_t>(expert(i))](0, 0);
            CHECK((mean < 0.0) == (z(i, 0) < 0.0));
        }
    }
}

TEST_CASE("degenerate: magnitudes of 1e±150 give the scaled fit exactly", "[degenerate]") {
    const Dataset data = faithful();
    const Index n = data.n_samples();
    // log L(scaled) = log L − n Σ_j log s_j (the Jacobian of y → s ⊙ y).
    for (const std::vector<double>& scale : {std::vector<double>{1e150, 1e150},
                                             std::vector<double>{1e-150, 1e-150},
                                             std::vector<double>{1e150, 1e-150}}) {
        INFO("scale " << scale[0] << ", " << scale[1]);
        const Dataset big = scaled(data, scale);
        const FitResult result = moekit::fit(big, gaussian_options(2, 5));
        require_sound(result, big);
        const double shift = static_cast<double>(n) * (std::log(scale[0]) + std::log(scale[1]));
        CHECK(result.log_likelihood == Approx(faithful_log_likelihood - shift).margin(1e-4));
        // The means are the faithful means scaled: eruptions ≈ 2.04 and 4.29.
        std::vector<double> means{result.model.experts.coefficients[0](0, 0) / scale[0],
                                  result.model.experts.coefficients[1](0, 0) / scale[0]};
        std::sort(means.begin(), means.end());
        CHECK(means[0] == Approx(2.03639).epsilon(1e-4));
        CHECK(means[1] == Approx(4.28966).epsilon(1e-4));
    }
}

TEST_CASE("degenerate: a million identical rows fit with K = 1 and refuse K = 2", "[degenerate]") {
    const Index n = 1000000;
    const Dataset data = moekit::make_dataset(Matrix::Constant(n, 1, 2.5));
    FitOptions options;
    options.n_experts = 1;
    const FitResult one = moekit::fit(data, options);
    require_sound(one, data);
    CHECK(one.model.experts.coefficients[0](0, 0) == Approx(2.5).epsilon(1e-12));
    // Variance: the ridge on the scale of a constant column (its square).
    CHECK(one.model.experts.covariances[0].covariance(0, 0) ==
          Approx(options.regularization.reg_covar * 6.25).epsilon(1e-6));

    options.n_experts = 2;
    try {
        (void)moekit::fit(data, options);
        FAIL("K = 2 on one distinct row was accepted");
    } catch (const moekit::InvalidArgument& e) {
        const std::string message = e.what();
        CHECK(message.find("distinct rows (1)") != std::string::npos);
    }
}

TEST_CASE("degenerate: a target that is also an input is refused", "[degenerate]") {
    Dataset data = moekit::make_dataset(Matrix::Random(10, 1), Matrix::Random(10, 1));
    data.input_names = data.target_names;
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.n_experts = 1;
    CHECK_THROWS_AS(moekit::fit(data, options), moekit::InvalidArgument);
}

TEST_CASE("degenerate: the model writer refuses NaN and inf", "[degenerate]") {
    const Dataset data = faithful();
    const FitResult result = moekit::fit(data, gaussian_options(2));
    for (const double bad : {std::nan(""), HUGE_VAL, -HUGE_VAL}) {
        INFO("value " << bad);
        Model model = result.model;
        model.experts.coefficients[1](0, 0) = bad;
        CHECK_THROWS_AS(moekit::model_to_json(model), moekit::InvalidArgument);
        moekit::FitRecord record = moekit::make_fit_record(result, gaussian_options(2));
        record.log_likelihood = bad;
        CHECK_THROWS_AS(moekit::model_to_json(result.model, &record), moekit::InvalidArgument);
    }
}

#ifdef MOEKIT_CLI

namespace {

using moekit_test::read_text;
using moekit_test::run_cli;
using moekit_test::TempDir;
using moekit_test::write_text;

/// Every number in a model file is finite (JSON has no NaN or inf, so the
/// writer must have refused them; this checks the file parses and has finite
/// parameters).
void require_finite_model_file(const std::string& path) {
    const auto json = nlohmann::json::parse(read_text(path));
    std::vector<const nlohmann::json*> stack{&json};
    while (!stack.empty()) {
        const nlohmann::json* value = stack.back();
        stack.pop_back();
        if (value->is_number_float()) CHECK(std::isfinite(value->get<double>()));
        if (value->is_structured())
            for (const auto& child : *value)
                stack.push_back(&child);
    }
    moekit::load_model(path); // validates everything
}

} // namespace

TEST_CASE("degenerate cli: a million identical rows: K = 1 fits, K = 2 is "
          "refused at once",
          "[degenerate][cli]") {
    TempDir dir;
    std::string text = "y\n";
    text.reserve(4 * 1000000 + 2);
    for (int i = 0; i < 1000000; ++i)
        text += "2.5\n";
    write_text(dir.file("same.csv"), text);

    const auto one =
        run_cli(dir, {"fit", "same.csv", "-y", "y", "-k", "1", "-q", "-o", "one.json"});
    INFO(one.err);
    REQUIRE(one.exit_code == 0);
    require_finite_model_file(dir.file("one.json"));

    write_text(dir.file("two.json"), "untouched\n");
    const auto two =
        run_cli(dir, {"fit", "same.csv", "-y", "y", "-k", "2", "-q", "-o", "two.json"});
    CHECK(two.exit_code == 1);
    CHECK(two.err == "moekit: error: fit: n_experts (--experts) is 2, but must "
                     "not exceed the number of "
                     "distinct rows (1). Use fewer experts.\n");
    CHECK(read_text(dir.file("two.json")) == "untouched\n");
}

TEST_CASE("degenerate cli: collinear inputs and an exactly linear y: finite "
          "model, recorded",
          "[degenerate][cli]") {
    TempDir dir;
    std::string text = "x,x2,y\n";
    // Integers: the CSV holds the exact values, so x2 = 2x exactly and y is
    // exactly linear.
    for (int i = 0; i < 60; ++i)
        text += std::to_string(i) + "," + std::to_string(2 * i) + "," +
                std::to_string(i < 30 ? 1 + 2 * i : 100 - i) + "\n";
    write_text(dir.file("lines.csv"), text);
    const auto result = run_cli(dir,
                                {"fit",
                                 "lines.csv",
                                 "-y",
                                 "y",
                                 "-x",
                                 "x,x2",
                                 "--expert",
                                 "linear",
                                 "-k",
                                 "2",
                                 "--restarts",
                                 "3",
                                 "--seed",
                                 "1",
                                 "-q",
                                 "-o",
                                 "m.json"});
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    require_finite_model_file(dir.file("m.json"));
    const auto model = nlohmann::json::parse(read_text(dir.file("m.json")));
    bool recorded = false;
    for (const auto& warning : model.at("fit").at("warnings"))
        recorded =
            recorded || warning.get<std::string>().find("rank deficient") != std::string::npos;
    CHECK(recorded);
    CHECK(result.err.find("moekit: warning: ") != std::string::npos);
}

TEST_CASE("degenerate cli: a constant column and a separable gate give finite "
          "model files, no ridge stops",
          "[degenerate][cli]") {
    TempDir dir;
    std::string text = "z,c,y\n";
    moekit::Rng rng(2);
    for (int i = 0; i < 100; ++i) {
        const double z = (i + 0.5) / 50.0 - 1.0;
        text += std::to_string(z) + ",7," +
                std::to_string((z < 0 ? -5.0 : 5.0) + moekit::standard_normal(rng)) + "\n";
    }
    write_text(dir.file("d.csv"), text);
    const auto constant =
        run_cli(dir, {"fit", "d.csv", "-y", "y,c", "-k", "2", "--seed", "1", "-q", "-o", "c.json"});
    INFO(constant.err);
    REQUIRE(constant.exit_code == 0);
    require_finite_model_file(dir.file("c.json"));
    // Without a ridge the constant column's covariance cannot be estimated: exit
    // 2, one line.
    write_text(dir.file("kept.json"), "untouched\n");
    const auto no_ridge = run_cli(
        dir, {"fit", "d.csv", "-y", "c", "-k", "1", "--reg-covar", "0", "-q", "-o", "kept.json"});
    CHECK(no_ridge.exit_code == 2);
    const std::string message =
        "moekit: error: initial_experts: the pooled covariance is not symmetric positive "
        "definite. Increase --reg-covar, reduce the number of experts, or check the data for "
        "constant or collinear columns.";
    CHECK(no_ridge.err == message + "\n");
    // docs/errors.md (degenerate data) shows this very message.
    CHECK(read_text(std::string(MOEKIT_SOURCE_DIR) + "/docs/errors.md").find("`" + message + "`") !=
          std::string::npos);
    CHECK(read_text(dir.file("kept.json")) == "untouched\n");

    const auto separable = run_cli(dir,
                                   {"fit",
                                    "d.csv",
                                    "-y",
                                    "y",
                                    "--gate-inputs",
                                    "z",
                                    "--gate",
                                    "softmax",
                                    "-k",
                                    "2",
                                    "--gate-l2",
                                    "0",
                                    "--seed",
                                    "1",
                                    "-q",
                                    "-o",
                                    "s.json"});
    INFO(separable.err);
    REQUIRE(separable.exit_code == 0);
    require_finite_model_file(dir.file("s.json"));
}

#endif // MOEKIT_CLI
