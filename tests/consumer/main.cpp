// Consumer of the installed moekit package: includes every public header through the umbrella
// header, links moekit::moekit and exercises a few public functions against hand-computed truths.
// Exit status 0 on success, 1 on a wrong value.
#include <moekit/moekit.hpp>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <numbers>

namespace {

bool check(bool ok, const char* what) {
    if (!ok) std::cerr << "consumer: FAILED: " << what << '\n';
    return ok;
}

} // namespace

int main() {
    bool ok = true;

    // log(1 + 2 + 3) = log 6.
    moekit::Vector v(3);
    v << std::log(1.0), std::log(2.0), std::log(3.0);
    ok &= check(std::abs(moekit::log_sum_exp(v) - std::log(6.0)) < 1e-12, "log_sum_exp");

    // Derived seeds are deterministic and differ between streams.
    ok &= check(moekit::derive_seed(7, 0) == moekit::derive_seed(7, 0), "derive_seed repeatable");
    ok &= check(moekit::derive_seed(7, 0) != moekit::derive_seed(7, 1), "derive_seed streams");

    // Two well separated groups of four 1-D points.
    moekit::Matrix y(8, 1);
    y << 0.0, 0.1, -0.1, 0.2, 5.0, 5.1, 4.9, 5.2;
    const moekit::Dataset data = moekit::make_dataset(y);
    ok &= check(data.n_samples() == 8 && data.n_outputs() == 1, "make_dataset shape");
    ok &= check(data.total_weight() == 8.0, "make_dataset unit weights");

    moekit::FitOptions options;
    options.n_experts = 2;
    options.seed = 1;
    const moekit::FitResult result = moekit::fit(data, options);
    std::cout << "consumer: log-likelihood " << result.log_likelihood << " after "
              << result.iterations << " iterations\n";
    ok &= check(std::isfinite(result.log_likelihood), "finite log-likelihood");

    // A single Gaussian (maximum likelihood): log L = −n/2 (log(2π σ²) + 1), σ² = mean squared
    // deviation. The two-expert mixture must do better.
    const double mean = y.mean();
    const double var = (y.array() - mean).square().mean();
    const double single = -4.0 * (std::log(2.0 * std::numbers::pi * var) + 1.0);
    ok &= check(result.log_likelihood > single, "mixture beats a single Gaussian");

    // Each group gets half the weight.
    const moekit::Matrix g = moekit::gate_probabilities(result.model, data);
    ok &= check(g.rows() == 8 && g.cols() == 2, "gate_probabilities shape");
    ok &=
        check(std::abs(g(0, 0) - 0.5) < 1e-3 && std::abs(g(0, 1) - 0.5) < 1e-3, "gate weights 1/2");

    if (!ok) return EXIT_FAILURE;
    std::cout << "consumer: OK\n";
    return EXIT_SUCCESS;
}
