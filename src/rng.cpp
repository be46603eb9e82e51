#include "moekit/rng.hpp"

#include <cmath>

namespace moekit {

std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) {
    // SplitMix64 applied to seed + golden-ratio multiples of (stream + 1).
    std::uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (stream + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

double uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

double standard_normal(Rng& rng) {
    // Marsaglia's polar method; uses one pair per call (the second value is discarded so that
    // the stream position depends only on the number of calls' accepted pairs).
    for (;;) {
        const double u = 2.0 * uniform01(rng) - 1.0;
        const double v = 2.0 * uniform01(rng) - 1.0;
        const double s = u * u + v * v;
        if (s > 0.0 && s < 1.0) return u * std::sqrt(-2.0 * std::log(s) / s);
    }
}

std::uint64_t uniform_index(Rng& rng, std::uint64_t n) {
    // Rejection sampling on the largest multiple of n below 2^64.
    const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    for (;;) {
        const std::uint64_t r = rng();
        if (r < limit) return r % n;
    }
}

} // namespace moekit
