#pragma once
/// @file rng.hpp
/// Explicit, seeded randomness. The engine is std::mt19937_64, whose output sequence is fixed
/// by the standard; the uniform and normal draws below are written out here (not
/// std::uniform_real_distribution / std::normal_distribution, whose algorithms vary between
/// standard libraries), so the same seed gives the same numbers on every platform.

#include <cstdint>
#include <random>

namespace moekit {

using Rng = std::mt19937_64;

/// A well-mixed 64-bit seed derived from a base seed and a stream index (SplitMix64), used to
/// give restart r its own independent stream: `Rng rng(derive_seed(seed, r))`.
std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream);

/// Uniform draw in [0, 1) with 53 random bits.
double uniform01(Rng& rng);

/// Standard normal draw (Marsaglia's polar method).
double standard_normal(Rng& rng);

/// Uniform integer in [0, n), n >= 1, without modulo bias.
std::uint64_t uniform_index(Rng& rng, std::uint64_t n);

} // namespace moekit
