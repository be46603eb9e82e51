#pragma once
/// @file gradient.hpp
/// Gradient-based fitting (`--method gradient`, meta-pi, sparse top-k gating): the model's free
/// parameters as one vector, the objectives with their exact gradients, and the sparse-gating
/// balance losses. docs/model.md states every objective; fit() drives them with L-BFGS.
///
/// Parameter vector (pack_parameters), in this order:
///  - gate: constant: the K−1 logits log π_k − log π_1 (k = 2..K); softmax: columns 2..K of V,
///    column-major; tree: the same for every internal node, breadth first; hash: nothing;
///  - experts: each W_k ((d+1)×q), column-major, k = 1..K;
///  - covariances (ParameterSet::All only), as a log-Cholesky factor Σ = L Lᵀ so that every
///    vector gives a positive definite matrix: full: per expert the lower triangle of L column
///    by column, diagonal entries as log L_jj; tied: that once; diag: per expert log L_jj;
///    spherical: per expert log σ.

#include "moekit/model.hpp"

#include <string_view>

namespace moekit {

/// Which parameters a vector holds.
enum class ParameterSet {
    All,         ///< gate, expert coefficients and covariances (likelihood training)
    GateAndMeans ///< gate and expert coefficients (meta-pi: the MSE does not involve Σ)
};

/// The model's free parameters (see the file comment for the layout).
Vector pack_parameters(const Model& model, ParameterSet set = ParameterSet::All);

/// Writes a parameter vector back into `model`. Returns false, leaving `model` untouched, when
/// the vector has the wrong length or gives a non-finite parameter (an overflowing log-Cholesky
/// diagonal, say).
bool unpack_parameters(Model& model, const Vector& theta, ParameterSet set = ParameterSet::All);

/// Load-balancing loss of sparse top-k gating (softmax gate).
enum class BalanceLoss {
    /// Switch Transformer (Fedus et al. 2021): K Σ_k f_k P_k, f_k the weighted share of samples
    /// whose largest gate score is expert k, P_k the weighted mean dense gate probability.
    /// Equals 1 under uniform routing.
    Switch,
    /// Shazeer et al. 2017: CV(importance)², importance_k = Σ_i w_i g_ik (gate after top-k);
    /// 0 under uniform routing.
    Importance,
    /// Shazeer et al. 2017: CV(load)² with the smooth load of noisy gating,
    /// load_k = Σ_i w_i Φ((s_ik − t_ik) / σ_ik): the probability that expert k stays in sample
    /// i's top k under a new draw of its own noise (s clean scores, σ noise scales, t_ik the k-th
    /// largest noisy score of the other experts). Trains only with noisy gating; evaluated on
    /// a clean model (no noise given, no gradient) it is the CV² of the counts, load_cv2.
    Load
};
std::string_view to_string(BalanceLoss loss);
/// Parses "switch", "importance" or "load" (case-insensitive). @throws InvalidArgument.
BalanceLoss parse_balance_loss(std::string_view text);

/// The terms of a gradient objective besides the log-likelihood.
struct ObjectiveOptions {
    /// L2 penalty (λ/2)‖V‖² on the softmax slopes (as in EM).
    double gate_l2 = 1e-8;
    /// Covariance penalty (reg_covar/2)·c·Σ_k tr(Σ_k⁻¹ diag(s²)) with c = Σ_i w_i / K (Σ_i w_i for
    /// a tied covariance): the gradient method's form of EM's ridge Σ_k += reg_covar·diag(s²). It
    /// keeps the objective bounded when an expert collapses onto few points.
    double reg_covar = 0.0;
    Vector scale; ///< s², q values (target_scale); empty: unit
    /// Sparse gating (softmax gate, model.top_k >= 1): the weight α of the balance loss.
    double balance_weight = 0.0;
    BalanceLoss balance = BalanceLoss::Switch;
    /// Sparse gating: each expert takes at most ceil(c·n/K) samples per evaluation, those with the
    /// largest gate probability (ties: lower sample index); the overflow is dropped from that
    /// expert. A sample dropped by all its experts is left out of the objective. 0: no limit.
    double capacity_factor = 0.0;
    /// Noisy top-k gating (Shazeer et al. 2017; training only): the noise weights U ((g+1)×K)
    /// and this pass's standard normal draws ε (n×K). The gate scores become
    /// H = z̃V + ε ⊙ softplus(z̃U); top-k and the softmax act on H. Both null: no noise.
    const Matrix* noise_weights = nullptr;
    const Matrix* noise_draws = nullptr;
};

/// What one evaluation of an objective found (for the fit summary).
struct ObjectiveReport {
    double log_likelihood = 0.0; ///< Σ w_i log p(y_i | x_i) over the samples kept
    double penalty = 0.0;        ///< gate L2 + covariance penalty
    double balance_loss = 0.0;   ///< value of the chosen balance loss (before α)
    double switch_loss = 0.0;    ///< K Σ f_k P_k
    double importance_cv2 = 0.0; ///< CV(importance)²
    double load_cv2 = 0.0;       ///< CV(load)², load_k = Σ_i w_i [k among sample i's top k] (reported only:
                                 ///< the count is piecewise constant, so it is not a usable penalty)
    Vector load;                 ///< per expert, the weighted share of samples routed to it (after capacity)
    Index dropped = 0;           ///< (sample, expert) routings dropped by the capacity limit
    Index dropped_samples = 0;   ///< samples left with no expert
};

/// Penalised log-likelihood Σ_i w_i log p(y_i | x_i) − penalties − α·balance loss, and its
/// gradient in the packed coordinates of ParameterSet::All. Sparse routing (model.top_k) is
/// applied; the capacity limit, balance loss and noise only to a softmax gate with top_k >= 1.
/// With noise, `noise_gradient` receives the gradient with respect to U ((g+1)×K).
double likelihood_objective(const Model& model,
                            const Dataset& data,
                            const ObjectiveOptions& options,
                            Vector* gradient = nullptr,
                            ObjectiveReport* report = nullptr,
                            Matrix* noise_gradient = nullptr);

/// Meta-pi (Hampshire & Waibel 1989): −½ Σ_i w_i ‖y_i − ŷ(x_i)‖² − gate L2 penalty with
/// ŷ(x) = Σ_k g_k(z) x̃ W_k, and its gradient in the coordinates of ParameterSet::GateAndMeans.
double meta_pi_objective(const Model& model, const Dataset& data, double gate_l2, Vector* gradient = nullptr);

/// Mean squared error Σ_i w_i ‖y_i − ŷ(x_i)‖² / (q Σ_i w_i) of the gate-weighted mean.
double mean_squared_error(const Model& model, const Dataset& data);

/// The balance losses of a softmax gate under top-k routing (no capacity limit): Switch loss,
/// CV(importance)², CV(load)² and the load shares, in an ObjectiveReport.
ObjectiveReport balance_losses(const Model& model, const Dataset& data);

/// Sets every expert's covariance to the gate-weighted residual covariance of its mean
/// (weights w_i g_ik, the structure of the model, plus reg_covar·diag(scale)): how meta-pi
/// experts, trained on squared error alone, get the noise model that predict and score use.
/// Experts whose weighted size is below 1 get the pooled residual covariance.
void gate_weighted_covariances(Model& model, const Dataset& data, double reg_covar, const Vector& scale);

} // namespace moekit
