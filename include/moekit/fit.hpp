#pragma once
/// @file fit.hpp
/// Fitting a mixture of experts by EM: options, result and the driver.
///
/// `fit(data, options)` validates, then for each of `restarts` starts draws an initial model
/// from its own seeded stream, runs `fit_em`, keeps the best log-likelihood, and finishes with
/// a final E-step. The same data, options and seed always give the same result.

#include "moekit/gradient.hpp"
#include "moekit/model.hpp"
#include "moekit/rng.hpp"

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace moekit {

enum class InitMethod {
    /// k-means++ for Gaussian experts, random lines for linear experts (the default; measured
    /// in docs/model.md: k-means++ on (x, y) misses the tonedata optimum from every start).
    Auto,
    KMeansPlusPlus, ///< k-means++ seeding and Lloyd iterations on standardised (x, y)
    Random,         ///< random responsibilities (uniform on the simplex)
    /// Random-lines partition (as mixtools/flexmix users start regressions): each expert is the
    /// exact least-squares fit through d + 1 random samples; each sample goes to the expert
    /// with the smallest standardised residual. For Gaussian experts it is a random-centres
    /// partition (one random sample per expert).
    RandomLines,
    Model, ///< start from a given model (warm start; set by fit() when it gets one)
    /// Upcycling (the classical analogue of sparse upcycling, Komatsuzaki et al. 2022): fit one
    /// expert to all the data (closed form), copy it K times, perturb each copy's coefficients
    /// by upcycle_noise × a standard normal × the expert's residual scale (per input: divided
    /// by the input's standard deviation), and start from a fresh gate (uniform weights, zero
    /// softmax coefficients).
    Upcycle
};
std::string_view to_string(InitMethod method);
/// Parses "auto", "kmeans++", "random", "lines" or "upcycle" (case-insensitive).
/// @throws InvalidArgument.
InitMethod parse_init_method(std::string_view text);

/// How the parameters are fitted.
enum class FitMethod {
    Auto,    ///< EM, except gradient ascent where only it applies (meta-pi, top-k gating)
    EM,      ///< expectation-maximisation (closed-form experts, IRLS gates)
    Gradient ///< L-BFGS on the penalised log-likelihood (or on the squared error for meta-pi)
};
std::string_view to_string(FitMethod method);
/// Parses "auto", "em" or "gradient" (case-insensitive). @throws InvalidArgument.
FitMethod parse_fit_method(std::string_view text);

/// Which model of the family, with its own objective (docs/model.md).
enum class Variant {
    Standard, ///< maximum likelihood of the mixture (competitive experts)
    /// Hampshire & Waibel's meta-pi network: ŷ(x) = Σ_k g_k(z) f_k(x) trained jointly on the
    /// squared error (cooperative experts); covariances are then set from the gate-weighted
    /// residuals (gate_weighted_covariances) so that the model still has a likelihood.
    MetaPi,
    /// Hard mixture of experts: classification EM (each sample goes to its most responsible
    /// expert, experts refit on their own samples, the gate learns the hard labels); the fitted
    /// model routes every sample to its top-1 expert (Model::top_k = 1).
    Hard
};
std::string_view to_string(Variant variant);
/// Parses "standard", "meta-pi" or "hard" (case-insensitive). @throws InvalidArgument.
Variant parse_variant(std::string_view text);

/// Where a running fit is, for progress displays and interruption.
struct FitProgress {
    int restart = 0;             ///< current start, 0-based
    int n_restarts = 1;          ///< number of starts
    int iteration = 0;           ///< EM iterations done in this start
    double log_likelihood = 0.0; ///< after the last E-step
};

/// Every option of a fit, with its default. CLI flags mirror the names (--max-iter ...).
struct FitOptions {
    ExpertKind expert = ExpertKind::Gaussian;
    GateKind gate = GateKind::Constant;
    CovarianceType covariance = CovarianceType::Full;
    Index n_experts = 2;        ///< K >= 1
    /// Branching factors of a tree gate (GateKind::Tree), root first, e.g. {2, 3} for "2x3";
    /// n_experts must equal their product. Empty for the other gates.
    std::vector<Index> tree;
    int max_iter = 1000;        ///< EM iterations per start
    /// Convergence: stop when the mean per-sample log-likelihood changes by less than tol.
    double tol = 1e-10;
    int restarts = 1;           ///< independent starts; the best log-likelihood wins
    std::uint64_t seed = 0;     ///< base seed; restart r uses derive_seed(seed, r)
    InitMethod init = InitMethod::Auto;
    int kmeans_iter = 20;       ///< Lloyd iterations after k-means++ seeding
    ExpertRegularization regularization; ///< reg_covar, min_expert_size
    GateOptions gate_options;            ///< gate_l2, newton_steps
    FitMethod method = FitMethod::Auto;
    Variant variant = Variant::Standard;
    /// Sparse top-k gating (softmax gate, gradient ascent): only the k largest gate scores
    /// survive before the softmax; 1 is Switch-style routing. 0: dense.
    Index top_k = 0;
    BalanceLoss balance_loss = BalanceLoss::Switch; ///< top-k: which load-balancing loss
    double balance_weight = 0.0;                    ///< top-k: its weight α (0: none)
    /// top-k: each expert takes at most capacity_factor·n/K samples per pass (0: no limit);
    /// see ObjectiveOptions::capacity_factor.
    double capacity_factor = 0.0;
    /// top-k: noisy gating (Shazeer et al. 2017), training only: the scores get
    /// ε ⊙ softplus(z̃U) with learnt noise weights U and a fresh standard normal draw ε per pass
    /// from the start's seeded stream. Trained by plain gradient ascent with a backtracking step
    /// on each pass's draw, for exactly max_iter passes (a stochastic objective has no
    /// convergence test). Prediction and the saved model use the clean scores.
    bool gate_noise = false;
    double upcycle_noise = 0.1; ///< InitMethod::Upcycle: perturbation scale (in residual SDs)
    /// Called after every iteration (EM, classification EM or gradient step), the converging one
    /// included, so its last call of a start has `iteration == FitResult::iterations` (not saved
    /// in model files). Returning false stops the fit after that iteration: no further starts
    /// run, the best model so far is returned with `converged = false` and `interrupted = true`.
    /// On the converging iteration the return value has no effect (the start has finished).
    /// Used for progress and for Ctrl-C.
    std::function<bool(const FitProgress&)> on_iteration;
};

/// Checks every option is in range. @throws InvalidArgument naming the option and a remedy.
void validate(const FitOptions& options, const char* function);

/// The method that `options.method` resolves to (Auto → EM or Gradient).
FitMethod resolved_method(const FitOptions& options);

/// Something the fit did to stay well defined, or noticed: recorded, never silent.
struct Intervention {
    int restart = 0;   ///< which start
    int iteration = 0; ///< EM iteration (1-based; 0 = initialisation)
    std::string kind;  ///< "expert_kept", "singular_covariance", "rank_deficient",
                       ///< "gate_stalled", "likelihood_decrease", "line_search_failed", "non_finite"
    Index expert = -1; ///< expert concerned, or -1
    std::string message;
};

/// The result of a fit: the model and its history.
struct FitResult {
    Model model;
    bool converged = false;
    bool interrupted = false;    ///< stopped by FitOptions::on_iteration returning false
    int iterations = 0;          ///< EM iterations of the winning start
    double log_likelihood = 0.0; ///< Σ_i w_i log p(y_i | x_i) of the returned model
    std::vector<double> trace;   ///< log-likelihood after each E-step of the winning start
    int best_restart = 0;
    std::vector<double> restart_log_likelihoods; ///< final log-likelihood of every start
    std::vector<Intervention> interventions;     ///< of the winning start
    std::vector<std::string> warnings;           ///< human-readable, for the summary
    Index n_parameters = 0;
    double n_samples = 0;        ///< Σ_i w_i
    double aic = 0.0;            ///< −2 log L + 2p
    double bic = 0.0;            ///< −2 log L + p log n
    Responsibilities responsibilities; ///< final E-step of the returned model
    FitMethod method = FitMethod::EM;  ///< the method used (resolved)
    /// Gate-weighted-mean squared error Σ w ‖y − ŷ‖² / (q Σ w) on the training data (meta-pi's
    /// objective; reported for every model).
    double mse = 0.0;
    /// Hard variant: weighted share of samples whose top-1 gate expert differs from their most
    /// responsible expert under the dense model (NaN for the other variants).
    double hard_disagreement = std::numeric_limits<double>::quiet_NaN();
    /// Sparse top-k gating: balance losses, per-expert load, capacity drops of the final model
    /// on the training data (load empty when top-k is off).
    ObjectiveReport sparse;
};

/// Gradient ascent (L-BFGS, see src/optimize.hpp) from `init` on the penalised log-likelihood,
/// or on the squared error for meta-pi; until two consecutive mean per-sample changes are below
/// tol, or max_iter iterations.
FitResult fit_gradient(const Dataset& data, moekit::Model init, const FitOptions& options, int restart = 0);

/// Classification EM from `init` (the hard variant) until the hard labels stop changing or
/// max_iter; returns the model with top_k = 1.
FitResult fit_hard(const Dataset& data, moekit::Model init, const FitOptions& options, int restart = 0);

/// An initial model for one start, from responsibilities drawn by `options.init`.
moekit::Model initialize(const Dataset& data, const FitOptions& options, Rng& rng);

/// EM from `init` until convergence or max_iter. `init` is taken by value: the caller's model
/// is never modified. Records the trace and every intervention.
FitResult fit_em(const Dataset& data, moekit::Model init, const FitOptions& options, int restart = 0);

/// Restarts + EM + final E-step. If `warm_start` is given, the first start begins from it.
/// @throws InvalidArgument for bad options or data (e.g. K larger than the distinct rows).
/// @throws NumericalError if no start produced a finite log-likelihood.
FitResult fit(const Dataset& data, const FitOptions& options, const moekit::Model* warm_start = nullptr);

/// Information criteria: AIC = −2 log L + 2p, BIC = −2 log L + p log n.
double aic(double log_likelihood, Index n_parameters);
double bic(double log_likelihood, Index n_parameters, double n_samples);

} // namespace moekit
