// kernels_bench: Google Benchmark micro-benchmarks of the EM kernels and of the machine's
// practical peak double-precision FLOP rate.
//
// Each benchmark reports `FLOPS` (a rate counter): the FLOPs counted as described at each
// benchmark divided by the time. The E-step of a Gaussian mixture with full covariances is
// counted as the useful work of the forward substitution and the squared norm, per sample
// and expert: D (residual y − μ) + D(D−1) (the D(D−1)/2 multiply-adds of L⁻¹r) + D (scaling
// by 1/L_jj) + 2D (Σ z_j²) = D² + 3D; the log-sum-exp and the exponentials are not counted.
// The thread count is OpenMP's (OMP_NUM_THREADS).
//
// Peak: BM_peak_fma runs independent FMA chains on 4-wide vectors (the instruction-level
// ceiling of one core: 2 FMA units × 4 doubles × 2 FLOPs per cycle on AVX2 machines);
// BM_peak_gemm multiplies two 1024×1024 matrices with Eigen (2·1024³ FLOPs), the practical
// peak of a tuned kernel.

#include "moekit/experts.hpp"
#include "moekit/gates.hpp"
#include "moekit/model.hpp"
#include "moekit/rng.hpp"

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using moekit::Index;
using moekit::Matrix;
using moekit::Vector;

int threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

Matrix normal_matrix(Index r, Index c, moekit::Rng& rng) {
    Matrix m(r, c);
    for (Index j = 0; j < c; ++j)
        for (Index i = 0; i < r; ++i) m(i, j) = moekit::standard_normal(rng);
    return m;
}

/// A Gaussian mixture with K experts in dimension D and n samples of data (standard normal
/// data; the model's means are random and its covariances random SPD).
struct GmmFixture {
    moekit::Dataset data;
    moekit::Model model;
    Matrix resp;

    GmmFixture(Index n, Index D, Index K, moekit::CovarianceType type) {
        moekit::Rng rng(42);
        data = moekit::make_dataset(normal_matrix(n, D, rng));
        model.gate = moekit::ConstantGate{Vector::Constant(K, 1.0 / static_cast<double>(K))};
        model.experts.kind = moekit::ExpertKind::Gaussian;
        model.experts.covariance_type = type;
        model.target_names = data.target_names;
        for (Index k = 0; k < K; ++k) {
            model.experts.coefficients.push_back(normal_matrix(1, D, rng));
            const Matrix a = normal_matrix(D, D, rng);
            Matrix s = a * a.transpose() / static_cast<double>(D) + Matrix::Identity(D, D);
            if (type != moekit::CovarianceType::Full) s = Matrix(s.diagonal().asDiagonal());
            model.experts.covariances.push_back(moekit::factor_or_throw(s, "bench", "covariance"));
        }
        resp = moekit::e_step(model, data).log_resp.array().exp().matrix();
    }
};

/// Linear experts with a softmax gate on z = x: n samples, d inputs, K experts.
struct MoeFixture {
    moekit::Dataset data;
    moekit::Model model;
    Matrix resp;
    Matrix design;

    MoeFixture(Index n, Index d, Index K) {
        moekit::Rng rng(43);
        const Matrix x = normal_matrix(n, d, rng);
        const Matrix y = normal_matrix(n, 1, rng) + x.rowwise().sum();
        data = moekit::make_dataset(y, x, x);
        Matrix v = 0.3 * normal_matrix(d + 1, K, rng);
        v.col(0).setZero();
        model.gate = moekit::SoftmaxGate{v};
        model.experts.kind = moekit::ExpertKind::Linear;
        model.experts.covariance_type = moekit::CovarianceType::Full;
        model.target_names = data.target_names;
        model.input_names = data.input_names;
        model.gate_input_names = data.gate_input_names;
        for (Index k = 0; k < K; ++k) {
            model.experts.coefficients.push_back(normal_matrix(d + 1, 1, rng));
            model.experts.covariances.push_back(
                moekit::factor_or_throw(Matrix::Constant(1, 1, 1.0 + static_cast<double>(k)), "bench", "variance"));
        }
        resp = moekit::e_step(model, data).log_resp.array().exp().matrix();
        design = moekit::gate_design(data);
    }
};

moekit::CovarianceType type_of(std::int64_t code) {
    return code == 0 ? moekit::CovarianceType::Full : moekit::CovarianceType::Diag;
}

void set_rate(benchmark::State& state, double flops_per_call) {
    state.counters["FLOPS"] = benchmark::Counter(
        flops_per_call * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
    state.counters["threads"] = threads();
}

/// E-step (e_step into reused storage: log densities, gate, log-softmax) of a Gaussian
/// mixture. Arguments: n, D, K, covariance (0 full, 1 diag).
void BM_e_step_gmm(benchmark::State& state) {
    const Index n = state.range(0);
    const Index D = state.range(1);
    const Index K = state.range(2);
    const GmmFixture f(n, D, K, type_of(state.range(3)));
    moekit::Responsibilities r;
    moekit::e_step(f.model, f.data, r);
    for (auto _ : state) {
        moekit::e_step(f.model, f.data, r);
        benchmark::DoNotOptimize(r.log_norm.data());
    }
    const double per_sample =
        state.range(3) == 0 ? static_cast<double>(D * D + 3 * D) : static_cast<double>(4 * D);
    set_rate(state, per_sample * static_cast<double>(n * K));
}

/// Expert log densities alone (expert_log_densities; allocates its n×K result every call).
void BM_log_densities_gmm(benchmark::State& state) {
    const Index n = state.range(0);
    const Index D = state.range(1);
    const Index K = state.range(2);
    const GmmFixture f(n, D, K, type_of(state.range(3)));
    for (auto _ : state) {
        Matrix out = moekit::expert_log_densities(f.model.experts, f.data);
        benchmark::DoNotOptimize(out.data());
    }
    const double per_sample =
        state.range(3) == 0 ? static_cast<double>(D * D + 3 * D) : static_cast<double>(4 * D);
    set_rate(state, per_sample * static_cast<double>(n * K));
}

/// The density kernel alone: log_normal_density of one sample block (4096 rows, in L2) of
/// standard normal residuals under a random SPD covariance (diagonal if `diag`). FLOPs as
/// the E-step: D² + 3D per sample for full, 4D for diag. Arguments: n, D, diag.
void BM_normal_density(benchmark::State& state) {
    const Index n = state.range(0);
    const Index D = state.range(1);
    moekit::Rng rng(44);
    const Matrix r = normal_matrix(n, D, rng);
    const Matrix a = normal_matrix(D, D, rng);
    Matrix s = a * a.transpose() / static_cast<double>(D) + Matrix::Identity(D, D);
    if (state.range(2) != 0) s = Matrix(s.diagonal().asDiagonal());
    const moekit::CovarianceFactor f = moekit::factor_or_throw(s, "bench", "covariance");
    for (auto _ : state) {
        Vector out = moekit::log_normal_density(r, f);
        benchmark::DoNotOptimize(out.data());
    }
    const double per_sample =
        state.range(2) == 0 ? static_cast<double>(D * D + 3 * D) : static_cast<double>(4 * D);
    set_rate(state, per_sample * static_cast<double>(n));
}

/// Expert M-step (update_experts) of a Gaussian mixture: weighted means and weighted scatter.
/// FLOPs counted: per sample and expert 2D (means) + D (residual) + D(D+1) (the D(D+1)/2
/// multiply-adds of the symmetric scatter) for full, 2D + D + 2D for diag.
void BM_m_step_gmm(benchmark::State& state) {
    const Index n = state.range(0);
    const Index D = state.range(1);
    const Index K = state.range(2);
    const GmmFixture f(n, D, K, type_of(state.range(3)));
    moekit::ExpertRegularization reg;
    reg.scale = moekit::target_scale(f.data);
    for (auto _ : state) {
        moekit::Experts e = f.model.experts;
        moekit::ExpertUpdateReport report = moekit::update_experts(e, f.data, f.resp, reg);
        benchmark::DoNotOptimize(e.coefficients.data());
        benchmark::DoNotOptimize(report.kept.data());
    }
    const double per_sample = state.range(3) == 0 ? static_cast<double>(3 * D + D * (D + 1))
                                                  : static_cast<double>(5 * D);
    set_rate(state, per_sample * static_cast<double>(n * K));
}

/// E-step of linear experts with a softmax gate. Arguments: n, d, K.
void BM_e_step_moe(benchmark::State& state) {
    const MoeFixture f(state.range(0), state.range(1), state.range(2));
    moekit::Responsibilities r;
    moekit::e_step(f.model, f.data, r);
    for (auto _ : state) {
        moekit::e_step(f.model, f.data, r);
        benchmark::DoNotOptimize(r.log_norm.data());
    }
    set_rate(state, 0.0);
}

/// Expert M-step of linear experts (weighted least squares + residual variance).
void BM_m_step_moe(benchmark::State& state) {
    const MoeFixture f(state.range(0), state.range(1), state.range(2));
    moekit::ExpertRegularization reg;
    reg.scale = moekit::target_scale(f.data);
    for (auto _ : state) {
        moekit::Experts e = f.model.experts;
        moekit::ExpertUpdateReport report = moekit::update_experts(e, f.data, f.resp, reg);
        benchmark::DoNotOptimize(e.coefficients.data());
        benchmark::DoNotOptimize(report.kept.data());
    }
    set_rate(state, 0.0);
}

/// Softmax gate objective with gradient and Hessian (one IRLS step's assembly).
void BM_gate_objective(benchmark::State& state) {
    const MoeFixture f(state.range(0), state.range(1), state.range(2));
    const auto& gate = std::get<moekit::SoftmaxGate>(f.model.gate);
    Vector gradient;
    Matrix hessian;
    for (auto _ : state) {
        const double value = moekit::softmax_gate_objective(
            gate, f.design, f.data.weights, f.resp, 1e-8, &gradient, &hessian);
        benchmark::DoNotOptimize(value);
        benchmark::DoNotOptimize(hessian.data());
    }
    set_rate(state, 0.0);
}

/// Whole gate M-step (update_gate: IRLS with line search).
void BM_gate_update(benchmark::State& state) {
    const MoeFixture f(state.range(0), state.range(1), state.range(2));
    const moekit::GateOptions options;
    for (auto _ : state) {
        moekit::Gate gate = f.model.gate;
        const moekit::GateUpdateReport report = moekit::update_gate(gate, f.data, f.resp, options);
        benchmark::DoNotOptimize(report.objective);
    }
    set_rate(state, 0.0);
}

/// Independent FMA chains on 4-wide vectors: the per-core instruction ceiling. Runs on every
/// OpenMP thread at once, so the rate is the machine's peak for that thread count.
void BM_peak_fma(benchmark::State& state) {
    constexpr int chains = 12;
    constexpr int width = 4;
    constexpr long steps = 1 << 20;
    double sink = 0.0;
    for (auto _ : state) {
#pragma omp parallel reduction(+ : sink)
        {
            alignas(64) double acc[chains][width];
            for (int c = 0; c < chains; ++c)
                for (int w = 0; w < width; ++w) acc[c][w] = 1.0 + 1e-3 * (c + w);
            const double a = 0.999999;
            const double b = 1e-7;
            for (long s = 0; s < steps; ++s)
                for (int c = 0; c < chains; ++c)
#pragma omp simd
                    for (int w = 0; w < width; ++w) acc[c][w] = acc[c][w] * a + b;
            for (int c = 0; c < chains; ++c)
                for (int w = 0; w < width; ++w) sink += acc[c][w];
        }
        benchmark::DoNotOptimize(sink);
    }
    set_rate(state, 2.0 * chains * width * static_cast<double>(steps) * threads());
}

/// Eigen GEMM of two 1024×1024 matrices: the practical peak of a tuned kernel.
void BM_peak_gemm(benchmark::State& state) {
    const Index m = state.range(0);
    moekit::Rng rng(7);
    const Matrix a = normal_matrix(m, m, rng);
    const Matrix b = normal_matrix(m, m, rng);
    Matrix c(m, m);
    for (auto _ : state) {
        c.noalias() = a * b;
        benchmark::DoNotOptimize(c.data());
    }
    set_rate(state, 2.0 * static_cast<double>(m) * static_cast<double>(m) * static_cast<double>(m));
}

void gmm_args(benchmark::internal::Benchmark* b) {
    b->ArgNames({"n", "D", "K", "diag"});
    for (std::int64_t diag : {0, 1})
        for (std::int64_t D : {2, 10}) b->Args({1000000, D, 5, diag});
    b->Args({1000000, 10, 10, 0}); // linear in K
    b->Args({500000, 10, 5, 0});   // linear in n
    b->Args({1000000, 20, 5, 0});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void density_args(benchmark::internal::Benchmark* b) {
    b->ArgNames({"n", "D", "diag"});
    for (std::int64_t diag : {0, 1})
        for (std::int64_t D : {2, 3, 5, 7, 10, 13, 16, 20, 33}) b->Args({4096, D, diag});
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

void moe_args(benchmark::internal::Benchmark* b) {
    b->ArgNames({"n", "d", "K"});
    b->Args({1000000, 5, 4});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

} // namespace

BENCHMARK(BM_peak_fma)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_peak_gemm)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_e_step_gmm)->Apply(gmm_args);
BENCHMARK(BM_log_densities_gmm)->Apply(gmm_args);
BENCHMARK(BM_normal_density)->Apply(density_args);
BENCHMARK(BM_m_step_gmm)->Apply(gmm_args);
BENCHMARK(BM_e_step_moe)->Apply(moe_args);
BENCHMARK(BM_m_step_moe)->Apply(moe_args);
BENCHMARK(BM_gate_objective)->Apply(moe_args);
BENCHMARK(BM_gate_update)->Apply(moe_args);

BENCHMARK_MAIN();
