#pragma once
// Internal helpers shared by the library's sources (not installed).

#include "moekit/types.hpp"

#include <string>
#include <string_view>

namespace moekit::detail {

/// ASCII lower-case copy, for case-insensitive option parsing.
std::string lower_case(std::string_view text);

/// Xᵀ diag(a) X for n×p X and n weights a: p×p, symmetric.
Matrix weighted_gram(const ConstMatrixRef& x, const ConstVectorRef& a);

} // namespace moekit::detail
