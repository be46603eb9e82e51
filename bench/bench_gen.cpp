// bench_gen: writes one benchmark case (data and starting model, see bench_io.hpp), drawn with
// moekit::simulate from a fixed-seed random truth.
//
// Usage:
//   bench_gen gmm <n> <D> <K> <seed> <prefix>
//       Gaussian mixture: K components, means N(0, 2²) per coordinate, covariances
//       A Aᵀ/D + 0.3 I (A standard normal), weights ∝ 1..K. Start: K distinct random samples
//       as means, the data covariance for every component, equal weights.
//   bench_gen reg <n> <d> <K> <seed> <prefix> <constant|softmax>
//       Linear experts y = (1, x) β_k + σ_k ε, x standard normal, β_k entries N(0, 2²),
//       σ_k = 0.5 + 0.25 k; the truth's gate is softmax with N(0, 1) coefficients on z = x, or
//       constant with weights ∝ 1..K. Start: the pooled least-squares fit plus N(0, 1) noise
//       per coefficient, the pooled residual variance, a uniform gate (V = 0).

#include "bench_io.hpp"

#include "moekit/rng.hpp"
#include "moekit/simulate.hpp"

#include <algorithm>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace {

using moekit::Index;
using moekit::Matrix;
using moekit::Vector;

Matrix normal_matrix(Index r, Index c, double sd, moekit::Rng& rng) {
    Matrix m(r, c);
    for (Index j = 0; j < c; ++j)
        for (Index i = 0; i < r; ++i) m(i, j) = sd * moekit::standard_normal(rng);
    return m;
}

Vector increasing_weights(Index K) {
    Vector w = Vector::LinSpaced(K, 1.0, static_cast<double>(K));
    return w / w.sum();
}

int make_gmm(Index n, Index D, Index K, std::uint64_t seed, const std::string& prefix) {
    moekit::Rng rng(seed);
    moekit::Model truth;
    truth.gate = moekit::ConstantGate{increasing_weights(K)};
    truth.experts.kind = moekit::ExpertKind::Gaussian;
    truth.experts.covariance_type = moekit::CovarianceType::Full;
    for (Index k = 0; k < K; ++k) {
        truth.experts.coefficients.push_back(normal_matrix(1, D, 2.0, rng));
        const Matrix a = normal_matrix(D, D, 1.0, rng);
        const Matrix s = a * a.transpose() / static_cast<double>(D) + 0.3 * Matrix::Identity(D, D);
        truth.experts.covariances.push_back(moekit::factor_or_throw(s, "bench_gen", "a covariance"));
    }
    for (Index j = 0; j < D; ++j) truth.target_names.push_back("y" + std::to_string(j + 1));
    const moekit::Simulation sim = moekit::simulate(truth, n, rng);
    const Matrix& y = sim.data.y;
    bench::write_bin(prefix + ".bin", y);

    std::vector<Index> picked;
    while (static_cast<Index>(picked.size()) < K) {
        const auto i = static_cast<Index>(moekit::uniform_index(rng, static_cast<std::uint64_t>(n)));
        if (std::find(picked.begin(), picked.end(), i) == picked.end()) picked.push_back(i);
    }
    const moekit::RowVector mean = y.colwise().mean();
    const Matrix centred = y.rowwise() - mean;
    const Matrix cov = centred.transpose() * centred / static_cast<double>(n);
    std::ofstream out(prefix + ".start");
    out << "gmm " << K << ' ' << D << '\n';
    bench::write_rows(out, Matrix::Constant(1, K, 1.0 / static_cast<double>(K)));
    for (Index k : picked) bench::write_rows(out, y.row(k));
    for (Index k = 0; k < K; ++k) bench::write_rows(out, cov);
    return out.good() ? 0 : 1;
}

int make_reg(Index n, Index d, Index K, std::uint64_t seed, const std::string& prefix, bool softmax) {
    moekit::Rng rng(seed);
    moekit::Dataset inputs;
    inputs.x = normal_matrix(n, d, 1.0, rng);
    inputs.z = inputs.x;
    inputs.weights = Vector::Ones(n);
    moekit::Model truth;
    if (softmax) {
        Matrix v = normal_matrix(d + 1, K, 1.0, rng);
        v.col(0).setZero();
        truth.gate = moekit::SoftmaxGate{v};
        for (Index j = 0; j < d; ++j) truth.gate_input_names.push_back("x" + std::to_string(j + 1));
    } else {
        inputs.z.resize(n, 0);
        truth.gate = moekit::ConstantGate{increasing_weights(K)};
    }
    truth.experts.kind = moekit::ExpertKind::Linear;
    truth.experts.covariance_type = moekit::CovarianceType::Full;
    for (Index k = 0; k < K; ++k) {
        truth.experts.coefficients.push_back(normal_matrix(d + 1, 1, 2.0, rng));
        const double sd = 0.5 + 0.25 * static_cast<double>(k);
        truth.experts.covariances.push_back(
            moekit::factor_or_throw(Matrix::Constant(1, 1, sd * sd), "bench_gen", "a variance"));
    }
    truth.target_names = {"y"};
    for (Index j = 0; j < d; ++j) truth.input_names.push_back("x" + std::to_string(j + 1));
    const moekit::Simulation sim = moekit::simulate(truth, inputs, rng);
    Matrix all(n, d + 1);
    all.col(0) = sim.data.y.col(0);
    all.rightCols(d) = inputs.x;
    bench::write_bin(prefix + ".bin", all);

    Matrix design(n, d + 1);
    design.col(0).setOnes();
    design.rightCols(d) = inputs.x;
    const Matrix pooled = design.colPivHouseholderQr().solve(sim.data.y);
    const double variance = (sim.data.y - design * pooled).squaredNorm() / static_cast<double>(n);
    std::ofstream out(prefix + ".start");
    out << "reg " << K << ' ' << d << '\n';
    bench::write_rows(out, Matrix::Zero(d + 1, K));
    for (Index k = 0; k < K; ++k)
        bench::write_rows(out, (pooled + normal_matrix(d + 1, 1, 1.0, rng)).transpose());
    bench::write_rows(out, Matrix::Constant(1, K, variance));
    return out.good() ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    try {
        const std::vector<std::string> a(argv + 1, argv + argc);
        if (a.size() == 6 && a[0] == "gmm")
            return make_gmm(std::stol(a[1]), std::stol(a[2]), std::stol(a[3]), std::stoull(a[4]), a[5]);
        if (a.size() == 7 && a[0] == "reg" && (a[6] == "constant" || a[6] == "softmax"))
            return make_reg(std::stol(a[1]),
                            std::stol(a[2]),
                            std::stol(a[3]),
                            std::stoull(a[4]),
                            a[5],
                            a[6] == "softmax");
        std::cerr << "usage: bench_gen gmm <n> <D> <K> <seed> <prefix>\n"
                     "       bench_gen reg <n> <d> <K> <seed> <prefix> <constant|softmax>\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "bench_gen: " << e.what() << '\n';
        return 1;
    }
}
