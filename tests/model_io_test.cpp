// Tests of the model file (include/moekit/model_io.hpp, docs/file_formats.md).
// Truths: bit patterns of hand-chosen doubles (compared with std::bit_cast, so -0.0 and 0.0
// differ), a hand-written file in the documented layout, and the exact rejection messages the
// format promises for hand-edited files.

#include "moekit/csv.hpp"
#include "moekit/errors.hpp"
#include "moekit/model_io.hpp"

#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using Catch::Matchers::StartsWith;
using moekit::CovarianceFactor;
using moekit::CovarianceType;
using moekit::ExpertKind;
using moekit::Index;
using moekit::Matrix;
using moekit::Model;
using moekit::Vector;

constexpr double denorm_min = std::numeric_limits<double>::denorm_min();

std::uint64_t bits(double x) {
    return std::bit_cast<std::uint64_t>(x);
}

/// Same shape and identical bit patterns in every entry.
bool same_bits(const Matrix& a, const Matrix& b) {
    if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < a.cols(); ++j)
            if (bits(a(i, j)) != bits(b(i, j))) return false;
    return true;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (bits(a[i]) != bits(b[i])) return false;
    return true;
}

CovarianceFactor factor(const Matrix& s) {
    auto f = moekit::try_factor(s);
    REQUIRE(f.has_value());
    return *f;
}

Matrix mat2(double a, double b, double c, double d) {
    Matrix m(2, 2);
    m << a, b, c, d;
    return m;
}

Matrix row(std::initializer_list<double> values) {
    Matrix m(1, static_cast<Index>(values.size()));
    Index j = 0;
    for (double v : values)
        m(0, j++) = v;
    return m;
}

/// Gaussian experts (K = 3, q = 2) with a constant gate and covariances of `type`.
Model gaussian_model(CovarianceType type) {
    Model m;
    Vector w(3);
    w << 1.0 / 3.0, 1.0 / 6.0, 0.5;
    m.gate = moekit::ConstantGate{w};
    m.experts.kind = ExpertKind::Gaussian;
    m.experts.covariance_type = type;
    m.experts.coefficients = {row({0.1, -0.0}),
                              row({1e-300, denorm_min}),
                              row({0.12345678901234568, -123456789.12345679})};
    switch (type) {
    case CovarianceType::Full:
        m.experts.covariances = {factor(mat2(1.0 / 3.0, 0.1, 0.1, 2.0000000000000004)),
                                 factor(mat2(1.0, denorm_min, denorm_min, 1.0)),
                                 factor(mat2(7e-5, -3e-6, -3e-6, 1e22))};
        break;
    case CovarianceType::Tied: {
        const CovarianceFactor f = factor(mat2(1.0 / 3.0, -0.1, -0.1, 0.7000000000000001));
        m.experts.covariances = {f, f, f};
        break;
    }
    case CovarianceType::Diag:
        m.experts.covariances = {factor(mat2(1.0 / 3.0, 0.0, 0.0, 1e-300)),
                                 factor(mat2(0.1, 0.0, 0.0, 2.0)),
                                 factor(mat2(1e22, 0.0, 0.0, 5.551115123125783e-17))};
        break;
    case CovarianceType::Spherical:
        m.experts.covariances = {factor(mat2(1.0 / 3.0, 0.0, 0.0, 1.0 / 3.0)),
                                 factor(mat2(0.1, 0.0, 0.0, 0.1)),
                                 factor(mat2(1e-300, 0.0, 0.0, 1e-300))};
        break;
    }
    m.target_names = {"eruptions", "waiting"};
    return m;
}

/// Linear experts (K = 2, q = 2, d = 2) with a constant gate.
Model linear_model() {
    Model m;
    Vector w(2);
    w << 0.1, 0.9;
    m.gate = moekit::ConstantGate{w};
    m.experts.kind = ExpertKind::Linear;
    m.experts.covariance_type = CovarianceType::Full;
    Matrix w0(3, 2);
    w0 << 0.1, 1.0 / 3.0, -0.0, 1e-300, denorm_min, 1.7976931348623157e308;
    Matrix w1(3, 2);
    w1 << -2.2250738585072014e-308, 3.0 * denorm_min, 0.30000000000000004, 1e22, -1e-7, 42.0;
    m.experts.coefficients = {w0, w1};
    m.experts.covariances = {factor(mat2(0.25, 0.125, 0.125, 4.0)),
                             factor(mat2(1.0 / 7.0, 0.0, 0.0, 1.0 / 9.0))};
    m.target_names = {"y1", "y2"};
    m.input_names = {"x1", "x2"};
    return m;
}

/// Linear experts (K = 3, q = 1, d = 1) with a softmax gate on g = 2 inputs.
Model softmax_model() {
    Model m;
    Matrix v(3, 3);
    v << 0.0, 0.1, -1.0 / 3.0,            //
        -0.0, 12.345678901234567, 1e-300, //
        0.0, -denorm_min, 0.5;
    m.gate = moekit::SoftmaxGate{v};
    m.experts.kind = ExpertKind::Linear;
    m.experts.covariance_type = CovarianceType::Spherical;
    Matrix w(2, 1);
    w << 0.1, -0.0;
    Matrix w2(2, 1);
    w2 << 1.0 / 3.0, 2.5;
    Matrix w3(2, 1);
    w3 << 1e-300, denorm_min;
    m.experts.coefficients = {w, w2, w3};
    Matrix s1(1, 1), s2(1, 1), s3(1, 1);
    s1 << 0.1;
    s2 << 1.0 / 3.0;
    s3 << 2.0000000000000004;
    m.experts.covariances = {factor(s1), factor(s2), factor(s3)};
    m.target_names = {"tuned"};
    m.input_names = {"stretch ratio"};
    m.gate_input_names = {"z \"quoted\"", "caf\xc3\xa9"};
    return m;
}

/// Gaussian experts (K = 2, q = 2) with a softmax gate on g = 1 input.
Model gaussian_softmax_model() {
    Model m = gaussian_model(CovarianceType::Full);
    m.experts.coefficients.pop_back();
    m.experts.covariances.pop_back();
    Matrix v(2, 2);
    v << 0.0, 0.7, 0.0, -1e-3;
    m.gate = moekit::SoftmaxGate{v};
    m.gate_input_names = {"x"};
    return m;
}

void require_same_model(const Model& a, const Model& b) {
    REQUIRE(moekit::gate_kind(a.gate) == moekit::gate_kind(b.gate));
    if (const auto* c = std::get_if<moekit::ConstantGate>(&a.gate)) {
        CHECK(same_bits(c->weights, std::get<moekit::ConstantGate>(b.gate).weights));
    } else if (const auto* h = std::get_if<moekit::HashGate>(&a.gate)) {
        CHECK(h->column == std::get<moekit::HashGate>(b.gate).column);
        CHECK(h->n_experts == std::get<moekit::HashGate>(b.gate).n_experts);
    } else if (const auto* t = std::get_if<moekit::TreeGate>(&a.gate)) {
        const auto& u = std::get<moekit::TreeGate>(b.gate);
        CHECK(t->branching == u.branching);
        REQUIRE(t->nodes.size() == u.nodes.size());
        for (std::size_t j = 0; j < t->nodes.size(); ++j)
            CHECK(same_bits(t->nodes[j], u.nodes[j]));
    } else {
        CHECK(same_bits(std::get<moekit::SoftmaxGate>(a.gate).coefficients,
                        std::get<moekit::SoftmaxGate>(b.gate).coefficients));
    }
    CHECK(a.top_k == b.top_k);
    CHECK(a.experts.kind == b.experts.kind);
    CHECK(a.experts.covariance_type == b.experts.covariance_type);
    REQUIRE(a.n_experts() == b.n_experts());
    REQUIRE(b.experts.covariances.size() == a.experts.covariances.size());
    for (std::size_t k = 0; k < a.experts.coefficients.size(); ++k) {
        CHECK(same_bits(a.experts.coefficients[k], b.experts.coefficients[k]));
        CHECK(same_bits(a.experts.covariances[k].covariance, b.experts.covariances[k].covariance));
        CHECK(same_bits(a.experts.covariances[k].lower, b.experts.covariances[k].lower));
        CHECK(bits(a.experts.covariances[k].log_det) == bits(b.experts.covariances[k].log_det));
    }
    CHECK(a.target_names == b.target_names);
    CHECK(a.input_names == b.input_names);
    CHECK(a.gate_input_names == b.gate_input_names);
}

/// Save → load → save: the model is bit-identical and the second text byte-identical.
void require_round_trip(const Model& model) {
    const std::string text = moekit::model_to_json(model);
    const moekit::ModelFile file = moekit::model_from_json(text, "round_trip.json");
    CHECK_FALSE(file.fit.has_value());
    require_same_model(model, file.model);
    CHECK(moekit::model_to_json(file.model) == text);
}

std::vector<double> field_bits_values(const moekit::FitRecord& r) {
    return {r.log_likelihood,
            r.n_samples,
            r.aic,
            r.bic,
            r.options.tol,
            r.options.regularization.reg_covar,
            r.options.regularization.min_expert_size,
            r.options.gate_options.gate_l2,
            r.options.balance_weight,
            r.options.capacity_factor,
            r.options.upcycle_noise};
}

void require_same_record(const moekit::FitRecord& a, const moekit::FitRecord& b) {
    CHECK(same_bits(field_bits_values(a), field_bits_values(b)));
    CHECK(a.n_parameters == b.n_parameters);
    CHECK(a.iterations == b.iterations);
    CHECK(a.converged == b.converged);
    CHECK(same_bits(a.trace, b.trace));
    CHECK(a.seed == b.seed);
    CHECK(a.best_restart == b.best_restart);
    CHECK(same_bits(a.restart_log_likelihoods, b.restart_log_likelihoods));
    CHECK(a.warnings == b.warnings);
    REQUIRE(a.mse.has_value() == b.mse.has_value());
    if (a.mse) CHECK(bits(*a.mse) == bits(*b.mse));
    CHECK(std::isnan(a.hard_disagreement) == std::isnan(b.hard_disagreement));
    if (!std::isnan(a.hard_disagreement)) CHECK(bits(a.hard_disagreement) == bits(b.hard_disagreement));
    REQUIRE(a.sparse.has_value() == b.sparse.has_value());
    if (a.sparse) {
        const moekit::ObjectiveReport& x = *a.sparse;
        const moekit::ObjectiveReport& y = *b.sparse;
        CHECK(same_bits(std::vector<double>{x.balance_loss, x.switch_loss, x.importance_cv2, x.load_cv2},
                        std::vector<double>{y.balance_loss, y.switch_loss, y.importance_cv2, y.load_cv2}));
        CHECK(same_bits(Matrix(x.load), Matrix(y.load)));
        CHECK(x.dropped == y.dropped);
        CHECK(x.dropped_samples == y.dropped_samples);
    }
    const moekit::FitOptions& o = a.options;
    const moekit::FitOptions& p = b.options;
    CHECK(o.expert == p.expert);
    CHECK(o.gate == p.gate);
    CHECK(o.covariance == p.covariance);
    CHECK(o.n_experts == p.n_experts);
    CHECK(o.max_iter == p.max_iter);
    CHECK(o.restarts == p.restarts);
    CHECK(o.seed == p.seed);
    CHECK(o.init == p.init);
    CHECK(o.kmeans_iter == p.kmeans_iter);
    CHECK(o.gate_options.newton_steps == p.gate_options.newton_steps);
    CHECK(o.method == p.method);
    CHECK(o.variant == p.variant);
    CHECK(o.top_k == p.top_k);
    CHECK(o.balance_loss == p.balance_loss);
    CHECK(o.gate_noise == p.gate_noise);
}

/// A fit record for gaussian_model (K = 3, full) with every field away from its default.
moekit::FitRecord sample_record() {
    moekit::FitRecord r;
    r.log_likelihood = -1130.2639602144375;
    r.n_parameters = 17;
    r.n_samples = 272.5;
    r.aic = 2294.527920428875;
    r.bic = 0.1 + 1.0 / 3.0;
    r.iterations = 37;
    r.converged = true;
    r.trace = {-2000.0000000000002, -1200.1, -1130.2639602144375, -0.0, denorm_min};
    r.seed = (std::uint64_t{1} << 63) + 12345; // above 2^63: needs an unsigned JSON integer
    r.best_restart = 2;
    r.restart_log_likelihoods = {-1140.5, -std::numeric_limits<double>::infinity(), -1130.26};
    r.warnings = {"start 1, iteration 3: expert 2 kept its parameters", "tab\tand \"quotes\""};
    moekit::FitOptions& o = r.options;
    o.expert = ExpertKind::Gaussian;
    o.gate = moekit::GateKind::Constant;
    o.covariance = CovarianceType::Full;
    o.n_experts = 3;
    o.max_iter = 77;
    o.tol = 1e-13;
    o.restarts = 3;
    o.seed = std::numeric_limits<std::uint64_t>::max();
    o.init = moekit::InitMethod::Random;
    o.kmeans_iter = 9;
    o.regularization.reg_covar = 1.0 / 3.0 * 1e-6;
    o.regularization.min_expert_size = -0.0;
    o.gate_options.gate_l2 = 2.5e-7;
    o.gate_options.newton_steps = 4;
    return r;
}

/// `text` with the first occurrence of `from` replaced by `to` (which must occur).
std::string edit(std::string text, const std::string& from, const std::string& to) {
    const auto at = text.find(from);
    INFO("looking for: " << from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

/// A small valid file, exactly in the layout model_to_json writes.
const std::string gaussian_text = R"json({
  "format": "moekit-model",
  "version": 1,
  "expert": "gaussian",
  "gate": "constant",
  "covariance": "full",
  "n_experts": 2,
  "n_outputs": 2,
  "n_inputs": 0,
  "n_gate_inputs": 0,
  "targets": ["y1", "y2"],
  "inputs": [],
  "gate_inputs": [],
  "top_k": 0,
  "gate_parameters": {
    "weights": [0.25, 0.75]
  },
  "experts": [
    {
      "mean": [0.0, 1.0],
      "covariance": [
        [1.0, 0.5],
        [0.5, 2.0]
      ]
    },
    {
      "mean": [3.0, -1.0],
      "covariance": [
        [2.0, 0.0],
        [0.0, 0.5]
      ]
    }
  ]
}
)json";

/// Linear experts with a softmax gate, also in the writer's layout.
const std::string linear_text = R"json({
  "format": "moekit-model",
  "version": 1,
  "expert": "linear",
  "gate": "softmax",
  "covariance": "full",
  "n_experts": 2,
  "n_outputs": 1,
  "n_inputs": 2,
  "n_gate_inputs": 1,
  "targets": ["y"],
  "inputs": ["x1", "x2"],
  "gate_inputs": ["z"],
  "top_k": 0,
  "gate_parameters": {
    "coefficients": [
      [0.0, 0.5],
      [0.0, -2.0]
    ],
    "coefficient_names": ["(intercept)", "z"]
  },
  "experts": [
    {
      "coefficients": [
        [1.0],
        [2.0],
        [3.0]
      ],
      "coefficient_names": ["(intercept)", "x1", "x2"],
      "covariance": [
        [0.25]
      ]
    },
    {
      "coefficients": [
        [-1.0],
        [0.5],
        [0.0]
      ],
      "coefficient_names": ["(intercept)", "x1", "x2"],
      "covariance": [
        [4.0]
      ]
    }
  ]
}
)json";

/// model_from_json(text, "bad.json") must throw DataError with exactly `message`.
void require_rejected(const std::string& text, const std::string& message) {
    REQUIRE_THROWS_MATCHES(moekit::model_from_json(text, "bad.json"),
                           moekit::DataError,
                           Catch::Matchers::Message(message));
}

/// A unique path in the system's temporary directory (removed by the caller).
std::filesystem::path temp_path(const std::string& name) {
    return std::filesystem::temp_directory_path() /
           ("moekit_model_io_test_" + std::to_string(::getpid()) + "_" + name);
}

} // namespace

TEST_CASE("the documented layout is what model_to_json writes", "[model_io]") {
    const moekit::ModelFile g = moekit::model_from_json(gaussian_text, "gaussian.json");
    CHECK(moekit::model_to_json(g.model) == gaussian_text);
    const moekit::ModelFile l = moekit::model_from_json(linear_text, "linear.json");
    CHECK(moekit::model_to_json(l.model) == linear_text);

    // The values land where the format says.
    const Model& m = g.model;
    CHECK(m.experts.kind == ExpertKind::Gaussian);
    CHECK(m.experts.covariance_type == CovarianceType::Full);
    CHECK(std::get<moekit::ConstantGate>(m.gate).weights == Vector::LinSpaced(2, 0.25, 0.75));
    CHECK(m.experts.coefficients[1] == row({3.0, -1.0}));
    CHECK(m.experts.covariances[0].covariance == mat2(1.0, 0.5, 0.5, 2.0));
    // log det [[1, .5], [.5, 2]] = log 1.75.
    CHECK(m.experts.covariances[0].log_det == Approx(std::log(1.75)).epsilon(1e-15));
    CHECK(m.target_names == std::vector<std::string>{"y1", "y2"});

    const Model& s = l.model;
    Matrix v(2, 2);
    v << 0.0, 0.5, 0.0, -2.0;
    CHECK(std::get<moekit::SoftmaxGate>(s.gate).coefficients == v);
    Matrix w(3, 1);
    w << 1.0, 2.0, 3.0;
    CHECK(s.experts.coefficients[0] == w);
    CHECK(s.experts.n_inputs() == 2);
    CHECK(s.input_names == std::vector<std::string>{"x1", "x2"});
    CHECK(s.gate_input_names == std::vector<std::string>{"z"});
}

TEST_CASE("the example in docs/file_formats.md is a model file in the written layout",
          "[model_io]") {
    std::ifstream in(std::string(MOEKIT_SOURCE_DIR) + "/docs/file_formats.md", std::ios::binary);
    REQUIRE(in.good());
    const std::string page{std::istreambuf_iterator<char>(in), {}};
    const auto begin = page.find("```json\n");
    REQUIRE(begin != std::string::npos);
    const auto end = page.find("```", begin + 8);
    REQUIRE(end != std::string::npos);
    const std::string example = page.substr(begin + 8, end - begin - 8);
    const moekit::ModelFile file = moekit::model_from_json(example, "file_formats.md");
    REQUIRE(file.fit.has_value());
    CHECK(file.fit->seed == 5);
    CHECK(file.fit->trace.back() == file.fit->log_likelihood);
    CHECK(moekit::model_to_json(file.model, &*file.fit) == example);
}

TEST_CASE("save and load round trips are bit-exact", "[model_io]") {
    SECTION("Gaussian, full") {
        require_round_trip(gaussian_model(CovarianceType::Full));
    }
    SECTION("Gaussian, tied") {
        require_round_trip(gaussian_model(CovarianceType::Tied));
    }
    SECTION("Gaussian, diag") {
        require_round_trip(gaussian_model(CovarianceType::Diag));
    }
    SECTION("Gaussian, spherical") {
        require_round_trip(gaussian_model(CovarianceType::Spherical));
    }
    SECTION("linear, constant gate") {
        require_round_trip(linear_model());
    }
    SECTION("linear, softmax gate") {
        require_round_trip(softmax_model());
    }
    SECTION("Gaussian, softmax gate") {
        require_round_trip(gaussian_softmax_model());
    }
}

TEST_CASE("hard doubles survive the text form", "[model_io]") {
    // One linear expert whose coefficients are the values under test.
    const std::vector<double> hard = {0.1,
                                      1.0 / 3.0,
                                      2.0 / 3.0,
                                      1e-300,
                                      denorm_min,
                                      3.0 * denorm_min,
                                      std::numeric_limits<double>::min(),
                                      std::nextafter(std::numeric_limits<double>::min(), 0.0),
                                      -0.0,
                                      0.0,
                                      0.12345678901234568,
                                      9007199254740993.0, // 2^53 + 1 rounds to 2^53
                                      9007199254740991.0,
                                      1.7976931348623157e308,
                                      -2.2250738585072014e-308,
                                      1e22,
                                      1e23,
                                      5e-324,
                                      123456789012345680000.0,
                                      0.30000000000000004};
    // And 2000 arbitrary finite bit patterns from a fixed-seed stream.
    std::vector<double> values = hard;
    std::mt19937_64 engine(20240607);
    while (values.size() < hard.size() + 2000) {
        const double x = std::bit_cast<double>(engine());
        if (std::isfinite(x)) values.push_back(x);
    }
    const auto q = static_cast<Index>(4);
    const auto rows = static_cast<Index>(values.size()) / q;
    Matrix w(rows, q);
    for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < q; ++j)
            w(i, j) = values[static_cast<std::size_t>(i * q + j)];

    Model m;
    m.gate = moekit::ConstantGate{Vector::Ones(1)};
    m.experts.kind = ExpertKind::Linear;
    m.experts.covariance_type = CovarianceType::Diag;
    m.experts.coefficients = {w};
    m.experts.covariances = {factor(Vector::Constant(q, 0.1).asDiagonal().toDenseMatrix())};
    m.target_names = {"a", "b", "c", "d"};
    for (Index i = 1; i < rows; ++i)
        m.input_names.push_back("x" + std::to_string(i));

    const std::string text = moekit::model_to_json(m);
    CHECK_THAT(text, Contains("-0.0") && Contains("5e-324"));
    const Model loaded = moekit::model_from_json(text, "hard.json").model;
    const Matrix& back = loaded.experts.coefficients[0];
    REQUIRE(back.rows() == rows);
    for (Index i = 0; i < rows; ++i) {
        for (Index j = 0; j < q; ++j) {
            INFO("value " << i * q + j << " = " << moekit::format_number(w(i, j)));
            CHECK(bits(back(i, j)) == bits(w(i, j)));
        }
    }
    CHECK(std::signbit(back(2, 0))); // -0.0 kept its sign
    CHECK(moekit::model_to_json(loaded) == text);
}

TEST_CASE("fit records round trip, including the options and a seed above 2^63", "[model_io]") {
    const Model model = gaussian_model(CovarianceType::Full);
    const moekit::FitRecord record = sample_record();
    const std::string text = moekit::model_to_json(model, &record);
    CHECK_THAT(text, Contains("\"seed\": 9223372036854788153"));
    CHECK_THAT(text, Contains("\"seed\": 18446744073709551615"));
    // A failed start (non-finite log-likelihood) is written as null and read as -infinity.
    CHECK_THAT(text, Contains("\"restart_log_likelihoods\": [-1140.5, null, -1130.26]"));

    const moekit::ModelFile file = moekit::model_from_json(text, "fit.json");
    require_same_model(model, file.model);
    REQUIRE(file.fit.has_value());
    require_same_record(record, *file.fit);
    CHECK(file.fit->seed == (std::uint64_t{1} << 63) + 12345);
    CHECK(moekit::model_to_json(file.model, &*file.fit) == text);

    // A model written without a record reads back without one.
    CHECK_FALSE(moekit::model_from_json(moekit::model_to_json(model), "m.json").fit.has_value());
}

TEST_CASE("every init method the library can name is read back", "[model_io]") {
    // The enumerators are found by asking to_string about small integer values: it answers "?"
    // for a value that is not an enumerator. An init method added to the library but not to
    // the reader fails here.
    const Model model = gaussian_model(CovarianceType::Full);
    moekit::FitRecord record = sample_record();
    int found = 0;
    for (int i = 0; i < 64; ++i) {
        const auto method = static_cast<moekit::InitMethod>(i);
        if (moekit::to_string(method) == "?") continue;
        ++found;
        INFO("init " << moekit::to_string(method));
        record.options.init = method;
        const moekit::ModelFile file =
            moekit::model_from_json(moekit::model_to_json(model, &record), "init.json");
        REQUIRE(file.fit.has_value());
        CHECK(file.fit->options.init == method);
    }
    CHECK(found >= 5); // auto, kmeans++, random, lines, model
}

TEST_CASE("make_fit_record copies the result and the options", "[model_io]") {
    moekit::FitResult result;
    result.model = gaussian_model(CovarianceType::Full);
    result.converged = true;
    result.iterations = 12;
    result.log_likelihood = -10.5;
    result.trace = {-20.0, -11.0, -10.5};
    result.best_restart = 1;
    result.restart_log_likelihoods = {-11.0, -10.5};
    result.warnings = {"a warning"};
    result.n_parameters = 17;
    result.n_samples = 30.0;
    result.aic = 55.0;
    result.bic = 60.25;
    result.mse = 0.125;
    moekit::FitOptions options;
    options.n_experts = 3;
    options.seed = 987654321987654321ULL;
    options.restarts = 2;
    options.tol = 1e-7;

    const moekit::FitRecord r = moekit::make_fit_record(result, options);
    CHECK(r.log_likelihood == -10.5);
    CHECK(r.n_parameters == 17);
    CHECK(r.n_samples == 30.0);
    CHECK(r.aic == 55.0);
    CHECK(r.bic == 60.25);
    CHECK(r.iterations == 12);
    CHECK(r.converged);
    CHECK(r.trace == result.trace);
    CHECK(r.seed == 987654321987654321ULL);
    CHECK(r.best_restart == 1);
    CHECK(r.restart_log_likelihoods == result.restart_log_likelihoods);
    CHECK(r.warnings == result.warnings);
    REQUIRE(r.mse.has_value());
    CHECK(*r.mse == result.mse);
    CHECK(std::isnan(r.hard_disagreement)); // not a hard fit
    CHECK_FALSE(r.sparse.has_value());      // top-k off: no load recorded
    CHECK(r.options.n_experts == 3);
    CHECK(r.options.seed == 987654321987654321ULL);
    CHECK(r.options.restarts == 2);
    CHECK(r.options.tol == 1e-7);

    const moekit::ModelFile file =
        moekit::model_from_json(moekit::model_to_json(result.model, &r), "record.json");
    REQUIRE(file.fit.has_value());
    require_same_record(r, *file.fit);
}

TEST_CASE("malformed, truncated and foreign files are rejected", "[model_io]") {
    SECTION("empty") {
        require_rejected("  \n", "bad.json: malformed JSON: the file is empty");
    }
    SECTION("syntax error: the byte and line are named") {
        require_rejected(edit(gaussian_text, "\"n_outputs\": 2,", "\"n_outputs\": 2,,"),
                         "bad.json: malformed JSON at byte 152 (line 8, column 18): syntax error "
                         "while parsing object key - unexpected ','; expected string literal");
    }
    SECTION("truncated to half its length") {
        const std::string text = moekit::model_to_json(gaussian_model(CovarianceType::Full));
        // Cut at the end of a line, so that the cut does not fall inside a string.
        const std::string half = text.substr(0, text.rfind('\n', text.size() / 2) + 1);
        REQUIRE_THROWS_MATCHES(
            moekit::model_from_json(half, "bad.json"),
            moekit::DataError,
            Catch::Matchers::Predicate<std::exception>(
                [](const std::exception& e) {
                    const std::string what = e.what();
                    return what.rfind("bad.json: malformed JSON at byte ", 0) == 0 &&
                           what.find("unexpected end of input") != std::string::npos &&
                           what.find('\n') == std::string::npos;
                },
                "a one-line malformed-JSON message"));
    }
    SECTION("NaN is not JSON") {
        REQUIRE_THROWS_WITH(
            moekit::model_from_json(edit(gaussian_text, "[0.0, 1.0]", "[NaN, 1.0]"), "bad.json"),
            StartsWith("bad.json: malformed JSON at byte ") && Contains("invalid literal"));
    }
    SECTION("a number beyond the double range") {
        require_rejected(edit(gaussian_text, "[0.0, 1.0]", "[1e400, 1.0]"),
                         "bad.json: malformed JSON: number overflow parsing '1e400'");
    }
    SECTION("not an object") {
        require_rejected("[1, 2]",
                         "bad.json: not a moekit model file (the top-level JSON value is an "
                         "array, expected an object)");
    }
    SECTION("wrong format") {
        require_rejected(edit(gaussian_text, "moekit-model", "moekit-modell"),
                         "bad.json: not a moekit model file (key 'format' is the string "
                         "'moekit-modell', expected 'moekit-model')");
        require_rejected(edit(gaussian_text, "\"format\": \"moekit-model\",", ""),
                         "bad.json: not a moekit model file (missing key 'format')");
    }
    SECTION("a future version") {
        require_rejected(edit(gaussian_text, "\"version\": 1", "\"version\": 2"),
                         "bad.json: written by a newer moekit (version 2); this moekit reads up "
                         "to version 1");
        // A newer file may carry keys this version does not know: the version is reported.
        require_rejected(edit(gaussian_text, "\"version\": 1,", "\"version\": 7, \"extra\": {},"),
                         "bad.json: written by a newer moekit (version 7); this moekit reads up "
                         "to version 1");
    }
    SECTION("an invalid version") {
        require_rejected(edit(gaussian_text, "\"version\": 1", "\"version\": 0"),
                         "bad.json: key 'version' must be an integer between 1 and "
                         "9223372036854775807, but is the number 0");
        require_rejected(edit(gaussian_text, "\"version\": 1", "\"version\": \"1\""),
                         "bad.json: key 'version' must be an integer between 1 and "
                         "9223372036854775807, but is the string '1'");
    }
}

TEST_CASE("missing, unknown, duplicate and mistyped keys are named by path", "[model_io]") {
    require_rejected(edit(gaussian_text, "\"n_outputs\": 2,", ""),
                     "bad.json: missing key 'n_outputs'");
    require_rejected(edit(gaussian_text, "\"weights\": [0.25, 0.75]", "\"weight\": [0.25, 0.75]"),
                     "bad.json: unknown key 'gate_parameters.weight'");
    require_rejected(edit(gaussian_text, "\"mean\": [3.0, -1.0],", ""),
                     "bad.json: missing key 'experts[1].mean'");
    require_rejected(edit(gaussian_text, "\"n_inputs\": 0,", "\"n_inputs\": 0, \"colour\": 1,"),
                     "bad.json: unknown key 'colour'");
    require_rejected(
        edit(gaussian_text, "\"mean\": [3.0, -1.0],", "\"mean\": [3.0, -1.0], \"means\": [],"),
        "bad.json: unknown key 'experts[1].means'");
    require_rejected(
        edit(gaussian_text, "\"n_experts\": 2,", "\"n_experts\": 2, \"n_experts\": 2,"),
        "bad.json: duplicate key 'n_experts'");
    require_rejected(edit(gaussian_text,
                          "\"mean\": [3.0, -1.0],",
                          "\"mean\": [3.0, -1.0], \"mean\": [3.0, -1.0],"),
                     "bad.json: duplicate key 'experts[1].mean'");
    require_rejected(edit(gaussian_text, "\"n_experts\": 2", "\"n_experts\": \"2\""),
                     "bad.json: key 'n_experts' must be an integer between 1 and "
                     "9223372036854775807, but is the string '2'");
    require_rejected(edit(gaussian_text, "\"n_experts\": 2", "\"n_experts\": 2.0"),
                     "bad.json: key 'n_experts' must be an integer between 1 and "
                     "9223372036854775807, but is the number 2.0");
    require_rejected(edit(gaussian_text, "\"n_outputs\": 2", "\"n_outputs\": 0"),
                     "bad.json: key 'n_outputs' must be an integer between 1 and "
                     "9223372036854775807, but is the number 0");
    require_rejected(edit(gaussian_text, "[0.0, 1.0]", "[0.0, null]"),
                     "bad.json: key 'experts[0].mean[1]' must be a number, but is null");
    require_rejected(
        edit(gaussian_text, "[0.0, 1.0]", "[0.0, true]"),
        "bad.json: key 'experts[0].mean[1]' must be a number, but is the boolean true");
    require_rejected(edit(gaussian_text, "[0.0, 1.0]", "[0.0, \"1\"]"),
                     "bad.json: key 'experts[0].mean[1]' must be a number, but is the string '1'");
    require_rejected(edit(gaussian_text, "\"targets\": [\"y1\", \"y2\"]", "\"targets\": \"y1\""),
                     "bad.json: key 'targets' must be an array, but is the string 'y1'");
    require_rejected(edit(gaussian_text, "\"y2\"", "2"),
                     "bad.json: key 'targets[1]' must be a string, but is the number 2");
    require_rejected(edit(gaussian_text, "\"gate_parameters\": {", "\"gate_parameters\": [{"),
                     "bad.json: malformed JSON at byte 338 (line 18, column 12): syntax error "
                     "while parsing array - unexpected ':'; expected ']'");
}

TEST_CASE("unknown enumeration values are rejected with the alternatives", "[model_io]") {
    require_rejected(edit(gaussian_text, "\"gaussian\"", "\"gausian\""),
                     "bad.json: key 'expert' has unknown value 'gausian' (expected 'gaussian' or "
                     "'linear')");
    require_rejected(edit(gaussian_text, "\"constant\"", "\"hierarchical\""),
                     "bad.json: key 'gate' has unknown value 'hierarchical' (expected 'constant', "
                     "'softmax', 'tree' or 'hash')");
    require_rejected(edit(gaussian_text, "\"full\"", "\"FULL\""),
                     "bad.json: key 'covariance' has unknown value 'FULL' (expected 'full', "
                     "'tied', 'diag' or 'spherical')");
}

TEST_CASE("shapes must agree with the counts and the names", "[model_io]") {
    require_rejected(edit(gaussian_text, "[3.0, -1.0]", "[3.0, -1.0, 4.0]"),
                     "bad.json: key 'experts[1].mean' has 3 values, but n_outputs is 2");
    require_rejected(edit(gaussian_text, "[1.0, 0.5],\n        [0.5, 2.0]", "[1.0, 0.5]"),
                     "bad.json: key 'experts[0].covariance' has 1 row, but n_outputs is 2");
    require_rejected(edit(gaussian_text, "[0.5, 2.0]", "[0.5]"),
                     "bad.json: key 'experts[0].covariance[1]' has 1 value, but n_outputs is 2");
    require_rejected(edit(gaussian_text, "[\"y1\", \"y2\"]", "[\"y1\"]"),
                     "bad.json: key 'targets' has 1 name, but n_outputs is 2");
    require_rejected(edit(gaussian_text, "[\"y1\", \"y2\"]", "[\"y1\", \"y1\"]"),
                     "bad.json: key 'targets' lists the name 'y1' twice");
    require_rejected(edit(gaussian_text, "\"inputs\": []", "\"inputs\": [\"x\"]"),
                     "bad.json: key 'inputs' has 1 name, but n_inputs is 0");
    require_rejected(edit(gaussian_text, "\"n_inputs\": 0", "\"n_inputs\": 1"),
                     "bad.json: key 'n_inputs' is 1, but Gaussian experts take no inputs");
    require_rejected(edit(gaussian_text, "\"n_gate_inputs\": 0", "\"n_gate_inputs\": 1"),
                     "bad.json: key 'n_gate_inputs' is 1, but a constant gate takes no inputs");
    require_rejected(edit(gaussian_text, "\"n_experts\": 2", "\"n_experts\": 3"),
                     "bad.json: key 'gate_parameters.weights' has 2 values, but n_experts is 3");
    require_rejected(
        edit(edit(gaussian_text, "\"n_experts\": 2", "\"n_experts\": 1"), "[0.25, 0.75]", "[1.0]"),
        "bad.json: key 'experts' has 2 experts, but n_experts is 1");
    require_rejected(edit(gaussian_text, "\"experts\": [", "\"experts\": [[],"),
                     "bad.json: key 'experts' has 3 experts, but n_experts is 2");

    // Linear experts and the softmax gate.
    require_rejected(
        edit(linear_text, "[\n        [1.0],\n        [2.0],\n", "[\n        [2.0],\n"),
        "bad.json: key 'experts[0].coefficients' has 2 rows, but n_inputs is 2 "
        "(expected n_inputs + 1 rows)");
    require_rejected(edit(linear_text, "[2.0],", "[2.0, 1.0],"),
                     "bad.json: key 'experts[0].coefficients[1]' has 2 values, but n_outputs is 1");
    require_rejected(
        edit(linear_text, "\"(intercept)\", \"x1\", \"x2\"]", "\"(intercept)\", \"x1\", \"x3\"]"),
        "bad.json: key 'experts[0].coefficient_names[2]' is 'x3', but 'x2' was "
        "expected (from 'inputs')");
    require_rejected(edit(linear_text, "\"(intercept)\", \"x1\", \"x2\"]", "\"x1\", \"x2\"]"),
                     "bad.json: key 'experts[0].coefficient_names' has 2 names, but "
                     "'(intercept)' and the 2 names of 'inputs' are expected");
    require_rejected(edit(linear_text, "[\"(intercept)\", \"z\"]", "[\"intercept\", \"z\"]"),
                     "bad.json: key 'gate_parameters.coefficient_names[0]' is 'intercept', but "
                     "'(intercept)' was expected");
    require_rejected(edit(linear_text, "[0.0, -2.0]", "[0.0, -2.0, 1.0]"),
                     "bad.json: key 'gate_parameters.coefficients[1]' has 3 values, but "
                     "n_experts is 2");
    require_rejected(edit(linear_text, "\"n_gate_inputs\": 1", "\"n_gate_inputs\": 2"),
                     "bad.json: key 'gate_inputs' has 1 name, but n_gate_inputs is 2");
    require_rejected(
        edit(edit(linear_text, "\"n_gate_inputs\": 1", "\"n_gate_inputs\": 2"),
             "[\"z\"]",
             "[\"z\", \"w\"]"),
        "bad.json: key 'gate_parameters.coefficients' has 2 rows, but n_gate_inputs is 2 "
        "(expected n_gate_inputs + 1 rows)");
    require_rejected(edit(linear_text,
                          "\"coefficient_names\": [\"(intercept)\", \"z\"]",
                          "\"weights\": [0.5, 0.5]"),
                     "bad.json: unknown key 'gate_parameters.weights'");
}

TEST_CASE("values must be usable: covariances, weights, the softmax reference column",
          "[model_io]") {
    SECTION("covariance not symmetric") {
        require_rejected(edit(gaussian_text, "[0.5, 2.0]", "[0.4, 2.0]"),
                         "bad.json: key 'experts[0].covariance' is not symmetric (entry [0][1] "
                         "is 0.5 but [1][0] is 0.4), but a covariance must be symmetric positive "
                         "definite");
        // Within the relative tolerance 1e-12 the matrix is accepted (and symmetrised).
        const auto file = moekit::model_from_json(
            edit(gaussian_text, "[0.5, 2.0]", "[0.5000000000000002, 2.0]"), "ok.json");
        const Matrix& s = file.model.experts.covariances[0].covariance;
        CHECK(s(0, 1) == s(1, 0));
    }
    SECTION("covariance not positive definite") {
        require_rejected(edit(gaussian_text,
                              "[1.0, 0.5],\n        [0.5, 2.0]",
                              "[1.0, 2.0],\n        [2.0, 1.0]"),
                         "bad.json: key 'experts[0].covariance' is not symmetric positive "
                         "definite");
        require_rejected(edit(gaussian_text,
                              "[2.0, 0.0],\n        [0.0, 0.5]",
                              "[0.0, 0.0],\n        [0.0, 0.5]"),
                         "bad.json: key 'experts[1].covariance' is not symmetric positive "
                         "definite");
    }
    SECTION("covariance structure of the declared type") {
        require_rejected(edit(gaussian_text, "\"full\"", "\"diag\""),
                         "bad.json: key 'experts[0].covariance' is a matrix with off-diagonal "
                         "entry [1][0] = 0.5, but covariance 'diag' requires a diagonal matrix");
        require_rejected(edit(edit(gaussian_text, "\"full\"", "\"spherical\""),
                              "[1.0, 0.5],\n        [0.5, 2.0]",
                              "[1.0, 0.0],\n        [0.0, 1.0]"),
                         "bad.json: key 'experts[1].covariance' is a matrix with unequal "
                         "diagonal entries (2 and 0.5), but covariance 'spherical' requires "
                         "sigma^2 times the identity");
        require_rejected(edit(gaussian_text, "\"full\"", "\"tied\""),
                         "bad.json: key 'experts[1].covariance' differs from "
                         "'experts[0].covariance', but covariance 'tied' requires all experts to "
                         "share one matrix");
    }
    SECTION("gate weights") {
        require_rejected(edit(gaussian_text, "[0.25, 0.75]", "[-0.25, 1.25]"),
                         "bad.json: key 'gate_parameters.weights[0]' is negative (-0.25)");
        require_rejected(edit(gaussian_text, "[0.25, 0.75]", "[0.25, 0.76]"),
                         "bad.json: key 'gate_parameters.weights' sums to 1.01, but gate weights "
                         "must sum to 1 (tolerance 1e-09)");
        require_rejected(edit(gaussian_text, "[0.25, 0.75]", "[0.25, 0.750000002]"),
                         "bad.json: key 'gate_parameters.weights' sums to 1.0000000020000002, but "
                         "gate weights must sum to 1 (tolerance 1e-09)");
        // Within the tolerance the weights are kept exactly as written.
        const auto file = moekit::model_from_json(
            edit(gaussian_text, "[0.25, 0.75]", "[0.25, 0.7500000002]"), "ok.json");
        CHECK(std::get<moekit::ConstantGate>(file.model.gate).weights(1) == 0.7500000002);
    }
    SECTION("softmax reference column") {
        require_rejected(edit(linear_text, "[0.0, -2.0]", "[0.1, -2.0]"),
                         "bad.json: key 'gate_parameters.coefficients[1][0]' is 0.1, but column 0 "
                         "(the reference expert) must be 0");
        // -0.0 is zero.
        CHECK_NOTHROW(
            moekit::model_from_json(edit(linear_text, "[0.0, -2.0]", "[-0.0, -2.0]"), "ok.json"));
    }
}

TEST_CASE("the fit record is validated too", "[model_io]") {
    const moekit::FitRecord record = sample_record();
    const std::string text = moekit::model_to_json(gaussian_model(CovarianceType::Full), &record);
    require_rejected(edit(text, "\"seed\": 9223372036854788153", "\"seed\": -1"),
                     "bad.json: key 'fit.seed' must be an integer between 0 and "
                     "18446744073709551615, but is the number -1");
    require_rejected(edit(text, "\"seed\": 18446744073709551615", "\"seed\": 18446744073709551616"),
                     "bad.json: key 'fit.options.seed' must be an integer between 0 and "
                     "18446744073709551615, but is the number 1.8446744073709552e+19");
    require_rejected(edit(text, "\"gate_l2\": 2.5e-07,\n", ""),
                     "bad.json: missing key 'fit.options.gate_l2'");
    require_rejected(edit(text, "\"converged\": true", "\"converged\": 1"),
                     "bad.json: key 'fit.converged' must be a boolean, but is the number 1");
    require_rejected(edit(text, "\"init\": \"random\"", "\"init\": \"kmeans\""),
                     "bad.json: key 'fit.options.init' has unknown value 'kmeans' (expected "
                     "'auto', 'kmeans++', 'random', 'lines', 'model' or 'upcycle')");
    require_rejected(edit(text,
                          "\"n_experts\": 3,\n      \"tree\"",
                          "\"n_experts\": 2,\n      \"tree\""),
                     "bad.json: key 'fit.options.n_experts' is 2, but the model's 'n_experts' "
                     "is 3");
    require_rejected(edit(text,
                          "\"covariance\": \"full\",\n      \"n_experts\"",
                          "\"covariance\": \"tied\",\n      \"n_experts\""),
                     "bad.json: key 'fit.options.covariance' is 'tied', but the model's "
                     "'covariance' is 'full'");
    require_rejected(edit(text, "\"max_iter\": 77", "\"max_iter\": 0"),
                     "bad.json: key 'fit.options.max_iter' must be an integer between 1 and "
                     "2147483647, but is the number 0");
    require_rejected(edit(text, "\"tol\": 1e-13", "\"tol\": -1e-13"),
                     "bad.json: key 'fit.options.tol' is negative (-1e-13)");
    require_rejected(edit(text, "\"trace\": [", "\"trace\": [null, "),
                     "bad.json: key 'fit.trace[0]' must be a number, but is null");
    require_rejected(edit(text, "\"warnings\": [", "\"warnings\": [3, "),
                     "bad.json: key 'fit.warnings[0]' must be a string, but is the number 3");
    require_rejected(edit(text, "\"iterations\": 37,", "\"iterations\": 37, \"extra\": 0,"),
                     "bad.json: unknown key 'fit.extra'");
    // "fit": [{...} leaves the array open when the file's final '}' arrives.
    const std::string open_array = edit(text, "\"fit\": {", "\"fit\": [{");
    const auto last = open_array.rfind('}');
    REQUIRE(open_array.substr(last) == "}\n");
    require_rejected(open_array,
                     "bad.json: malformed JSON at byte " + std::to_string(last + 1) + " (line " +
                         std::to_string(std::count(open_array.begin(), open_array.end(), '\n')) +
                         ", column 1): syntax error while parsing array - unexpected '}'; "
                         "expected ']'");
}

TEST_CASE("model_to_json refuses what it could not read back", "[model_io]") {
    const Model model = gaussian_model(CovarianceType::Full);
    SECTION("an invalid model") {
        Model bad = model;
        bad.target_names.pop_back();
        CHECK_THROWS_AS(moekit::model_to_json(bad), moekit::InvalidArgument);
    }
    SECTION("a non-finite number in the record") {
        moekit::FitRecord r = sample_record();
        r.trace[1] = std::numeric_limits<double>::quiet_NaN();
        CHECK_THROWS_WITH(moekit::model_to_json(model, &r),
                          "model_to_json: fit->trace[1] is nan, but every number in a model "
                          "file must be finite.");
    }
    SECTION("options that do not describe the model") {
        moekit::FitRecord r = sample_record();
        r.options.n_experts = 2;
        CHECK_THROWS_WITH(moekit::model_to_json(model, &r),
                          "model_to_json: fit->options.n_experts is 2, but it must equal the "
                          "model's number of experts 3.");
    }
    SECTION("a name that is not UTF-8") {
        Model bad = model;
        bad.target_names[0] = "caf\xe9"; // Latin-1
        CHECK_THROWS_AS(moekit::model_to_json(bad), moekit::InvalidArgument);
    }
}

TEST_CASE("save_model and load_model use files", "[model_io]") {
    const Model model = linear_model();
    const moekit::FitRecord record = [] {
        moekit::FitRecord r = sample_record();
        r.options.expert = ExpertKind::Linear;
        r.options.n_experts = 2;
        return r;
    }();
    const auto path = temp_path("model.json");
    moekit::save_model(path.string(), model, &record);
    const moekit::ModelFile file = moekit::load_model(path.string());
    require_same_model(model, file.model);
    REQUIRE(file.fit.has_value());
    require_same_record(record, *file.fit);
    {
        std::ifstream in(path, std::ios::binary);
        const std::string text{std::istreambuf_iterator<char>(in), {}};
        CHECK(text == moekit::model_to_json(model, &record));
    }

    // Messages name the file.
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out << "{\"format\": \"moekit-model\", \"version\": 9}";
    }
    CHECK_THROWS_WITH(moekit::load_model(path.string()),
                      path.string() + ": written by a newer moekit (version 9); this moekit "
                                      "reads up to version 1");
    std::filesystem::remove(path);

    CHECK_THROWS_MATCHES(moekit::load_model(path.string()),
                         moekit::DataError,
                         Catch::Matchers::Message(path.string() +
                                                  ": cannot open the model file (No such file "
                                                  "or directory)"));
    CHECK_THROWS_WITH(moekit::load_model(std::filesystem::temp_directory_path().string()),
                      Contains("cannot open the model file (it is a directory)"));
}

TEST_CASE("fitted models round trip and keep their log-likelihood", "[model_io]") {
    // Fits on real data (the lead's EM), then: bit-exact round trip, identical text, and the
    // loaded model gives the very same log-likelihood as the fitted one.
    struct Case {
        const char* file;
        std::vector<std::string> targets, inputs, gate_inputs;
        ExpertKind expert;
        moekit::GateKind gate;
        CovarianceType covariance;
    };
    const std::vector<Case> cases = {
        {"faithful.csv",
         {"eruptions", "waiting"},
         {},
         {},
         ExpertKind::Gaussian,
         moekit::GateKind::Constant,
         CovarianceType::Full},
        {"faithful.csv",
         {"eruptions", "waiting"},
         {},
         {},
         ExpertKind::Gaussian,
         moekit::GateKind::Constant,
         CovarianceType::Tied},
        {"faithful.csv",
         {"eruptions", "waiting"},
         {},
         {},
         ExpertKind::Gaussian,
         moekit::GateKind::Constant,
         CovarianceType::Diag},
        {"faithful.csv",
         {"eruptions", "waiting"},
         {},
         {},
         ExpertKind::Gaussian,
         moekit::GateKind::Constant,
         CovarianceType::Spherical},
        {"NPreg.csv",
         {"yn"},
         {"x", "x2"},
         {"x"},
         ExpertKind::Linear,
         moekit::GateKind::Softmax,
         CovarianceType::Full},
    };
    for (const Case& c : cases) {
        INFO(c.file << ", " << moekit::to_string(c.covariance) << ", "
                    << moekit::to_string(c.gate));
        moekit::CsvSpec spec;
        spec.targets = c.targets;
        spec.inputs = c.inputs;
        spec.gate_inputs = c.gate_inputs;
        const moekit::Dataset data =
            moekit::read_csv(std::string(MOEKIT_DATA_DIR) + "/" + c.file, spec);
        moekit::FitOptions options;
        options.expert = c.expert;
        options.gate = c.gate;
        options.covariance = c.covariance;
        options.n_experts = 2;
        options.max_iter = 200;
        options.seed = 11;
        const moekit::FitResult result = moekit::fit(data, options);
        const moekit::FitRecord record = moekit::make_fit_record(result, options);

        const std::string text = moekit::model_to_json(result.model, &record);
        const moekit::ModelFile file = moekit::model_from_json(text, "fitted.json");
        require_same_model(result.model, file.model);
        REQUIRE(file.fit.has_value());
        require_same_record(record, *file.fit);
        CHECK(moekit::model_to_json(file.model, &*file.fit) == text);
        CHECK(bits(moekit::log_likelihood(file.model, data)) == bits(result.log_likelihood));
    }
}

// ---------------------------------------------------------------------------------------------
// Variants (issue 5): hash gates, sparse routing (top_k) and the new fit options.
// ---------------------------------------------------------------------------------------------

namespace {

/// Linear experts (K = 3, q = 1, d = 1) routed by a hash of the column "user id".
Model hash_model() {
    Model m = softmax_model();
    m.gate = moekit::HashGate{"user id", 3};
    m.gate_input_names.clear();
    return m;
}

/// Linear experts (K = 4, q = 1, d = 1) under a 2x2 tree of softmax gates on g = 2 inputs.
Model tree_model() {
    Model m = softmax_model();
    moekit::TreeGate tree = moekit::make_tree_gate({2, 2}, 2);
    tree.nodes[0] << 0.0, 0.1, -0.0, 1.0 / 3.0, 0.0, -1e-300;
    tree.nodes[1] << 0.0, 2.5, 0.0, -denorm_min, 0.0, 0.7;
    tree.nodes[2] << 0.0, -0.125, 0.0, 12.345678901234567, 0.0, 3.0;
    m.gate = std::move(tree);
    m.experts.coefficients.push_back(m.experts.coefficients[0] * 3.0);
    m.experts.covariances.push_back(m.experts.covariances[1]);
    return m;
}

/// A fit record of softmax_model with every variant option away from its default.
moekit::FitRecord sparse_record() {
    moekit::FitRecord r = sample_record();
    moekit::FitOptions& o = r.options;
    o.expert = ExpertKind::Linear;
    o.gate = moekit::GateKind::Softmax;
    o.covariance = CovarianceType::Spherical;
    o.n_experts = 3;
    o.init = moekit::InitMethod::Upcycle;
    o.method = moekit::FitMethod::Gradient;
    o.variant = moekit::Variant::Standard;
    o.top_k = 2;
    o.balance_loss = moekit::BalanceLoss::Importance;
    o.balance_weight = 0.1 + 0.2;
    o.capacity_factor = 1.0 / 3.0 + 1.0;
    o.gate_noise = true;
    o.upcycle_noise = 5e-324;
    return r;
}

/// Every line of `text` that contains `needle` removed (with its line end).
std::string without_lines(std::string text, const std::string& needle) {
    std::string out;
    std::size_t start = 0;
    while (start < text.size()) {
        const std::size_t end = text.find('\n', start);
        const std::string line = text.substr(start, end == std::string::npos ? end : end - start + 1);
        if (line.find(needle) == std::string::npos) out += line;
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return out;
}

} // namespace

TEST_CASE("hash-gate models round trip bit-exactly and name their hash function", "[model_io]") {
    const Model model = hash_model();
    require_round_trip(model);
    const std::string text = moekit::model_to_json(model);
    CHECK_THAT(text,
               Contains("\"gate\": \"hash\"") && Contains("\"n_gate_inputs\": 0") &&
                   Contains("\"gate_parameters\": {\n    \"column\": \"user id\",\n    "
                            "\"n_experts\": 3,\n    \"hash\": \"moekit-key-v1\"\n  }"));

    // With a fit record: the options name the gate too.
    moekit::FitRecord record = sample_record();
    record.options.expert = ExpertKind::Linear;
    record.options.gate = moekit::GateKind::Hash;
    record.options.covariance = CovarianceType::Spherical;
    const std::string with_fit = moekit::model_to_json(model, &record);
    const moekit::ModelFile file = moekit::model_from_json(with_fit, "hash.json");
    require_same_model(model, file.model);
    REQUIRE(file.fit.has_value());
    require_same_record(record, *file.fit);
    CHECK(moekit::model_to_json(file.model, &*file.fit) == with_fit);

    SECTION("another hash function is refused") {
        require_rejected(edit(text, "\"moekit-key-v1\"", "\"moekit-key-v2\""),
                         "bad.json: key 'gate_parameters.hash' is 'moekit-key-v2', but this "
                         "moekit routes by 'moekit-key-v1' (a different hash would send samples "
                         "to other experts)");
        require_rejected(edit(text, "\"moekit-key-v1\"", "1"),
                         "bad.json: key 'gate_parameters.hash' must be a string, but is the "
                         "number 1");
        require_rejected(edit(text, ",\n    \"hash\": \"moekit-key-v1\"", ""),
                         "bad.json: missing key 'gate_parameters.hash'");
    }
    SECTION("the column and the number of experts must be consistent") {
        require_rejected(edit(text, "\"column\": \"user id\"", "\"column\": \"\""),
                         "bad.json: key 'gate_parameters.column' is empty, but it must name the "
                         "key column");
        require_rejected(edit(text, "\"n_experts\": 3,\n    \"hash\"", "\"n_experts\": 2,\n    \"hash\""),
                         "bad.json: key 'gate_parameters.n_experts' is 2, but n_experts is 3");
        require_rejected(edit(text, "\"column\": \"user id\"", "\"weights\": [0.5, 0.5]"),
                         "bad.json: unknown key 'gate_parameters.weights'");
        require_rejected(
            edit(edit(text, "\"n_gate_inputs\": 0", "\"n_gate_inputs\": 1"), "\"gate_inputs\": []",
                 "\"gate_inputs\": [\"z\"]"),
            "bad.json: key 'n_gate_inputs' is 1, but a hash gate takes no gate inputs (it routes "
            "by its key column)");
    }
}

TEST_CASE("top_k round trips and is range-checked", "[model_io]") {
    Model sparse = softmax_model();
    sparse.top_k = 2;
    require_round_trip(sparse);
    const std::string text = moekit::model_to_json(sparse);
    CHECK_THAT(text, Contains("\n  \"gate_inputs\": [\"z \\\"quoted\\\"\", \"caf\xc3\xa9\"],\n  "
                              "\"top_k\": 2,\n  \"gate_parameters\""));
    CHECK(moekit::model_from_json(text, "sparse.json").model.top_k == 2);

    SECTION("hard routing of a tree gate (top_k 1) round trips") {
        Model tree = tree_model();
        require_round_trip(tree);
        tree.top_k = 1;
        require_round_trip(tree);
        require_rejected(edit(moekit::model_to_json(tree), "\"top_k\": 1", "\"top_k\": 2"),
                         "bad.json: key 'top_k' is 2, but a tree gate routes densely (0) or to "
                         "its greedy top-1 expert (1)");
    }
    SECTION("out of range") {
        require_rejected(edit(text, "\"top_k\": 2", "\"top_k\": 4"),
                         "bad.json: key 'top_k' must be an integer between 0 and 3, but is the "
                         "number 4");
        require_rejected(edit(text, "\"top_k\": 2", "\"top_k\": -1"),
                         "bad.json: key 'top_k' must be an integer between 0 and 3, but is the "
                         "number -1");
        require_rejected(edit(text, "\"top_k\": 2", "\"top_k\": 1.0"),
                         "bad.json: key 'top_k' must be an integer between 0 and 3, but is the "
                         "number 1.0");
        require_rejected(edit(text, "\"top_k\": 2", "\"top_k\": null"),
                         "bad.json: key 'top_k' must be an integer between 0 and 3, but is null");
    }
    SECTION("the writer refuses a model it could not read back") {
        Model bad = tree_model();
        bad.top_k = 2;
        CHECK_THROWS_AS(moekit::model_to_json(bad), moekit::InvalidArgument);
        bad = softmax_model();
        bad.top_k = 4;
        CHECK_THROWS_AS(moekit::model_to_json(bad), moekit::InvalidArgument);
    }
}

TEST_CASE("the variant options of a fit record round trip and are validated", "[model_io]") {
    Model model = softmax_model();
    model.top_k = 2;
    const moekit::FitRecord record = sparse_record();
    const std::string text = moekit::model_to_json(model, &record);
    CHECK_THAT(text,
               Contains("\"newton_steps\": 4,\n      \"method\": \"gradient\",\n      \"variant\": "
                        "\"standard\",\n      \"top_k\": 2,\n      \"balance_loss\": "
                        "\"importance\",\n      \"balance_weight\": 0.30000000000000004,\n      "
                        "\"capacity_factor\": 1.3333333333333333,\n      \"gate_noise\": true,\n"
                        "      \"upcycle_noise\": 5e-324\n"));
    CHECK_THAT(text, Contains("\"init\": \"upcycle\""));
    const moekit::ModelFile file = moekit::model_from_json(text, "sparse.json");
    REQUIRE(file.fit.has_value());
    require_same_record(record, *file.fit);
    CHECK(file.fit->options.init == moekit::InitMethod::Upcycle);
    CHECK(moekit::model_to_json(file.model, &*file.fit) == text);
    {
        // The smooth load loss of noisy gating.
        moekit::FitRecord r = record;
        r.options.balance_loss = moekit::BalanceLoss::Load;
        const std::string load = moekit::model_to_json(model, &r);
        CHECK_THAT(load, Contains("\"balance_loss\": \"load\""));
        const moekit::ModelFile back = moekit::model_from_json(load, "load.json");
        REQUIRE(back.fit.has_value());
        require_same_record(r, *back.fit);
    }

    // Every variant and method the library names is read back (with options it accepts).
    for (const auto& [method, variant] :
         {std::pair{moekit::FitMethod::Auto, moekit::Variant::Standard},
          std::pair{moekit::FitMethod::EM, moekit::Variant::Hard},
          std::pair{moekit::FitMethod::Gradient, moekit::Variant::MetaPi}}) {
        moekit::FitRecord r = record;
        r.options.top_k = 0;
        r.options.balance_weight = 0.0;
        r.options.capacity_factor = 0.0;
        r.options.gate_noise = false;
        r.options.method = method;
        r.options.variant = variant;
        Model dense = softmax_model();
        dense.top_k = variant == moekit::Variant::Hard ? 1 : 0;
        INFO(moekit::to_string(method) << ", " << moekit::to_string(variant));
        const moekit::ModelFile back =
            moekit::model_from_json(moekit::model_to_json(dense, &r), "variant.json");
        REQUIRE(back.fit.has_value());
        CHECK(back.fit->options.method == method);
        CHECK(back.fit->options.variant == variant);
        CHECK(back.model.top_k == dense.top_k);
    }

    SECTION("unknown words and values out of range") {
        require_rejected(edit(text, "\"method\": \"gradient\"", "\"method\": \"newton\""),
                         "bad.json: key 'fit.options.method' has unknown value 'newton' "
                         "(expected 'auto', 'em' or 'gradient')");
        require_rejected(edit(text, "\"variant\": \"standard\"", "\"variant\": \"metapi\""),
                         "bad.json: key 'fit.options.variant' has unknown value 'metapi' "
                         "(expected 'standard', 'meta-pi' or 'hard')");
        require_rejected(edit(text, "\"balance_loss\": \"importance\"", "\"balance_loss\": \"l2\""),
                         "bad.json: key 'fit.options.balance_loss' has unknown value 'l2' "
                         "(expected 'switch', 'importance' or 'load')");
        require_rejected(edit(text, "\"balance_weight\": 0.30000000000000004", "\"balance_weight\": -0.5"),
                         "bad.json: key 'fit.options.balance_weight' is negative (-0.5)");
        require_rejected(edit(text, "\"capacity_factor\": 1.3333333333333333", "\"capacity_factor\": \"2\""),
                         "bad.json: key 'fit.options.capacity_factor' must be a number, but is "
                         "the string '2'");
        require_rejected(edit(text, "\"gate_noise\": true", "\"gate_noise\": 1"),
                         "bad.json: key 'fit.options.gate_noise' must be a boolean, but is the "
                         "number 1");
        require_rejected(edit(text, "\"upcycle_noise\": 5e-324", "\"upcycle_noise\": -1"),
                         "bad.json: key 'fit.options.upcycle_noise' is negative (-1)");
        require_rejected(edit(text, "\"top_k\": 2,\n      \"balance_loss\"", "\"top_k\": -2,\n      \"balance_loss\""),
                         "bad.json: key 'fit.options.top_k' must be an integer between 0 and "
                         "9223372036854775807, but is the number -2");
    }
    SECTION("combinations the library refuses") {
        // The options' own validation names the option and the reason.
        CHECK_THROWS_MATCHES(
            moekit::model_from_json(edit(text, "\"top_k\": 2,\n      \"balance_loss\"", "\"top_k\": 4,\n      \"balance_loss\""), "bad.json"),
            moekit::DataError,
            Catch::Matchers::Predicate<std::exception>(
                [](const std::exception& e) {
                    const std::string m = e.what();
                    return m.rfind("bad.json: top_k (--top-k) is 4", 0) == 0;
                },
                "starts with the option and its value"));
        CHECK_THROWS_MATCHES(
            moekit::model_from_json(edit(text, "\"method\": \"gradient\"", "\"method\": \"em\""), "bad.json"),
            moekit::DataError,
            Catch::Matchers::Predicate<std::exception>(
                [](const std::exception& e) {
                    return std::string(e.what()).find("gradient ascent") != std::string::npos;
                },
                "says top-k needs gradient ascent"));
    }
}

TEST_CASE("files written before the variant keys existed load with the defaults", "[model_io]") {
    const Model model = gaussian_model(CovarianceType::Full);
    const moekit::FitRecord record = sample_record(); // the variant options at their defaults
    const std::string text = moekit::model_to_json(model, &record);
    std::string old = text;
    for (const char* key : {"\"top_k\"",
                            "\"method\"",
                            "\"variant\"",
                            "\"balance_loss\"",
                            "\"balance_weight\"",
                            "\"capacity_factor\"",
                            "\"gate_noise\"",
                            "\"upcycle_noise\""})
        old = without_lines(old, key);
    // The last option of an old file has no trailing comma.
    old = edit(old, "\"newton_steps\": 4,\n", "\"newton_steps\": 4\n");
    REQUIRE(old.find("top_k") == std::string::npos);
    REQUIRE(old.find("upcycle") == std::string::npos);

    const moekit::ModelFile file = moekit::model_from_json(old, "old.json");
    require_same_model(model, file.model);
    CHECK(file.model.top_k == 0);
    REQUIRE(file.fit.has_value());
    const moekit::FitOptions defaults;
    const moekit::FitOptions& o = file.fit->options;
    CHECK(o.method == defaults.method);
    CHECK(o.variant == defaults.variant);
    CHECK(o.top_k == defaults.top_k);
    CHECK(o.balance_loss == defaults.balance_loss);
    CHECK(o.balance_weight == defaults.balance_weight);
    CHECK(o.capacity_factor == defaults.capacity_factor);
    CHECK(o.gate_noise == defaults.gate_noise);
    CHECK(o.upcycle_noise == defaults.upcycle_noise);
    // Saving it again writes the new keys, with those defaults: the current file.
    CHECK(moekit::model_to_json(file.model, &*file.fit) == text);
    // The bundled layout files without top_k load too.
    CHECK(moekit::model_from_json(without_lines(gaussian_text, "\"top_k\""), "old.json").model.top_k == 0);
}

TEST_CASE("make_fit_record records the method that auto resolved to", "[model_io]") {
    moekit::FitResult result;
    result.model = softmax_model();
    moekit::FitOptions options;
    options.expert = ExpertKind::Linear;
    options.gate = moekit::GateKind::Softmax;
    options.covariance = CovarianceType::Spherical;
    options.n_experts = 3;
    CHECK(moekit::make_fit_record(result, options).options.method == moekit::FitMethod::EM);
    options.top_k = 1;
    CHECK(moekit::make_fit_record(result, options).options.method == moekit::FitMethod::Gradient);
    options.top_k = 0;
    options.variant = moekit::Variant::MetaPi;
    CHECK(moekit::make_fit_record(result, options).options.method == moekit::FitMethod::Gradient);
    options.variant = moekit::Variant::Standard;
    options.method = moekit::FitMethod::Gradient;
    CHECK(moekit::make_fit_record(result, options).options.method == moekit::FitMethod::Gradient);
}

TEST_CASE("fitted hash-gate and top-k models round trip and keep their log-likelihood",
          "[model_io]") {
    struct Case {
        const char* name;
        moekit::GateKind gate;
        Index top_k;
        std::string key;
    };
    for (const Case& c : {Case{"hash gate on class", moekit::GateKind::Hash, 0, "class"},
                          Case{"softmax gate, top-1", moekit::GateKind::Softmax, 1, ""}}) {
        INFO(c.name);
        moekit::CsvSpec spec;
        spec.targets = {"yn"};
        spec.inputs = {"x"};
        if (c.gate == moekit::GateKind::Softmax) spec.gate_inputs = {"x"};
        spec.key = c.key;
        const moekit::Dataset data = moekit::read_csv(std::string(MOEKIT_DATA_DIR) + "/NPreg.csv", spec);
        moekit::FitOptions options;
        options.expert = ExpertKind::Linear;
        options.gate = c.gate;
        options.n_experts = 2;
        options.top_k = c.top_k;
        options.max_iter = 200;
        options.seed = 3;
        const moekit::FitResult result = moekit::fit(data, options);
        CHECK(result.model.top_k == c.top_k);
        const moekit::FitRecord record = moekit::make_fit_record(result, options);
        const std::string text = moekit::model_to_json(result.model, &record);
        const moekit::ModelFile file = moekit::model_from_json(text, "fitted.json");
        require_same_model(result.model, file.model);
        REQUIRE(file.fit.has_value());
        require_same_record(record, *file.fit);
        CHECK(moekit::model_to_json(file.model, &*file.fit) == text);
        CHECK(bits(moekit::log_likelihood(file.model, data)) == bits(result.log_likelihood));
    }
}

TEST_CASE("the fit's MSE, hard disagreement and sparse report round trip and are validated",
          "[model_io]") {
    // Top-k fit: mse and the sparse object; hard_disagreement is null.
    Model model = softmax_model();
    model.top_k = 2;
    moekit::FitRecord record = sparse_record();
    record.mse = 0.1 + 0.2;
    moekit::ObjectiveReport sparse;
    sparse.balance_loss = 1.0 / 3.0;
    sparse.switch_loss = 1.0000000000000002;
    sparse.importance_cv2 = 5e-324;
    sparse.load_cv2 = 0.0;
    sparse.load = (Vector(3) << 0.5, 1.0 / 3.0, 0.1).finished();
    sparse.dropped = 7;
    sparse.dropped_samples = 2;
    record.sparse = sparse;
    const std::string text = moekit::model_to_json(model, &record);
    CHECK_THAT(text,
               Contains("\"mse\": 0.30000000000000004,\n    \"hard_disagreement\": null,\n    "
                        "\"sparse\": {\n      \"balance_loss\": 0.3333333333333333,\n      "
                        "\"switch_loss\": 1.0000000000000002,\n      \"importance_cv2\": 5e-324,\n"
                        "      \"load_cv2\": 0.0,\n      \"load\": [0.5, 0.3333333333333333, 0.1],\n"
                        "      \"dropped\": 7,\n      \"dropped_samples\": 2\n    },\n    \"options\""));
    const moekit::ModelFile file = moekit::model_from_json(text, "sparse.json");
    REQUIRE(file.fit.has_value());
    require_same_record(record, *file.fit);
    CHECK(moekit::model_to_json(file.model, &*file.fit) == text);

    // Hard fit: hard_disagreement is a number, sparse null.
    Model hard = softmax_model();
    hard.top_k = 1;
    moekit::FitRecord hard_record = sparse_record();
    hard_record.options.top_k = 0;
    hard_record.options.balance_weight = 0.0;
    hard_record.options.capacity_factor = 0.0;
    hard_record.options.gate_noise = false;
    hard_record.options.method = moekit::FitMethod::EM;
    hard_record.options.variant = moekit::Variant::Hard;
    hard_record.mse = 2.5;
    hard_record.hard_disagreement = 0.1;
    const std::string hard_text = moekit::model_to_json(hard, &hard_record);
    CHECK_THAT(hard_text,
               Contains("\"mse\": 2.5,\n    \"hard_disagreement\": 0.1,\n    \"sparse\": null,\n"));
    const moekit::ModelFile hard_file = moekit::model_from_json(hard_text, "hard.json");
    REQUIRE(hard_file.fit.has_value());
    require_same_record(hard_record, *hard_file.fit);
    CHECK(moekit::model_to_json(hard_file.model, &*hard_file.fit) == hard_text);

    // A disagreement of another variant is not written (null unless hard).
    {
        moekit::FitRecord r = record;
        r.hard_disagreement = 0.25;
        CHECK_THAT(moekit::model_to_json(model, &r), Contains("\"hard_disagreement\": null,"));
    }

    SECTION("files written before the keys existed load without them") {
        std::string old = without_lines(hard_text, "\"mse\"");
        old = without_lines(old, "\"hard_disagreement\"");
        old = without_lines(old, "\"sparse\"");
        REQUIRE(old.find("mse") == std::string::npos);
        const moekit::ModelFile back = moekit::model_from_json(old, "old.json");
        REQUIRE(back.fit.has_value());
        CHECK_FALSE(back.fit->mse.has_value());
        CHECK(std::isnan(back.fit->hard_disagreement));
        CHECK_FALSE(back.fit->sparse.has_value());
        // Saved again, the keys are there, as null.
        CHECK_THAT(moekit::model_to_json(back.model, &*back.fit),
                   Contains("\"mse\": null,\n    \"hard_disagreement\": null,\n    \"sparse\": null,\n"));
    }
    SECTION("bad values are rejected with the key named") {
        require_rejected(edit(text, "\"mse\": 0.30000000000000004", "\"mse\": -0.5"),
                         "bad.json: key 'fit.mse' is negative (-0.5)");
        require_rejected(edit(text, "\"mse\": 0.30000000000000004", "\"mse\": \"small\""),
                         "bad.json: key 'fit.mse' must be a number, but is the string 'small'");
        require_rejected(edit(text, "\"hard_disagreement\": null", "\"hard_disagreement\": 0.5"),
                         "bad.json: key 'fit.hard_disagreement' must be null unless the variant is "
                         "'hard' (it is 'standard')");
        require_rejected(edit(hard_text, "\"hard_disagreement\": 0.1", "\"hard_disagreement\": 1.5"),
                         "bad.json: key 'fit.hard_disagreement' is above 1");
        require_rejected(edit(text, "\"dropped\": 7", "\"dropped\": -7"),
                         "bad.json: key 'fit.sparse.dropped' must be an integer between 0 and "
                         "9223372036854775807, but is the number -7");
        require_rejected(edit(text, "\"load\": [0.5, ", "\"load\": ["),
                         "bad.json: key 'fit.sparse.load' has 2 values, but n_experts is 3");
        require_rejected(edit(text, "\"load\": [0.5", "\"load\": [-0.5"),
                         "bad.json: key 'fit.sparse.load[0]' is negative");
        require_rejected(edit(text, "\"dropped_samples\": 2", "\"dropped_samples\": 2, \"extra\": 1"),
                         "bad.json: unknown key 'fit.sparse.extra'");
        require_rejected(edit(text, "\"switch_loss\": 1.0000000000000002,\n", ""),
                         "bad.json: missing key 'fit.sparse.switch_loss'");
        require_rejected(edit(hard_text, "\"sparse\": null", "\"sparse\": []"),
                         "bad.json: key 'fit.sparse' must be an object, but is an array");
        require_rejected(
            edit(hard_text,
                 "\"sparse\": null",
                 "\"sparse\": {\"balance_loss\": 0.0, \"switch_loss\": 0.0, \"importance_cv2\": 0.0, "
                 "\"load_cv2\": 0.0, \"load\": [1.0, 0.0, 0.0], \"dropped\": 0, \"dropped_samples\": 0}"),
            "bad.json: key 'fit.sparse' must be null unless top-k gating is on ('fit.options.top_k' is 0)");
    }
    SECTION("the writer checks the sparse report") {
        moekit::FitRecord r = record;
        r.sparse->load = Vector::Constant(2, 0.5);
        CHECK_THROWS_AS(moekit::model_to_json(model, &r), moekit::InvalidArgument);
        r = record;
        r.mse = std::numeric_limits<double>::infinity();
        CHECK_THROWS_AS(moekit::model_to_json(model, &r), moekit::InvalidArgument);
        r = hard_record;
        r.sparse = sparse;
        CHECK_THROWS_AS(moekit::model_to_json(hard, &r), moekit::InvalidArgument);
    }
}

TEST_CASE("make_fit_record keeps the stored part of the sparse report", "[model_io]") {
    moekit::FitResult result;
    result.model = softmax_model();
    result.model.top_k = 2;
    result.mse = 1.5;
    result.sparse.log_likelihood = -3.0;
    result.sparse.penalty = 0.5;
    result.sparse.balance_loss = 1.25;
    result.sparse.switch_loss = 1.25;
    result.sparse.importance_cv2 = 0.5;
    result.sparse.load_cv2 = 0.25;
    result.sparse.load = (Vector(3) << 0.5, 0.25, 0.25).finished();
    result.sparse.dropped = 3;
    result.sparse.dropped_samples = 1;
    const moekit::FitRecord r = moekit::make_fit_record(result, sparse_record().options);
    REQUIRE(r.sparse.has_value());
    CHECK(r.sparse->log_likelihood == 0.0); // not stored in files
    CHECK(r.sparse->penalty == 0.0);
    CHECK(r.sparse->balance_loss == 1.25);
    CHECK(r.sparse->switch_loss == 1.25);
    CHECK(r.sparse->importance_cv2 == 0.5);
    CHECK(r.sparse->load_cv2 == 0.25);
    CHECK(r.sparse->load == result.sparse.load);
    CHECK(r.sparse->dropped == 3);
    CHECK(r.sparse->dropped_samples == 1);
    REQUIRE(r.mse.has_value());
    CHECK(*r.mse == 1.5);
}
