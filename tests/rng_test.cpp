// Tests of the explicit, seeded randomness (include/moekit/rng.hpp).
// Truths: the published SplitMix64 output sequences, exact reproducibility, and moments and
// frequencies compared with their known values within 4 standard errors (200k draws, fixed
// seeds, so the tests are deterministic).

#include "moekit/rng.hpp"

#include <boost/math/distributions/normal.hpp>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

namespace {

constexpr int n_draws = 200000;

} // namespace

TEST_CASE("derive_seed follows the SplitMix64 sequence", "[rng]") {
    // SplitMix64 (Steele, Lea & Flood 2014; Vigna's splitmix64.c) advances its state by the
    // golden-ratio increment before each output, so stream r of a base seed is the (r+1)-th
    // output of SplitMix64 started at that seed. Published test values:
    //  - state 0: first output 0xE220A8397B1DCDAF;
    //  - state 1234567: 6457827717110365317, 3203168211198807973, 9817491932198370423.
    REQUIRE(moekit::derive_seed(0, 0) == 0xE220A8397B1DCDAFULL);
    REQUIRE(moekit::derive_seed(1234567, 0) == 6457827717110365317ULL);
    REQUIRE(moekit::derive_seed(1234567, 1) == 3203168211198807973ULL);
    REQUIRE(moekit::derive_seed(1234567, 2) == 9817491932198370423ULL);
}

TEST_CASE("derive_seed gives different streams", "[rng]") {
    std::set<std::uint64_t> seeds;
    for (std::uint64_t base : {0ULL, 1ULL, 42ULL})
        for (std::uint64_t stream = 0; stream < 100; ++stream)
            seeds.insert(moekit::derive_seed(base, stream));
    // 300 (base, stream) pairs, 300 distinct seeds.
    REQUIRE(seeds.size() == 300);

    // The streams themselves differ from the first draw on.
    moekit::Rng a(moekit::derive_seed(7, 0));
    moekit::Rng b(moekit::derive_seed(7, 1));
    int equal = 0;
    for (int i = 0; i < 1000; ++i)
        equal += (a() == b()) ? 1 : 0;
    REQUIRE(equal == 0);
    // Deterministic.
    REQUIRE(moekit::derive_seed(7, 3) == moekit::derive_seed(7, 3));
}

TEST_CASE("uniform01 lies in the half-open unit interval with 53-bit resolution and mean 1/2", "[rng]") {
    moekit::Rng rng(123);
    double sum = 0.0;
    double sum_sq = 0.0;
    int out_of_range = 0;
    int not_53_bit = 0;
    for (int i = 0; i < n_draws; ++i) {
        const double u = moekit::uniform01(rng);
        out_of_range += (u >= 0.0 && u < 1.0) ? 0 : 1;
        // 53 random bits: u · 2^53 is an integer.
        const double scaled = std::ldexp(u, 53);
        not_53_bit += (scaled == std::floor(scaled)) ? 0 : 1;
        sum += u;
        sum_sq += u * u;
    }
    REQUIRE(out_of_range == 0);
    REQUIRE(not_53_bit == 0);
    const double mean = sum / n_draws;
    // U(0,1): mean 1/2, variance 1/12, so the standard error of the mean is sqrt(1/12/n).
    REQUIRE(std::fabs(mean - 0.5) < 4.0 * std::sqrt(1.0 / 12.0 / n_draws));
    // E[u²] = 1/3 with variance 1/5 − 1/9 = 4/45.
    REQUIRE(std::fabs(sum_sq / n_draws - 1.0 / 3.0) < 4.0 * std::sqrt(4.0 / 45.0 / n_draws));
}

TEST_CASE("standard_normal has mean 0 and variance 1 within 4 standard errors", "[rng]") {
    moekit::Rng rng(2024);
    std::vector<double> draws(n_draws);
    for (double& d : draws)
        d = moekit::standard_normal(rng);
    double mean = 0.0;
    for (double d : draws)
        mean += d;
    mean /= n_draws;
    double var = 0.0;
    for (double d : draws)
        var += (d - mean) * (d - mean);
    var /= (n_draws - 1);
    // SE(mean) = 1/sqrt(n); SE(sample variance) = sqrt(2/(n−1)) for normal data.
    REQUIRE(std::fabs(mean) < 4.0 / std::sqrt(static_cast<double>(n_draws)));
    REQUIRE(std::fabs(var - 1.0) < 4.0 * std::sqrt(2.0 / (n_draws - 1)));

    // Shape: the fraction below 1 and below −2 matches Φ (Boost.Math) within 4 binomial SEs.
    const boost::math::normal_distribution<double> phi(0.0, 1.0);
    for (double t : {-2.0, 0.0, 1.0}) {
        const double p = boost::math::cdf(phi, t);
        double below = 0.0;
        for (double d : draws)
            below += (d < t) ? 1.0 : 0.0;
        below /= n_draws;
        INFO("threshold " << t);
        REQUIRE(std::fabs(below - p) < 4.0 * std::sqrt(p * (1.0 - p) / n_draws));
    }
    int non_finite = 0;
    for (double d : draws)
        non_finite += std::isfinite(d) ? 0 : 1;
    REQUIRE(non_finite == 0);
}

TEST_CASE("uniform_index covers 0 to n-1 uniformly", "[rng]") {
    moekit::Rng rng(31337);
    constexpr std::uint64_t n = 7;
    constexpr int draws = 70000;
    std::vector<int> counts(n, 0);
    for (int i = 0; i < draws; ++i) {
        const std::uint64_t r = moekit::uniform_index(rng, n);
        REQUIRE(r < n);
        ++counts[r];
    }
    // Each count is Binomial(draws, 1/7): mean 10000, SE sqrt(draws · 1/7 · 6/7).
    const double expected = static_cast<double>(draws) / n;
    const double se = std::sqrt(draws * (1.0 / n) * (1.0 - 1.0 / n));
    for (std::uint64_t k = 0; k < n; ++k) {
        INFO("value " << k);
        REQUIRE(counts[k] > 0);
        REQUIRE(std::fabs(counts[k] - expected) < 4.0 * se);
    }

    for (int i = 0; i < 100; ++i)
        REQUIRE(moekit::uniform_index(rng, 1) == 0);

    // A bound just above 2^63: the upper half [2^62, n) must be reachable (no truncation) and
    // nothing may reach n.
    const std::uint64_t big = (std::uint64_t{1} << 63) + 1;
    int upper = 0;
    for (int i = 0; i < 2000; ++i) {
        const std::uint64_t r = moekit::uniform_index(rng, big);
        REQUIRE(r < big);
        upper += (r >= (std::uint64_t{1} << 62)) ? 1 : 0;
    }
    // P(r >= 2^62) = (n − 2^62)/n = 1/2 up to 2^-63; 2000 draws, 4 SE ≈ 0.045.
    REQUIRE(std::fabs(upper / 2000.0 - 0.5) < 4.0 * std::sqrt(0.5 * 0.5 / 2000.0));
}

TEST_CASE("the same seed gives the same sequence", "[rng]") {
    moekit::Rng a(99);
    moekit::Rng b(99);
    for (int i = 0; i < 1000; ++i) {
        REQUIRE(moekit::uniform01(a) == moekit::uniform01(b));
        REQUIRE(moekit::standard_normal(a) == moekit::standard_normal(b));
        REQUIRE(moekit::uniform_index(a, 13) == moekit::uniform_index(b, 13));
    }
    moekit::Rng c(100);
    moekit::Rng d(99);
    int equal = 0;
    for (int i = 0; i < 100; ++i)
        equal += (moekit::uniform01(c) == moekit::uniform01(d)) ? 1 : 0;
    REQUIRE(equal == 0);
}
