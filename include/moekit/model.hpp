#pragma once
/// @file model.hpp
/// A mixture of experts p(y | x) = Σ_k g_k(z) p_k(y | x) as a plain value, and the operations
/// that apply it: the E-step, the log-likelihood and predictions.

#include "moekit/experts.hpp"
#include "moekit/gates.hpp"

#include <string>
#include <vector>

namespace moekit {

/// A fitted (or initial) mixture of experts. Copyable value; no hidden caches.
struct Model {
    Gate gate;
    Experts experts;
    std::vector<std::string> target_names;     ///< q names of y
    std::vector<std::string> input_names;      ///< d names of x (empty for Gaussian experts)
    std::vector<std::string> gate_input_names; ///< g names of z (empty for a constant gate)
    /// Sparse routing: 0 = dense (every expert weighted by its gate probability); k >= 1 keeps
    /// only each sample's k most probable experts and renormalises them (keep_top_k). With a
    /// tree gate only k = 1 is allowed: the greedy route of route_hard. Set by `--top-k` and by
    /// the hard variant (k = 1: prediction from the top-1 expert alone).
    Index top_k = 0;

    Index n_experts() const { return experts.n_experts(); }
};

/// log g_k(z_i) + log p_k(y_i | x_i): n×K.
Matrix log_joint(const Model& model, const Dataset& data);

/// Responsibilities h_ik = p(expert k | x_i, y_i) in log space.
struct Responsibilities {
    Matrix log_resp; ///< n×K, each row log-sum-exps to 0
    Vector log_norm; ///< n, log p(y_i | x_i)
};

/// E-step: normalises log_joint row by row with the one log-sum-exp.
Responsibilities e_step(const Model& model, const Dataset& data);

/// E-step into existing storage: the same result as e_step, written to `out`, whose matrices
/// are reused when they already have the right size (no allocation inside an EM loop).
void e_step(const Model& model, const Dataset& data, Responsibilities& out);

/// E-step as probabilities, with one n×K array (what the EM loop keeps): h_ik = p(expert k |
/// x_i, y_i), rows summing to 1 (a row whose normaliser is not finite, from a NaN or ±∞ log
/// joint, gets exp of its log joint instead), and log_norm_i = log p(y_i | x_i); the storage of `h` and
/// `log_norm` is reused when it already has the right size. Equal to exp of e_step's
/// log_resp up to rounding (one exp per entry: e = exp(a − max), h = e / Σe); an expert that
/// routing excludes gets exactly 0.
void e_step_probabilities(const Model& model, const Dataset& data, Matrix& h, Vector& log_norm);

/// Σ_i w_i log p(y_i | x_i) (weighted log-likelihood).
double log_likelihood(const Model& model, const Dataset& data);

/// log p(y_i | x_i) per sample (unweighted), n values.
Vector log_likelihood_samples(const Model& model, const Dataset& data);

/// n×K log gate probabilities of the model, sparse routing (top_k) applied; entries of experts
/// a sample is not routed to are −∞.
Matrix gate_log_probabilities(const Model& model, const Dataset& data);

/// n×K gate probabilities g_k(z_i) (sparse routing applied).
Matrix gate_probabilities(const Model& model, const Dataset& data);

/// E[y | x] = Σ_k g_k(z) x̃ W_k: n×q.
Matrix predict_mean(const Model& model, const Dataset& data);

/// Most probable expert under the gate, argmax_k g_k(z_i): n indices.
Eigen::VectorXi predict_expert(const Model& model, const Dataset& data);

/// Hard routing (see route_hard in gates.hpp): the mean of the one expert each sample is routed
/// to, x̃_i W_{route(i)}: n×q.
Matrix predict_mean_hard(const Model& model, const Dataset& data);

/// log p_{route(i)}(y_i | x_i) for each sample: the log-likelihood of hard routing, as if the gate
/// put all its mass on the routed expert. n values.
Vector log_likelihood_samples_hard(const Model& model, const Dataset& data);

/// Responsibilities as probabilities, exp(log_resp): n×K, rows sum to 1.
Matrix responsibility_matrix(const Responsibilities& r);

/// Effective expert sizes Σ_i w_i h_ik: K values summing to Σ_i w_i.
Vector expert_sizes(const Responsibilities& r, const Dataset& data);

/// Free parameters: gate plus experts.
Index n_parameters(const Model& model);

/// Checks a model is internally consistent: shapes agree, values finite, covariances SPD and
/// factors consistent, gate weights non-negative summing to 1, names match dimensions.
/// @throws InvalidArgument naming `function`.
void validate(const Model& model, const char* function);

/// Checks `data` has the columns `model` needs (inputs, gate inputs; targets when
/// `need_targets`), by count. @throws InvalidArgument.
void check_compatible(const Model& model, const Dataset& data, bool need_targets, const char* function);

} // namespace moekit
