#pragma once
/// @file fit.hpp
/// Fitting a mixture of experts by EM: options, result and the driver.
///
/// `fit(data, options)` validates, then for each of `restarts` starts draws an initial model
/// from its own seeded stream, runs `fit_em`, keeps the best log-likelihood, and finishes with
/// a final E-step. The same data, options and seed always give the same result.

#include "moekit/model.hpp"
#include "moekit/rng.hpp"

#include <cstdint>
#include <functional>
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
    Model ///< start from a given model (warm start; set by fit() when it gets one)
};
std::string_view to_string(InitMethod method);
/// Parses "auto", "kmeans++", "random" or "lines" (case-insensitive). @throws InvalidArgument.
InitMethod parse_init_method(std::string_view text);

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
    /// Called after every EM iteration (not saved in model files). Returning false stops the
    /// fit after that iteration: no further starts run, the best model so far is returned with
    /// `converged = false` and `interrupted = true`. Used for progress and for Ctrl-C.
    std::function<bool(const FitProgress&)> on_iteration;
};

/// Checks every option is in range. @throws InvalidArgument naming the option and a remedy.
void validate(const FitOptions& options, const char* function);

/// Something the fit did to stay well defined, or noticed: recorded, never silent.
struct Intervention {
    int restart = 0;   ///< which start
    int iteration = 0; ///< EM iteration (1-based; 0 = initialisation)
    std::string kind;  ///< "expert_kept", "singular_covariance", "rank_deficient",
                       ///< "gate_stalled", "likelihood_decrease"
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
};

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
