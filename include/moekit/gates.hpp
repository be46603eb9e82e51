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

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

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

/// Hierarchical mixture of experts (Jordan & Jacobs): a tree of softmax gates on z.
///
/// `branching[l]` is the number of children of every internal node at depth l (root: l = 0),
/// so `--tree 2x3` is {2, 3}: a root with 2 children, each with 3 leaves, 6 experts. Internal
/// nodes are stored breadth-first: depth l holds Π_{m<l} branching[m] nodes, node p at depth l
/// has children p·b_l + c at depth l + 1. Leaves (experts) are numbered in the same order, so
/// the experts under one node are contiguous. Each node is a softmax over its children,
/// g(c | node, z) = softmax(V_nodeᵀ z̃)_c; a leaf's gate probability is the product along its
/// path.
struct TreeGate {
    std::vector<Index> branching; ///< children per internal node at each depth, root first; each >= 2
    std::vector<Matrix> nodes;    ///< internal nodes breadth-first; node at depth l: (g+1)×branching[l],
                                  ///< column 0 identically 0
};

/// Hash routing (Roller et al. 2021, "Hash layers"): a fixed hash of one integer or categorical
/// column picks each sample's expert; nothing is learnt. The column is read as text into
/// Dataset::keys (see hash_key); sample i goes to expert hash_expert(keys[i], K).
struct HashGate {
    std::string column;  ///< name of the key column
    Index n_experts = 0; ///< K >= 1
};

using Gate = std::variant<ConstantGate, SoftmaxGate, TreeGate, HashGate>;

enum class GateKind { Constant, Softmax, Tree, Hash };
std::string_view to_string(GateKind kind);
/// Parses "constant", "softmax", "tree" or "hash" (case-insensitive). @throws InvalidArgument.
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
    /// Extra passes for a Hessian: the last step was taken without gathering its Hessian (its
    /// predicted increase was tiny), the previous point's did not confirm the stop, and a pass
    /// computed the current one.
    int hessian_refreshes = 0;
    bool stalled = false;   ///< a Newton direction gave no increase even after halving
    double objective = 0.0; ///< penalised gate objective after the update
};

/// n×K log gate probabilities.
Matrix gate_log_probabilities(const Gate& gate, const Dataset& data);

/// The constant gate's closed-form M-step from the expert sizes n_k = Σ_i w_i h_ik:
/// π_k = n_k / Σ_l n_l; the report's objective is Σ_k n_k log π_k.
GateUpdateReport update_constant_gate(ConstantGate& gate, const Vector& sizes);

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

/// The routing key of one cell of a hash column: a cell holding an integer (optional sign,
/// decimal digits, surrounding blanks ignored, e.g. "7", " -3", "+12") is keyed by its value, so
/// "7" and "07" are the same key; any other cell by its exact text (FNV-1a, 64 bits). The key is
/// then mixed by the splitmix64 finaliser. Fixed forever: model files depend on it.
std::uint64_t hash_key(std::string_view cell);
/// The expert of a key among K: key mod K.
Index hash_expert(std::uint64_t key, Index n_experts);

/// Sparse top-k gating in log space: keeps the k largest entries of each row (ties go to the
/// lower expert index), renormalises them to sum to 1 and sets the others to −∞. k <= 0 or
/// k >= K leaves the matrix as it is.
void keep_top_k(Matrix& log_probabilities, Index k);

/// Parses a tree shape such as "2x3" or "2x2x2" into branching factors.
/// @throws InvalidArgument unless every factor is an integer >= 2, the depth is at most 16 and
/// the number of experts at most 4096.
std::vector<Index> parse_tree_shape(std::string_view text);
/// "2x3" for {2, 3}.
std::string format_tree_shape(const std::vector<Index>& branching);
/// Number of internal nodes of a tree: Σ_l Π_{m<l} branching[m].
Index tree_n_nodes(const std::vector<Index>& branching);
/// Depth of each internal node (breadth-first order).
std::vector<Index> tree_node_depths(const std::vector<Index>& branching);
/// A tree whose nodes all give equal probabilities (coefficients 0), for g gate inputs.
TreeGate make_tree_gate(const std::vector<Index>& branching, Index n_gate_inputs);

/// Gradient of the log-likelihood Σ_i w_i log p(y_i | x_i) with respect to the gate
/// coefficients, minus the gradient of the L2 penalty, at responsibilities `resp` (n×K) computed
/// from the same model (Fisher's identity). One matrix per softmax (flat softmax: one; tree: one
/// per internal node, breadth-first; constant gate: one 1×K matrix for the logits
/// log π_k − log π_1), each the shape of the coefficients, column 0 zero:
/// ∂/∂V_node[:, c] = Σ_i w_i z̃_i (h_{child c, i} − h_{node, i} g(c | node, z_i)) − λ V (slopes).
std::vector<Matrix> gate_gradient(const Gate& gate, const Dataset& data, const ConstMatrixRef& resp, double gate_l2);

/// Hard routing: each sample's expert chosen by following the most probable child at every node
/// (a tree touches depth-many gates); for flat gates the most probable expert. n indices.
Eigen::VectorXi route_hard(const Gate& gate, const Dataset& data);

/// Per-node diagnostics of a tree gate.
struct TreeNodeDiagnostics {
    Index node = 0;             ///< breadth-first index
    Index depth = 0;
    double responsibility_mass = 0.0; ///< Σ_i w_i h_{node,i}: the data's share of the node
    double gate_entropy = 0.0;  ///< mean entropy (nats) of g(· | node, z_i), weighted by w_i h_{node,i}
    double disagreement = 0.0;  ///< among samples hard-routed through the node (weighted), the share
                                ///< whose hard choice there differs from the child holding their most
                                ///< probable expert under the soft gate
};

/// Diagnostics of every internal node. @param resp n×K responsibilities of the data.
std::vector<TreeNodeDiagnostics> tree_diagnostics(const TreeGate& gate, const Dataset& data, const ConstMatrixRef& resp);

} // namespace moekit
