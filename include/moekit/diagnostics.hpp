#pragma once
/// @file diagnostics.hpp
/// How healthy and how certain a fitted mixture of experts is, and choosing the number of
/// experts (and the covariance structure and gate) by an information criterion.
///
/// Conventions (docs/diagnostics.md gives the formulas and the references):
///  - every criterion is "lower is better": AIC = −2L + 2p, BIC = −2L + p log n,
///    ICL = BIC + 2·EN (mclust and MoEClust report the negatives of BIC and ICL);
///  - EN = −Σ_i w_i Σ_k h_ik log h_ik is the entropy of the responsibilities, in nats;
///  - n = Σ_i w_i, the total sample weight.

#include "moekit/fit.hpp"

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moekit {

/// Diagnostics of one expert k.
struct ExpertDiagnostics {
    double effective_size = 0.0; ///< Σ_i w_i h_ik (the responsibilities' share of the data)
    double gate_mass = 0.0;      ///< Σ_i w_i g_k(z_i) (what the gate alone gives the expert)
    double hard_size = 0.0;      ///< Σ_i w_i [hard expert of i is k] (MAP classification)
    /// MoEClust's AvePP: the (weighted) mean of h_ik over the samples whose hard expert is k;
    /// in [1/K, 1], larger is clearer. NaN when no sample's hard expert is k.
    double average_posterior = 0.0;
    double min_eigenvalue = 0.0;   ///< smallest eigenvalue of Σ_k
    double max_eigenvalue = 0.0;   ///< largest eigenvalue of Σ_k
    double condition_number = 0.0; ///< max_eigenvalue / min_eigenvalue (>= 1)
};

/// What the restarts of a fit reached.
struct RestartDiagnostics {
    int count = 0;                    ///< number of starts run
    int best = 0;                     ///< 0-based index of the winning start
    double best_log_likelihood = 0.0; ///< its final log-likelihood
    /// max − min over the starts that reached a finite log-likelihood (0 for one start).
    double spread = 0.0;
    /// Starts whose final log-likelihood is within 1e-6·max(1, |best|) of the best (the winner
    /// included): how often EM found that optimum.
    int reached_best = 0;
    int failed = 0; ///< starts that did not reach a finite log-likelihood
};

/// The history of a fit: convergence, monotonicity, restarts and interventions.
struct FitHistoryDiagnostics {
    bool converged = false;
    bool interrupted = false;
    int iterations = 0; ///< EM iterations of the winning start
    /// Whether the winning start's log-likelihood trace never decreased by more than
    /// 1e-9·max(1, |L_{t−1}|) between consecutive E-steps.
    bool monotone = true;
    double largest_decrease = 0.0; ///< max_t (L_{t−1} − L_t), 0 if the trace never decreased
    RestartDiagnostics restarts;
    std::vector<Intervention> interventions; ///< every intervention of the winning start
};

/// Model-selection criteria (all "lower is better").
enum class Criterion {
    Bic, ///< −2L + p log n
    Icl, ///< BIC + 2·EN
    Aic  ///< −2L + 2p
};
std::string_view to_string(Criterion criterion);
/// Parses "bic", "icl" or "aic" (case-insensitive). @throws InvalidArgument.
Criterion parse_criterion(std::string_view text);

/// One candidate of a model selection (a row of `moekit select`'s table).
struct SelectionCandidate {
    Index n_experts = 1;
    CovarianceType covariance = CovarianceType::Full;
    GateKind gate = GateKind::Constant;
    bool ok = false;   ///< the fit succeeded; otherwise `error` says why and the numbers are 0
    std::string error; ///< the exception message of a failed fit
    double log_likelihood = 0.0;
    Index n_parameters = 0;
    double aic = 0.0;
    double bic = 0.0;
    double icl = 0.0;
    double normalized_entropy = 0.0;
    /// Smallest share of the data held by one expert, min_k Σ_i w_i h_ik / Σ_i w_i.
    double min_share = 0.0;
    /// The fit has an expert holding less than the selection's min_share: most likely a
    /// spurious maximum (an expert fitted to a handful of samples with a tiny variance). Such a
    /// candidate is listed but not selected.
    bool spurious = false;
    bool converged = false;
    int restarts = 0;      ///< starts run
    int reached_best = 0;  ///< starts that reached the candidate's best log-likelihood
    int interventions = 0; ///< interventions of the winning start
};

/// The value of `criterion` for a candidate. @pre candidate.ok
double criterion_value(const SelectionCandidate& candidate, Criterion criterion);

/// A model-selection table: every candidate, best first.
struct SelectionTable {
    Criterion criterion = Criterion::Bic;
    /// Smallest expert share a selectable candidate must have (see SelectionCandidate::spurious).
    double min_share = 0.05;
    /// Successful candidates that are not spurious, sorted by the criterion (ties keep the grid
    /// order), then the spurious ones sorted likewise, then the failed ones in grid order. The
    /// first entry is the selected model when it is ok and not spurious.
    std::vector<SelectionCandidate> candidates;
};

/// Everything `diagnose` reports.
struct Diagnostics {
    double log_likelihood = 0.0; ///< L = Σ_i w_i log p(y_i | x_i)
    Index n_parameters = 0;      ///< p
    double n_samples = 0.0;      ///< n = Σ_i w_i
    double aic = 0.0;            ///< −2L + 2p
    double bic = 0.0;            ///< −2L + p log n
    double icl = 0.0;            ///< BIC + 2·EN (soft classification entropy)
    /// mclust's `icl()` convention, sign flipped to ours: BIC − 2 Σ_i w_i log max_k h_ik
    /// (the classification likelihood of the MAP labels). Between BIC and icl.
    double icl_map = 0.0;
    double entropy = 0.0; ///< EN = −Σ_i w_i Σ_k h_ik log h_ik, nats
    /// EN / (n log K), in [0, 1]; 0 when K = 1 (MoEClust's MoE_entropy reports 1 − this).
    double normalized_entropy = 0.0;
    std::vector<ExpertDiagnostics> experts;           ///< K entries
    std::vector<TreeNodeDiagnostics> tree_nodes;      ///< tree gates only, breadth-first
    std::optional<FitHistoryDiagnostics> fit_history; ///< when made from a FitResult
    std::optional<SelectionTable> selection;          ///< when the model was chosen by select_model
};

/// Diagnostics of `model` on `data` (which must hold the targets): the criteria, the entropy
/// of the responsibilities and the per-expert quantities from one E-step, the covariance
/// spectra, the tree nodes, and, when `fit` is given, its history (fit_history_diagnostics).
/// @throws InvalidArgument if the model and data do not match.
Diagnostics diagnose(const Model& model, const Dataset& data, const FitResult* fit = nullptr);

/// The history part of the diagnostics from the pieces a fit records (FitResult and the
/// model file's fit record both have them). `best_restart` indexes `restart_log_likelihoods`.
FitHistoryDiagnostics fit_history_diagnostics(const std::vector<double>& trace,
                                              const std::vector<double>& restart_log_likelihoods,
                                              int best_restart,
                                              bool converged,
                                              bool interrupted,
                                              int iterations,
                                              const std::vector<Intervention>& interventions);

/// fit_history_diagnostics of a fit result.
FitHistoryDiagnostics fit_history_diagnostics(const FitResult& fit);

/// The hard (MAP) expert of every sample, argmax_k h_ik (the first on ties): n indices.
Eigen::VectorXi hard_assignments(const Responsibilities& resp);

/// Classification uncertainty of every sample, 1 − max_k h_ik, in [0, 1 − 1/K]: n values.
Vector classification_uncertainty(const Responsibilities& resp);

/// The candidates `select_model` fits: every combination of the three lists, looped in the
/// order n_experts (outer), covariances, gates (inner).
struct SelectionGrid {
    std::vector<Index> n_experts{1, 2, 3};                         ///< each >= 1
    std::vector<CovarianceType> covariances{CovarianceType::Full}; ///< non-empty
    std::vector<GateKind> gates{GateKind::Constant};               ///< constant and/or softmax
    /// A candidate whose fit has an expert holding less than this share of the data
    /// (Σ_i w_i h_ik / Σ_i w_i) is flagged spurious and not selected, as flexmix drops
    /// components whose prior falls below its `minprior` (default 0.05). 0 disables the rule.
    double min_share = 0.05;
};

/// Parses "1:6" (inclusive range), "2" or "1,2,4" into numbers of experts.
/// @throws InvalidArgument for anything else, a value < 1 or a range of more than 1000.
std::vector<Index> parse_expert_range(std::string_view text);

/// The result of a model selection.
struct SelectionResult {
    SelectionTable table;         ///< every candidate, best first
    bool found = false;           ///< some candidate succeeded and is not spurious
    FitResult best;               ///< the selected fit (when found)
    FitOptions best_options;      ///< its options (on_iteration cleared)
    Diagnostics best_diagnostics; ///< its diagnostics, `selection` set to `table`
};

/// Fits every candidate of `grid` with `base` (restarts, seed, tolerances, expert family ...;
/// its n_experts, covariance, gate and tree are replaced by the candidate's) and ranks them by
/// `criterion`; the best candidate that is not spurious (grid.min_share) is selected. A
/// constant-gate candidate ignores the gate inputs of `data`; a softmax one needs them. A candidate
/// whose fit throws InvalidArgument or NumericalError (e.g. more experts than distinct rows) is
/// recorded as failed, not rethrown. `on_candidate`, if set, is called after each candidate (for
/// progress displays). An interruption through `base.on_iteration` stops the selection after that
/// candidate.
/// @throws InvalidArgument for an empty grid, a tree gate in the grid, a min_share outside
/// [0, 1), or invalid base options.
SelectionResult
select_model(const Dataset& data,
             const FitOptions& base,
             const SelectionGrid& grid,
             Criterion criterion,
             const std::function<void(const SelectionCandidate&)>& on_candidate = {});

} // namespace moekit
