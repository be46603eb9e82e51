#pragma once
/// @file optimize.hpp
/// Internal: the L-BFGS maximiser behind `--method gradient` and meta-pi.
///
/// Maximises f(θ) given f and ∇f. Direction: L-BFGS two-loop recursion with the last `memory`
/// pairs (s, y) and the scaling γ = sᵀy / yᵀy; a pair is stored only when sᵀy > 0 (curvature
/// condition), so the implied Hessian stays negative definite. Step: backtracking (Armijo,
/// c₁ = 1e-4, halving up to 50 times) from the unit step; a non-finite f counts as a failed
/// trial. The first step is scaled to unit length and may double while f keeps improving. If
/// no step length gives an increase, the memory is dropped and steepest ascent is tried once;
/// if that fails too the optimiser stops and counts as converged ("line search failed": at a
/// maximum to machine precision, or at a discontinuity of a non-smooth objective such as top-k
/// gating, where no step along the gradient increases f).
/// Convergence: |Δf| / scale < tol on two consecutive iterations (scale = Σ_i w_i, so tol is
/// the same mean per-sample change as EM's).

#include "moekit/types.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <string>

namespace moekit::detail {

struct LbfgsResult {
    Vector theta;
    double value = 0.0;
    int iterations = 0;
    bool converged = false;
    bool line_search_failed = false;
};

/// @param f value and gradient at θ (gradient written to its second argument).
/// @param on_step called after each accepted step with (iteration, value), the converging step
///        included; returning false stops (no effect on the converging step).
inline LbfgsResult maximize_lbfgs(const std::function<double(const Vector&, Vector&)>& f,
                                  Vector theta,
                                  int max_iter,
                                  double tol,
                                  double scale,
                                  const std::function<bool(int, double)>& on_step,
                                  int memory = 10) {
    LbfgsResult result;
    Vector grad;
    double value = f(theta, grad);
    result.theta = theta;
    result.value = value;
    if (!std::isfinite(value) || !grad.allFinite()) return result;
    std::deque<Vector> ss, ys;
    std::deque<double> rhos;
    int small_changes = 0;
    Vector trial_grad;
    for (int it = 1; it <= max_iter; ++it) {
        // Ascent direction d = H ∇f with H ≈ −(∇²f)⁻¹ (two-loop recursion on the minimisation of −f).
        Vector q = -grad;
        std::vector<double> alpha(ss.size());
        for (std::size_t j = ss.size(); j-- > 0;) {
            alpha[j] = rhos[j] * ss[j].dot(q);
            q -= alpha[j] * ys[j];
        }
        if (!ss.empty()) q *= ss.back().dot(ys.back()) / ys.back().squaredNorm();
        for (std::size_t j = 0; j < ss.size(); ++j) {
            const double beta = rhos[j] * ys[j].dot(q);
            q += (alpha[j] - beta) * ss[j];
        }
        Vector d = -q;
        bool steepest = ss.empty();
        if (!(d.dot(grad) > 0.0) || !d.allFinite()) {
            d = grad;
            steepest = true;
            ss.clear(), ys.clear(), rhos.clear();
        }
        double t = 1.0;
        if (steepest) t = 1.0 / std::max(d.norm(), 1e-300);
        const double slope = d.dot(grad);
        Vector trial;
        double trial_value = 0.0;
        bool accepted = false;
        for (int attempt = 0; attempt < 2 && !accepted; ++attempt) {
            for (int halving = 0; halving <= 50; ++halving) {
                trial = theta + t * d;
                trial_value = f(trial, trial_grad);
                if (std::isfinite(trial_value) && trial_grad.allFinite() && trial_value >= value + 1e-4 * t * slope) {
                    accepted = true;
                    break;
                }
                t *= 0.5;
            }
            if (!accepted && !steepest) { // retry once along the gradient with an empty memory
                ss.clear(), ys.clear(), rhos.clear();
                d = grad;
                t = 1.0 / std::max(d.norm(), 1e-300);
                steepest = true;
            } else {
                break;
            }
        }
        if (!accepted) {
            result.line_search_failed = true;
            // No step of any length down to 2⁻⁵⁰ along the gradient increases f: a maximum to
            // machine precision, or the edge of a discontinuity (top-k routing changing).
            result.converged = true;
            break;
        }
        if (it == 1 && t >= 1.0 / std::max(d.norm(), 1e-300) && steepest) {
            // First step: expand while f keeps improving.
            for (int grow = 0; grow < 30; ++grow) {
                Vector bigger = theta + 2.0 * t * d;
                Vector bigger_grad;
                const double v = f(bigger, bigger_grad);
                if (!(std::isfinite(v) && bigger_grad.allFinite() && v > trial_value)) break;
                t *= 2.0, trial = std::move(bigger), trial_value = v, trial_grad = std::move(bigger_grad);
            }
        }
        Vector s = trial - theta;
        Vector y = grad - trial_grad; // gradient of −f: y = ∇(−f)(new) − ∇(−f)(old)
        const double sy = s.dot(y);
        if (sy > 1e-12 * s.norm() * y.norm() && sy > 0.0) {
            ss.push_back(std::move(s)), ys.push_back(std::move(y)), rhos.push_back(1.0 / sy);
            if (static_cast<int>(ss.size()) > memory) ss.pop_front(), ys.pop_front(), rhos.pop_front();
        }
        const double change = std::abs(trial_value - value) / scale;
        theta = std::move(trial);
        value = trial_value;
        grad = trial_grad;
        result.iterations = it;
        result.theta = theta;
        result.value = value;
        small_changes = change < tol ? small_changes + 1 : 0;
        // on_step sees every accepted step, the converging one included; its stop request
        // matters only when the run would go on.
        const bool go_on = !on_step || on_step(it, value);
        if (small_changes >= 2) {
            result.converged = true;
            break;
        }
        if (!go_on) break;
    }
    return result;
}

} // namespace moekit::detail
