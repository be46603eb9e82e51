#pragma once
/// @file gates.hpp
/// The gates g_k(x): which expert speaks for which input.
///
/// A gate is one of a closed set held in `Gate` (a std::variant). Every alternative provides,
/// through the dispatch functions below (one std::visit each):
///  - `gate_log_probabilities(gate, data)`: n×K log g_k(z_i), rows log-sum-exp to 0;
///  - `update_gate(gate, data, resp, options)`: the gate's M-step (maximises, or for the
///    softmax gate increases, Σ_i w_i Σ_k h_ik log g_k(z_i) − penalty);
///  - `n_parameters(gate)`, `n_experts(gate)`.

#include "moekit/dataset.hpp"

#include <string_view>
#include <variant>

namespace moekit {

/// Plain mixing weights: g_k(x) = π_k (finite mixture, mixture of regressions).
struct ConstantGate {
    Vector weights; ///< K probabilities, sum to 1
};

/// Multinomial logit on the gate inputs: g(z) = softmax(Vᵀ z̃), z̃ = (1, z).
struct SoftmaxGate {
    /// (g+1)×K; row 0 the intercepts; column 0 is the reference expert and is identically 0.
    Matrix coefficients;
};

using Gate = std::variant<ConstantGate, SoftmaxGate>;

enum class GateKind { Constant, Softmax };
std::string_view to_string(GateKind kind);
/// Parses "constant" or "softmax" (case-insensitive). @throws InvalidArgument.
GateKind parse_gate_kind(std::string_view text);
GateKind gate_kind(const Gate& gate);

/// Options of the gate M-step.
struct GateOptions {
    /// L2 penalty (λ/2)·‖V‖² on the softmax coefficients (intercepts excluded), so that the
    /// Newton step is well posed and separable data keeps finite coefficients.
    double gate_l2 = 1e-8;
    /// Newton (IRLS) steps per M-step; each is accepted only if it increases the penalised
    /// objective, halving the step up to 30 times (generalised EM).
    int newton_steps = 5;
};

/// What a gate M-step did.
struct GateUpdateReport {
    int newton_steps = 0;   ///< accepted Newton steps
    int step_halvings = 0;  ///< halvings needed in total
    bool stalled = false;   ///< a Newton direction gave no increase even after halving
    double objective = 0.0; ///< penalised gate objective after the update
};

/// n×K log gate probabilities.
Matrix gate_log_probabilities(const Gate& gate, const Dataset& data);

/// Gate M-step. @param resp n×K responsibilities.
GateUpdateReport update_gate(Gate& gate, const Dataset& data, const ConstMatrixRef& resp, const GateOptions& options);

/// The softmax gate's design z̃ = (1, z): n×(g+1).
Matrix gate_design(const Dataset& data);

/// Penalised gate objective Σ_i w_i Σ_k h_ik log g_ik − (λ/2)‖V_{1:,·}‖² (softmax) and its
/// gradient with respect to the free coefficients (columns 1..K−1 of V, column-major,
/// (g+1)(K−1) values): Σ_i w_i z̃_i (h_ik − g_ik) − λ V (intercepts unpenalised).
double softmax_gate_objective(const SoftmaxGate& gate,
                              const ConstMatrixRef& design,
                              const ConstVectorRef& weights,
                              const ConstMatrixRef& resp,
                              double gate_l2,
                              Vector* gradient = nullptr,
                              Matrix* hessian = nullptr);

/// Penalty term (λ/2)‖V‖² of the gate (0 for a constant gate).
double gate_penalty(const Gate& gate, double gate_l2);

Index n_parameters(const Gate& gate);
Index n_experts(const Gate& gate);

} // namespace moekit
