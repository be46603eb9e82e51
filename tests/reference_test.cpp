// Reference fits on real data (tests/reference/*.json, conventions in its README): moekit must
// reach every peer tool's best log-likelihood (within 1e-6 relative, or higher), count the same
// free parameters, report the same BIC and find the same parameters up to a permutation of the
// experts.
//
// Independent truths used here besides the reference values themselves:
//  - the log-likelihood of the reference parameters and of moekit's fitted parameters is
//    recomputed with a naive long-double evaluator (support/naive_mixture.hpp) that shares no
//    code with moekit, so the reported numbers are checked, not trusted;
//  - BIC is recomputed from its definition −2 log L + p log n.

#include "moekit/csv.hpp"
#include "moekit/fit.hpp"
#include "support/matching.hpp"
#include "support/naive.hpp"
#include "support/naive_mixture.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

using moekit::Index;
using moekit::Matrix;
using moekit::Vector;
using nlohmann::json;

namespace {

/// Starts per case. 10 is plenty where most starts reach the optimum (faithful, iris: 9-10 of
/// 10; CO2data, NPreg: 5-7 of 10 with this seed).
constexpr int reference_restarts = 10;
/// tonedata: only about a quarter of the random-lines starts reach the optimum (docs/model.md
/// measured 50 of 200; 2 of 10 with this seed), so 10 starts would miss it with probability
/// 0.75^10 ≈ 6% for an arbitrary seed; 30 starts make that 0.75^30 ≈ 2·10⁻⁴, so a harmless
/// change in how the starts are drawn does not break the test. The whole file still runs in
/// well under a second in Release.
constexpr int tonedata_restarts = 30;
constexpr std::uint64_t reference_seed = 20240607;

/// Parameter tolerance: |fitted − reference| <= parameter_rel · |reference| + parameter_rel ·
/// (the parameter's natural scale). See docs/testing.md for why 1e-4 is justified.
constexpr double parameter_rel = 1e-4;

json load_case(const std::string& name) {
    const std::string path = std::string(MOEKIT_REFERENCE_DIR) + "/" + name + ".json";
    std::ifstream in(path);
    REQUIRE(in.good());
    return json::parse(in);
}

std::vector<std::string> strings(const json& j) {
    std::vector<std::string> out;
    for (const auto& s : j)
        out.push_back(s.get<std::string>());
    return out;
}

Matrix matrix_of(const json& rows) {
    Matrix m(static_cast<Index>(rows.size()), static_cast<Index>(rows.at(0).size()));
    for (Index r = 0; r < m.rows(); ++r)
        for (Index c = 0; c < m.cols(); ++c)
            m(r, c) =
                rows.at(static_cast<std::size_t>(r)).at(static_cast<std::size_t>(c)).get<double>();
    return m;
}

/// The reference parameters as a NaiveMixture (same layout as moekit's: coefficients
/// (d+1)×q with row 0 the intercept; softmax gate (g+1)×K).
moekit_test::NaiveMixture reference_mixture(const json& c) {
    const json& p = c.at("params");
    const Index K = c.at("n_experts").get<Index>();
    moekit_test::NaiveMixture m;
    if (c.at("gate") == "softmax") {
        m.softmax = true;
        // The file stores one row per expert: (intercept, slopes...), first row all 0.
        m.gate = matrix_of(p.at("gate_coef")).transpose();
    } else {
        for (const auto& w : p.at("weights"))
            m.weights.push_back(w.get<double>());
    }
    if (c.at("expert") == "gaussian") {
        for (Index k = 0; k < K; ++k) {
            const json& mean = p.at("means").at(static_cast<std::size_t>(k));
            Matrix coef(1, static_cast<Index>(mean.size()));
            for (Index j = 0; j < coef.cols(); ++j)
                coef(0, j) = mean.at(static_cast<std::size_t>(j)).get<double>();
            m.coefficients.push_back(coef);
            m.covariances.push_back(matrix_of(p.at("covariances").at(static_cast<std::size_t>(k))));
        }
    } else {
        for (Index k = 0; k < K; ++k) {
            const json& row = p.at("expert_coef").at(static_cast<std::size_t>(k));
            Matrix coef(static_cast<Index>(row.size()), 1);
            for (Index a = 0; a < coef.rows(); ++a)
                coef(a, 0) = row.at(static_cast<std::size_t>(a)).get<double>();
            m.coefficients.push_back(coef);
            const double sigma = p.at("sigma").at(static_cast<std::size_t>(k)).get<double>();
            m.covariances.push_back(Matrix::Constant(1, 1, sigma * sigma));
        }
    }
    return m;
}

/// Unweighted standard deviation of each column (the natural scale of a parameter).
Vector column_sd(const Matrix& a) {
    Vector sd(a.cols());
    for (Index j = 0; j < a.cols(); ++j) {
        const double mean = a.col(j).mean();
        sd(j) = std::sqrt((a.col(j).array() - mean).square().sum() / static_cast<double>(a.rows()));
    }
    return sd;
}

bool within(double fitted, double reference, double scale) {
    return std::fabs(fitted - reference) <= parameter_rel * (std::fabs(reference) + scale);
}

void run_case(const std::string& name,
              int restarts = reference_restarts,
              moekit::FitMethod method = moekit::FitMethod::EM) {
    const json c = load_case(name);
    INFO("reference case " << name);
    REQUIRE(c.at("case").get<std::string>() == name);

    // Data: the CSV named by the case, columns named by the case.
    const std::string file =
        std::filesystem::path(c.at("data").get<std::string>()).filename().string();
    moekit::CsvSpec spec;
    spec.targets = strings(c.at("targets"));
    spec.inputs = strings(c.at("inputs"));
    spec.gate_inputs = strings(c.at("gate_inputs"));
    const moekit::Dataset data = moekit::read_csv(std::string(MOEKIT_DATA_DIR) + "/" + file, spec);
    const Index n = data.n_samples();
    REQUIRE(n == c.at("n_samples").get<Index>());

    const double ref_loglik = c.at("log_likelihood").get<double>();
    const Index ref_p = c.at("n_parameters").get<Index>();
    const double ref_bic = c.at("bic").get<double>();

    // The reference itself, evaluated naively: checks this file's reading of the conventions
    // (sigma is a standard deviation, gate_coef rows are experts) before moekit is involved.
    const moekit_test::NaiveMixture reference = reference_mixture(c);
    const double naive_ref_loglik =
        moekit_test::naive_log_likelihood(reference, data.y, data.x, data.z, data.weights);
    CAPTURE(ref_loglik, naive_ref_loglik);
    REQUIRE(naive_ref_loglik == Approx(ref_loglik).epsilon(1e-9));
    REQUIRE(ref_bic == Approx(-2.0 * ref_loglik +
                              static_cast<double>(ref_p) * std::log(static_cast<double>(n)))
                           .epsilon(1e-12));

    // The fit: default options except the model and the starts.
    moekit::FitOptions options;
    options.expert = moekit::parse_expert_kind(c.at("expert").get<std::string>());
    options.gate = moekit::parse_gate_kind(c.at("gate").get<std::string>());
    // Regression cases have q = 1 and no covariance type; one variance per expert is "full".
    options.covariance = c.at("covariance").is_null()
                             ? moekit::CovarianceType::Full
                             : moekit::parse_covariance_type(c.at("covariance").get<std::string>());
    options.n_experts = c.at("n_experts").get<Index>();
    options.restarts = restarts;
    options.seed = reference_seed;
    options.method = method;
    const moekit::FitResult r = moekit::fit(data, options);
    REQUIRE(r.method == method);

    const double loglik = r.log_likelihood;
    CAPTURE(loglik, loglik - ref_loglik, r.iterations, r.converged, r.best_restart);
    CAPTURE(r.restart_log_likelihoods);
    // 1. The log-likelihood reaches the reference (never loosen this).
    REQUIRE(loglik >= ref_loglik - 1e-6 * std::fabs(ref_loglik));
    // ... and is what the returned model really achieves, by the naive evaluator.
    const moekit_test::NaiveMixture fitted = moekit_test::from_model(r.model);
    REQUIRE(moekit_test::naive_log_likelihood(fitted, data.y, data.x, data.z, data.weights) ==
            Approx(loglik).epsilon(1e-9));
    // 2. Parameter count and BIC.
    REQUIRE(r.n_parameters == ref_p);
    REQUIRE(r.n_samples == Approx(static_cast<double>(n)).epsilon(1e-15));
    CAPTURE(r.bic, ref_bic);
    REQUIRE(std::fabs(r.bic - ref_bic) <= 1e-6 * std::fabs(ref_bic));
    REQUIRE(r.bic ==
            Approx(-2.0 * loglik + static_cast<double>(ref_p) * std::log(static_cast<double>(n)))
                .epsilon(1e-12));

    // 3. Parameters, up to a permutation of the experts.
    const int K = static_cast<int>(options.n_experts);
    const Vector sd_y = column_sd(data.y);
    const Vector sd_x = column_sd(data.x);
    // Natural scale of coefficient row a of target c: sd(y_c) for the intercept and the mean,
    // sd(y_c)/sd(x_a) for a slope.
    const auto coef_scale = [&](Index a, Index col) {
        return a == 0 ? sd_y(col) : sd_y(col) / sd_x(a - 1);
    };
    const auto cost = [&](int j, int k) {
        const Matrix& f = fitted.coefficients[static_cast<std::size_t>(j)];
        const Matrix& g = reference.coefficients[static_cast<std::size_t>(k)];
        double s = 0.0;
        for (Index a = 0; a < f.rows(); ++a)
            for (Index col = 0; col < f.cols(); ++col)
                s += std::fabs(f(a, col) - g(a, col)) / coef_scale(a, col);
        return s;
    };
    const std::vector<int> perm = moekit_test::best_permutation(K, cost);
    REQUIRE(moekit_test::matching_ambiguity(K, cost) < 0.1);

    for (int j = 0; j < K; ++j) {
        const std::size_t js = static_cast<std::size_t>(j);
        const std::size_t ks = static_cast<std::size_t>(perm[js]);
        INFO("fitted expert " << j << " = reference expert " << ks);
        if (!reference.softmax) {
            CAPTURE(fitted.weights[js], reference.weights[ks]);
            // Weights are probabilities: scale 1.
            REQUIRE(within(fitted.weights[js], reference.weights[ks], 1.0));
        }
        const Matrix& fc = fitted.coefficients[js];
        const Matrix& rc = reference.coefficients[ks];
        REQUIRE(fc.rows() == rc.rows());
        REQUIRE(fc.cols() == rc.cols());
        for (Index a = 0; a < fc.rows(); ++a)
            for (Index col = 0; col < fc.cols(); ++col) {
                CAPTURE(a, col, fc(a, col), rc(a, col));
                REQUIRE(within(fc(a, col), rc(a, col), coef_scale(a, col)));
            }
        const Matrix& fs = fitted.covariances[js];
        const Matrix& rs = reference.covariances[ks];
        if (options.expert == moekit::ExpertKind::Linear) {
            // sigma = sqrt of the noise variance, compared as a standard deviation.
            const double f_sigma = std::sqrt(fs(0, 0));
            const double r_sigma = std::sqrt(rs(0, 0));
            CAPTURE(f_sigma, r_sigma);
            REQUIRE(within(f_sigma, r_sigma, 0.0));
        } else {
            for (Index a = 0; a < fs.rows(); ++a)
                for (Index b = 0; b < fs.cols(); ++b) {
                    // Entry scale sqrt(Σ_aa Σ_bb): the off-diagonals are relative to it.
                    CAPTURE(a, b, fs(a, b), rs(a, b));
                    REQUIRE(within(fs(a, b), rs(a, b), std::sqrt(rs(a, a) * rs(b, b))));
                }
        }
    }
    if (reference.softmax) {
        // Both pin a column to 0 but not necessarily the same expert's: compare differences of
        // columns, which do not depend on the choice of reference expert. Scale of row a: 1 for
        // the intercept, 1/sd(z_a) for a slope.
        const Vector sd_z = column_sd(data.z);
        for (int j = 0; j < K; ++j)
            for (int l = j + 1; l < K; ++l)
                for (Index a = 0; a < fitted.gate.rows(); ++a) {
                    const double f = fitted.gate(a, j) - fitted.gate(a, l);
                    const double g = reference.gate(a, perm[static_cast<std::size_t>(j)]) -
                                     reference.gate(a, perm[static_cast<std::size_t>(l)]);
                    CAPTURE(j, l, a, f, g);
                    REQUIRE(within(f, g, a == 0 ? 1.0 : 1.0 / sd_z(a - 1)));
                }
        REQUIRE(fitted.gate.col(0).isZero(0.0));
    }
}

} // namespace

TEST_CASE("the reference directory holds the nine documented cases", "[reference]") {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(MOEKIT_REFERENCE_DIR))
        if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
    std::sort(names.begin(), names.end());
    const std::vector<std::string> expected = {"CO2data_mixreg_K2",
                                               "NPreg_mixreg_K2",
                                               "NPreg_moe_K2",
                                               "faithful_K2_diag",
                                               "faithful_K2_full",
                                               "faithful_K2_spherical",
                                               "faithful_K2_tied",
                                               "iris_K3_full",
                                               "tonedata_mixreg_K2"};
    REQUIRE(names == expected);
}

TEST_CASE("reference: faithful_K2_full", "[reference]") {
    run_case("faithful_K2_full");
}
TEST_CASE("reference: faithful_K2_tied", "[reference]") {
    run_case("faithful_K2_tied");
}
TEST_CASE("reference: faithful_K2_diag", "[reference]") {
    run_case("faithful_K2_diag");
}
TEST_CASE("reference: faithful_K2_spherical", "[reference]") {
    run_case("faithful_K2_spherical");
}
TEST_CASE("reference: iris_K3_full", "[reference]") {
    run_case("iris_K3_full");
}
TEST_CASE("reference: tonedata_mixreg_K2", "[reference]") {
    run_case("tonedata_mixreg_K2", tonedata_restarts);
}
TEST_CASE("reference: CO2data_mixreg_K2", "[reference]") {
    run_case("CO2data_mixreg_K2");
}
TEST_CASE("reference: NPreg_mixreg_K2", "[reference]") {
    run_case("NPreg_mixreg_K2");
}
TEST_CASE("reference: NPreg_moe_K2", "[reference]") {
    run_case("NPreg_moe_K2");
}

// Gradient ascent (L-BFGS on the log-Cholesky parameterisation) reaches the same optima as EM:
// every check above (log-likelihood within 1e-6 relative, parameters within 1e-4) holds.
TEST_CASE("reference by gradient ascent: faithful, all four covariance types", "[reference][gradient]") {
    for (const char* name : {"faithful_K2_full", "faithful_K2_tied", "faithful_K2_diag", "faithful_K2_spherical"}) {
        SECTION(name) { run_case(name, reference_restarts, moekit::FitMethod::Gradient); }
    }
}
TEST_CASE("reference by gradient ascent: iris_K3_full", "[reference][gradient]") {
    run_case("iris_K3_full", reference_restarts, moekit::FitMethod::Gradient);
}
TEST_CASE("reference by gradient ascent: mixtures of regressions", "[reference][gradient]") {
    SECTION("tonedata") { run_case("tonedata_mixreg_K2", tonedata_restarts, moekit::FitMethod::Gradient); }
    SECTION("CO2data") { run_case("CO2data_mixreg_K2", reference_restarts, moekit::FitMethod::Gradient); }
    SECTION("NPreg") { run_case("NPreg_mixreg_K2", reference_restarts, moekit::FitMethod::Gradient); }
}
TEST_CASE("reference by gradient ascent: NPreg_moe_K2", "[reference][gradient]") {
    run_case("NPreg_moe_K2", reference_restarts, moekit::FitMethod::Gradient);
}
