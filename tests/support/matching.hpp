#pragma once
/// @file matching.hpp
/// Label-switch-safe matching of fitted experts to reference experts.
///
/// A mixture is identified only up to a permutation of its experts, so a fitted expert j is
/// compared with the reference expert perm[j], where perm minimises the total cost over all K!
/// permutations (brute force: K <= 8 in every test). The cost is supplied by the test (usually
/// the distance between means or coefficients relative to their scale), so the matching never
/// depends on the order in which a fit happened to return its experts.

#include <algorithm>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace moekit_test {

/// perm[j] = index of the reference expert matched with fitted expert j, minimising
/// Σ_j cost(j, perm[j]). @pre 1 <= n_experts <= 8.
inline std::vector<int> best_permutation(int n_experts,
                                         const std::function<double(int, int)>& cost) {
    if (n_experts < 1 || n_experts > 8)
        throw std::invalid_argument("best_permutation: K out of range");
    std::vector<int> perm(static_cast<std::size_t>(n_experts));
    std::iota(perm.begin(), perm.end(), 0);
    std::vector<int> best = perm;
    double best_cost = std::numeric_limits<double>::infinity();
    do {
        double c = 0.0;
        for (int j = 0; j < n_experts; ++j)
            c += cost(j, perm[static_cast<std::size_t>(j)]);
        if (c < best_cost) {
            best_cost = c;
            best = perm;
        }
    } while (std::next_permutation(perm.begin(), perm.end()));
    return best;
}

/// The cost of the best matching divided by the cost of the second-best distinct matching;
/// a small value means the matching is unambiguous (used to assert that it is).
inline double matching_ambiguity(int n_experts, const std::function<double(int, int)>& cost) {
    std::vector<int> perm(static_cast<std::size_t>(n_experts));
    std::iota(perm.begin(), perm.end(), 0);
    double best = std::numeric_limits<double>::infinity();
    double second = std::numeric_limits<double>::infinity();
    do {
        double c = 0.0;
        for (int j = 0; j < n_experts; ++j)
            c += cost(j, perm[static_cast<std::size_t>(j)]);
        if (c < best) {
            second = best;
            best = c;
        } else if (c < second) {
            second = c;
        }
    } while (std::next_permutation(perm.begin(), perm.end()));
    if (n_experts == 1) return 0.0;
    return best / second;
}

} // namespace moekit_test
