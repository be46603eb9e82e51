// Thread-count invariance (docs/performance.md): the E-step and M-step kernels run over a fixed
// partition of the samples into blocks of 4096 rows, and every sum over samples adds the block
// partials in block order, so a fit is bit-identical for any number of OpenMP threads.
//
// Truth used here: the model file (model_to_json with the fit record: parameters, trace,
// log-likelihoods, all written in shortest round-trip form) of a fit with 1 thread must equal,
// byte for byte, the one of the same fit with 2 threads. The data sets have 3 × 4096 + 517
// rows, so every pass spans several blocks, including a partial last one.

#include "moekit/fit.hpp"
#include "moekit/model_io.hpp"
#include "moekit/simulate.hpp"

#include "support/thread_count.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

using moekit::CovarianceType;
using moekit::ExpertKind;
using moekit::FitOptions;
using moekit::GateKind;
using moekit::Index;
using moekit::Matrix;
using moekit::Model;
using moekit::Vector;

namespace {

constexpr Index n_rows = 3 * 4096 + 517;

using moekit_test::ThreadCount;

moekit::CovarianceFactor factor(const Matrix& s) {
    const auto f = moekit::try_factor(s);
    REQUIRE(f.has_value());
    return *f;
}

/// Three overlapping Gaussian clusters in 3-D (overlap keeps the responsibilities soft, so
/// every sum mixes many samples).
moekit::Dataset gaussian_data() {
    Model truth;
    truth.gate = moekit::ConstantGate{(Vector(3) << 0.3, 0.3, 0.4).finished()};
    truth.experts.kind = ExpertKind::Gaussian;
    truth.experts.covariance_type = CovarianceType::Full;
    truth.experts.coefficients = {(Matrix(1, 3) << 0.0, 0.0, 0.0).finished(),
                                  (Matrix(1, 3) << 2.0, 1.0, 0.0).finished(),
                                  (Matrix(1, 3) << 0.0, 2.0, 1.5).finished()};
    const Matrix a = (Matrix(3, 3) << 1.0, 0.3, 0.1, 0.3, 0.8, -0.2, 0.1, -0.2, 1.2).finished();
    truth.experts.covariances = {factor(a), factor(0.5 * a + 0.2 * Matrix::Identity(3, 3)), factor(Matrix::Identity(3, 3))};
    truth.target_names = {"y1", "y2", "y3"};
    moekit::Rng rng(8101);
    return moekit::simulate(truth, n_rows, rng).data;
}

/// Two linear regimes in y on x = (x1, x2), switched by a softmax gate on z = x.
moekit::Dataset moe_data() {
    moekit::Rng rng(8102);
    Matrix x(n_rows, 2);
    for (Index j = 0; j < 2; ++j)
        for (Index i = 0; i < n_rows; ++i) x(i, j) = moekit::standard_normal(rng);
    Model truth;
    truth.gate = moekit::SoftmaxGate{(Matrix(3, 2) << 0.0, 0.2, 0.0, 1.5, 0.0, -1.0).finished()};
    truth.experts.kind = ExpertKind::Linear;
    truth.experts.covariance_type = CovarianceType::Full;
    truth.experts.coefficients = {(Matrix(3, 1) << 1.0, 2.0, -1.0).finished(),
                                  (Matrix(3, 1) << -1.0, 0.5, 1.0).finished()};
    truth.experts.covariances = {factor(Matrix::Constant(1, 1, 0.5)), factor(Matrix::Constant(1, 1, 1.0))};
    truth.target_names = {"y"};
    truth.input_names = {"x1", "x2"};
    truth.gate_input_names = {"x1", "x2"};
    const moekit::Dataset inputs = moekit::make_dataset(Matrix(n_rows, 0), x, x);
    moekit::Dataset data = moekit::simulate(truth, inputs, rng).data;
    data.input_names = {"x1", "x2"};
    data.gate_input_names = {"x1", "x2"};
    return data;
}

/// The model file of a fit run with `threads` OpenMP threads.
std::string fitted_model_file(const moekit::Dataset& data, const FitOptions& options, int threads) {
    const ThreadCount scope(threads);
    const moekit::FitResult result = moekit::fit(data, options);
    REQUIRE(result.iterations >= 5); // enough EM iterations for differences to show
    const moekit::FitRecord record = moekit::make_fit_record(result, options);
    return moekit::model_to_json(result.model, &record);
}

void require_thread_invariant(const moekit::Dataset& data, const FitOptions& options) {
    REQUIRE(data.n_samples() == n_rows);
    const std::string one = fitted_model_file(data, options, 1);
    const std::string two = fitted_model_file(data, options, 2);
    REQUIRE(one == two);
}

} // namespace

TEST_CASE("fits are bit-identical with 1 and 2 threads: Gaussian experts", "[threads]") {
    const moekit::Dataset data = gaussian_data();
    FitOptions options;
    options.n_experts = 3;
    options.max_iter = 25;
    options.restarts = 2;
    options.seed = 5;
    for (CovarianceType type :
         {CovarianceType::Full, CovarianceType::Diag, CovarianceType::Tied, CovarianceType::Spherical}) {
        INFO("covariance " << moekit::to_string(type));
        options.covariance = type;
        require_thread_invariant(data, options);
    }
}

TEST_CASE("fits are bit-identical with 1 and 2 threads: linear experts, softmax gate", "[threads]") {
    const moekit::Dataset data = moe_data();
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.gate = GateKind::Softmax;
    options.n_experts = 2;
    options.max_iter = 25;
    options.seed = 6;
    require_thread_invariant(data, options);
}

TEST_CASE("fits are bit-identical with 1 and 2 threads: linear experts, constant gate", "[threads]") {
    const moekit::Dataset data = moe_data();
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.n_experts = 2;
    options.max_iter = 25;
    options.seed = 7;
    require_thread_invariant(data, options);
}

TEST_CASE("fits are bit-identical with 1 and 2 threads: linear experts, 2x2 tree gate (HME)", "[threads]") {
    const moekit::Dataset data = moe_data();
    FitOptions options;
    options.expert = ExpertKind::Linear;
    options.gate = GateKind::Tree;
    options.tree = {2, 2};
    options.n_experts = 4;
    options.max_iter = 25;
    options.seed = 8;
    require_thread_invariant(data, options);
}
