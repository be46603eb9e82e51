// arma_gmm: the Armadillo peer of moekit_em_bench. Fixed-iteration EM with arma::gmm_full or
// arma::gmm_diag from the start in <prefix>.start (seed mode keep_existing, km_iter = 0),
// timed. Built by bench/run_benchmarks.sh (not by the main build):
//   g++ -std=c++17 -O3 -march=native -fopenmp bench/arma_gmm.cpp -o arma_gmm -larmadillo
//
// Usage: arma_gmm <prefix> <n> <full|diag> <iterations>
// Prints: armadillo threads=T iterations=N seconds=S seconds_per_iteration=S/N
//         cpu_seconds_per_iteration=C/N loglik=L
// (seconds: wall time of learn(); loglik: sum_log_p of the final model on the data).
// Armadillo stops early only if the mean log-likelihood changes by <= machine epsilon, which
// does not happen in the few iterations the benchmark runs.

#include <armadillo>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

int main(int argc, char** argv) {
    if (argc != 5) {
        std::cerr << "usage: arma_gmm <prefix> <n> <full|diag> <iterations>\n";
        return 2;
    }
    const std::string prefix = argv[1];
    const arma::uword n = std::stoul(argv[2]);
    const std::string type = argv[3];
    const arma::uword iterations = std::stoul(argv[4]);

    std::ifstream start(prefix + ".start");
    std::string kind;
    arma::uword K = 0;
    arma::uword D = 0;
    if (!(start >> kind >> K >> D) || kind != "gmm") {
        std::cerr << "arma_gmm: " << prefix << ".start is not a gmm case\n";
        return 1;
    }
    arma::rowvec hefts(K);
    arma::mat means(D, K);
    arma::cube fcovs(D, D, K);
    for (arma::uword k = 0; k < K; ++k) start >> hefts(k);
    for (arma::uword k = 0; k < K; ++k)
        for (arma::uword j = 0; j < D; ++j) start >> means(j, k);
    for (arma::uword k = 0; k < K; ++k)
        for (arma::uword i = 0; i < D; ++i)
            for (arma::uword j = 0; j < D; ++j) start >> fcovs(i, j, k);
    if (!start) {
        std::cerr << "arma_gmm: " << prefix << ".start: too few numbers\n";
        return 1;
    }

    // The data file is row-major n×D: exactly Armadillo's column-major D×n (one sample per
    // column).
    arma::mat X(D, n);
    std::FILE* f = std::fopen((prefix + ".bin").c_str(), "rb");
    if (!f || std::fread(X.memptr(), sizeof(double), n * D, f) != n * D) {
        std::cerr << "arma_gmm: cannot read " << prefix << ".bin\n";
        return 1;
    }
    std::fclose(f);

    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    // No regularisation: var_floor 0 means Armadillo's smallest positive double.
    const double var_floor = 0.0;
    double loglik = 0.0;
    bool ok = false;
    const std::clock_t c0 = std::clock();
    const auto t0 = std::chrono::steady_clock::now();
    if (type == "full") {
        arma::gmm_full model;
        model.set_params(means, fcovs, hefts);
        ok = model.learn(X, K, arma::eucl_dist, arma::keep_existing, 0, iterations, var_floor, false);
        const auto t1 = std::chrono::steady_clock::now();
        const std::clock_t c1 = std::clock();
        loglik = model.sum_log_p(X);
        const double s = std::chrono::duration<double>(t1 - t0).count();
        const double c = static_cast<double>(c1 - c0) / CLOCKS_PER_SEC;
        std::printf("armadillo threads=%d iterations=%llu seconds=%.6f seconds_per_iteration=%.6f "
                    "cpu_seconds_per_iteration=%.6f loglik=%.12g\n",
                    threads,
                    static_cast<unsigned long long>(iterations),
                    s,
                    s / static_cast<double>(iterations),
                    c / static_cast<double>(iterations),
                    loglik);
    } else if (type == "diag") {
        arma::mat dcovs(D, K);
        for (arma::uword k = 0; k < K; ++k) dcovs.col(k) = fcovs.slice(k).diag();
        arma::gmm_diag model;
        model.set_params(means, dcovs, hefts);
        ok = model.learn(X, K, arma::eucl_dist, arma::keep_existing, 0, iterations, var_floor, false);
        const auto t1 = std::chrono::steady_clock::now();
        const std::clock_t c1 = std::clock();
        loglik = model.sum_log_p(X);
        const double s = std::chrono::duration<double>(t1 - t0).count();
        const double c = static_cast<double>(c1 - c0) / CLOCKS_PER_SEC;
        std::printf("armadillo threads=%d iterations=%llu seconds=%.6f seconds_per_iteration=%.6f "
                    "cpu_seconds_per_iteration=%.6f loglik=%.12g\n",
                    threads,
                    static_cast<unsigned long long>(iterations),
                    s,
                    s / static_cast<double>(iterations),
                    c / static_cast<double>(iterations),
                    loglik);
    } else {
        std::cerr << "arma_gmm: covariance must be full or diag\n";
        return 2;
    }
    if (!ok) {
        std::cerr << "arma_gmm: learn() failed\n";
        return 1;
    }
    return 0;
}
