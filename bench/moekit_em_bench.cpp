// moekit_em_bench: fixed-iteration EM from a given start (a case written by bench_gen), timed.
//
// Usage: moekit_em_bench <prefix> <n> <full|diag|spherical|tied> <constant|softmax|tree> <iterations>
//
// The gate `tree` is a hierarchical mixture of experts (HME): a balanced binary tree over the K
// experts of a regression case (K = 4: the 2x2 HME), every node starting uniform.
//
// Runs moekit::fit_em with max_iter = iterations and tol = 0 (every iteration runs),
// reg_covar = 0 (as the peers are run without regularisation), from the model in
// <prefix>.start. The thread count is OpenMP's (OMP_NUM_THREADS). Prints one line:
//   moekit threads=T iterations=N seconds=S seconds_per_iteration=S/N
//          cpu_seconds_per_iteration=C/N loglik=L
// where seconds is the wall time of fit_em (the initial E-step plus N EM iterations, data
// loading excluded), C the process CPU time over the same span (all threads), and loglik the
// log-likelihood of the final model.

#include "bench_io.hpp"

#include "moekit/fit.hpp"
#include "moekit/gates.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <stdexcept>
#include <iostream>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using moekit::Index;
using moekit::Matrix;
using moekit::Vector;

struct Case {
    moekit::Dataset data;
    moekit::Model start;
    moekit::FitOptions options;
};

Case load_case(const std::string& prefix, Index n, moekit::CovarianceType type, moekit::GateKind gate) {
    std::ifstream in(prefix + ".start");
    std::string kind;
    Index K = 0;
    Index c = 0;
    if (!(in >> kind >> K >> c)) throw std::runtime_error(prefix + ".start: bad header");
    Case out;
    out.options.n_experts = K;
    out.options.covariance = type;
    out.options.gate = gate;
    if (kind == "gmm") {
        out.data = moekit::make_dataset(bench::read_bin(prefix + ".bin", n, c)); // no second copy
        const Matrix w = bench::read_rows(in, 1, K);
        const Matrix means = bench::read_rows(in, K, c);
        out.start.gate = moekit::ConstantGate{w.row(0).transpose()};
        out.start.experts.kind = moekit::ExpertKind::Gaussian;
        for (Index k = 0; k < K; ++k) {
            out.start.experts.coefficients.push_back(means.row(k));
            Matrix s = bench::read_rows(in, c, c);
            if (type == moekit::CovarianceType::Diag) s = Matrix(s.diagonal().asDiagonal());
            if (type == moekit::CovarianceType::Spherical)
                s = s.diagonal().mean() * Matrix::Identity(c, c);
            out.start.experts.covariances.push_back(moekit::factor_or_throw(s, "bench", "start"));
        }
    } else if (kind == "reg") {
        const Matrix all = bench::read_bin(prefix + ".bin", n, c + 1);
        out.data = gate != moekit::GateKind::Constant
                       ? moekit::make_dataset(all.leftCols(1), all.rightCols(c), all.rightCols(c))
                       : moekit::make_dataset(all.leftCols(1), all.rightCols(c));
        out.options.expert = moekit::ExpertKind::Linear;
        const Matrix v = bench::read_rows(in, c + 1, K);
        const Matrix beta = bench::read_rows(in, K, c + 1);
        const Matrix s2 = bench::read_rows(in, 1, K);
        if (gate == moekit::GateKind::Softmax) {
            out.start.gate = moekit::SoftmaxGate{v};
            out.start.gate_input_names = out.data.gate_input_names;
        } else if (gate == moekit::GateKind::Tree) {
            // HME: a balanced binary tree over the K = 2^levels experts, every node starting
            // uniform (V = 0), like the softmax start.
            Index levels = 0;
            while ((Index{1} << levels) < K) ++levels;
            if ((Index{1} << levels) != K) throw std::runtime_error("tree gate: K must be a power of 2");
            out.options.tree.assign(static_cast<std::size_t>(levels), 2);
            out.start.gate = moekit::make_tree_gate(out.options.tree, c);
            out.start.gate_input_names = out.data.gate_input_names;
        } else {
            out.start.gate = moekit::ConstantGate{Vector::Constant(K, 1.0 / static_cast<double>(K))};
        }
        out.start.experts.kind = moekit::ExpertKind::Linear;
        for (Index k = 0; k < K; ++k) {
            out.start.experts.coefficients.push_back(beta.row(k).transpose());
            out.start.experts.covariances.push_back(
                moekit::factor_or_throw(Matrix::Constant(1, 1, s2(0, k)), "bench", "start"));
        }
        out.start.input_names = out.data.input_names;
    } else {
        throw std::runtime_error(prefix + ".start: unknown kind " + kind);
    }
    out.start.experts.covariance_type = type;
    out.start.target_names = out.data.target_names;
    return out;
}

} // namespace

int main(int argc, char** argv) {
    try {
        if (argc != 6) {
            std::cerr << "usage: moekit_em_bench <prefix> <n> <full|diag|spherical|tied> "
                         "<constant|softmax|tree> <iterations>\n";
            return 2;
        }
        const std::string prefix = argv[1];
        const Index n = std::stol(argv[2]);
        const moekit::CovarianceType type = moekit::parse_covariance_type(argv[3]);
        const moekit::GateKind gate = moekit::parse_gate_kind(argv[4]);
        const int iterations = std::stoi(argv[5]);
        Case c = load_case(prefix, n, type, gate);
        c.options.max_iter = iterations;
        c.options.tol = 0.0;
        c.options.regularization.reg_covar = 0.0;
        c.options.regularization.scale = moekit::target_scale(c.data);
        moekit::validate(c.start, "moekit_em_bench");
        int threads = 1;
#ifdef _OPENMP
        threads = omp_get_max_threads();
#endif
        const std::clock_t c0 = std::clock();
        const auto t0 = std::chrono::steady_clock::now();
        const moekit::FitResult r = moekit::fit_em(c.data, c.start, c.options);
        const auto t1 = std::chrono::steady_clock::now();
        const std::clock_t c1 = std::clock();
        const double seconds = std::chrono::duration<double>(t1 - t0).count();
        const double cpu = static_cast<double>(c1 - c0) / CLOCKS_PER_SEC;
        std::printf("moekit threads=%d iterations=%d seconds=%.6f seconds_per_iteration=%.6f "
                    "cpu_seconds_per_iteration=%.6f loglik=%.12g\n",
                    threads,
                    r.iterations,
                    seconds,
                    seconds / r.iterations,
                    cpu / r.iterations,
                    r.log_likelihood);
        for (const auto& item : r.interventions)
            std::fprintf(stderr, "intervention: %s\n", item.message.c_str());
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "moekit_em_bench: " << e.what() << '\n';
        return 1;
    }
}
