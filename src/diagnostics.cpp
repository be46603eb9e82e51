/// @file diagnostics.cpp
/// Diagnostics of a fitted model and model selection by information criteria
/// (docs/diagnostics.md).

#include "moekit/diagnostics.hpp"

#include "blocks.hpp"
#include "detail.hpp"
#include "moekit/errors.hpp"

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

namespace moekit {

namespace {

constexpr double nan = std::numeric_limits<double>::quiet_NaN();
/// A decrease of the trace larger than this (relative, floor 1) makes it non-monotone.
constexpr double monotone_tolerance = 1e-9;
/// A start reached the best log-likelihood when within this (relative, floor 1) of it.
constexpr double reached_best_tolerance = 1e-6;

/// h log h for one log-responsibility, with 0 log 0 = 0.
double h_log_h(double log_h) {
    if (!std::isfinite(log_h)) return 0.0;
    return std::exp(log_h) * log_h;
}

/// The data a candidate is fitted on: a constant gate uses no gate inputs.
Dataset candidate_data(const Dataset& data, GateKind gate) {
    if (gate != GateKind::Constant || data.z.cols() == 0) return data;
    Dataset out = data;
    out.z = Matrix(data.n_samples(), 0);
    out.gate_input_names.clear();
    return out;
}

} // namespace

std::string_view to_string(Criterion criterion) {
    switch (criterion) {
    case Criterion::Bic:
        return "bic";
    case Criterion::Icl:
        return "icl";
    case Criterion::Aic:
        return "aic";
    }
    return "bic";
}

Criterion parse_criterion(std::string_view text) {
    const std::string lower = detail::lower_case(text);
    for (Criterion c : {Criterion::Bic, Criterion::Icl, Criterion::Aic})
        if (lower == to_string(c)) return c;
    throw_invalid_argument("parse_criterion",
                           "criterion (--criterion)",
                           "'" + std::string(text) + "'",
                           "must be bic, icl or aic");
}

double criterion_value(const SelectionCandidate& candidate, Criterion criterion) {
    switch (criterion) {
    case Criterion::Bic:
        return candidate.bic;
    case Criterion::Icl:
        return candidate.icl;
    case Criterion::Aic:
        return candidate.aic;
    }
    return candidate.bic;
}

Eigen::VectorXi hard_assignments(const Responsibilities& resp) {
    const Index n = resp.log_resp.rows();
    Eigen::VectorXi out(n);
    for (Index i = 0; i < n; ++i) {
        Index best = 0;
        resp.log_resp.row(i).maxCoeff(&best);
        out(i) = static_cast<int>(best);
    }
    return out;
}

Vector classification_uncertainty(const Responsibilities& resp) {
    const Index n = resp.log_resp.rows();
    Vector out(n);
    for (Index i = 0; i < n; ++i)
        out(i) = 1.0 - std::exp(resp.log_resp.row(i).maxCoeff());
    return out.cwiseMax(0.0);
}

FitHistoryDiagnostics fit_history_diagnostics(const std::vector<double>& trace,
                                              const std::vector<double>& restart_log_likelihoods,
                                              int best_restart,
                                              bool converged,
                                              bool interrupted,
                                              int iterations,
                                              const std::vector<Intervention>& interventions) {
    FitHistoryDiagnostics h;
    h.converged = converged;
    h.interrupted = interrupted;
    h.iterations = iterations;
    h.interventions = interventions;
    for (std::size_t t = 1; t < trace.size(); ++t) {
        const double decrease = trace[t - 1] - trace[t];
        if (decrease > h.largest_decrease) h.largest_decrease = decrease;
        if (decrease > monotone_tolerance * std::max(1.0, std::abs(trace[t - 1])))
            h.monotone = false;
    }

    RestartDiagnostics& r = h.restarts;
    r.count = static_cast<int>(restart_log_likelihoods.size());
    r.best = best_restart;
    if (best_restart >= 0 && best_restart < r.count)
        r.best_log_likelihood = restart_log_likelihoods[static_cast<std::size_t>(best_restart)];
    double lo = std::numeric_limits<double>::infinity();
    double hi = -std::numeric_limits<double>::infinity();
    for (double value : restart_log_likelihoods) {
        if (!std::isfinite(value)) {
            ++r.failed;
            continue;
        }
        lo = std::min(lo, value);
        hi = std::max(hi, value);
        if (std::abs(value - r.best_log_likelihood) <=
            reached_best_tolerance * std::max(1.0, std::abs(r.best_log_likelihood)))
            ++r.reached_best;
    }
    r.spread = hi >= lo ? hi - lo : 0.0;
    return h;
}

FitHistoryDiagnostics fit_history_diagnostics(const FitResult& fit) {
    return fit_history_diagnostics(fit.trace,
                                   fit.restart_log_likelihoods,
                                   fit.best_restart,
                                   fit.converged,
                                   fit.interrupted,
                                   fit.iterations,
                                   fit.interventions);
}

Diagnostics diagnose(const Model& model, const Dataset& data, const FitResult* fit) {
    constexpr const char* fn = "diagnose";
    validate(model, fn);
    validate(data, fn);
    check_compatible(model, data, true, fn);

    const Index n = data.n_samples();
    const Index K = model.n_experts();
    const Responsibilities resp = e_step(model, data);
    const Matrix h = responsibility_matrix(resp);
    const Matrix g = gate_probabilities(model, data);
    const Vector& w = data.weights;

    Diagnostics d;
    d.log_likelihood = detail::weighted_sum(w, resp.log_norm); // as fit reports it
    d.n_parameters = n_parameters(model);
    d.n_samples = data.total_weight();
    d.aic = aic(d.log_likelihood, d.n_parameters);
    d.bic = bic(d.log_likelihood, d.n_parameters, d.n_samples);

    double entropy = 0.0;
    double map_entropy = 0.0;
    for (Index i = 0; i < n; ++i) {
        double row = 0.0;
        for (Index k = 0; k < K; ++k)
            row -= h_log_h(resp.log_resp(i, k));
        entropy += w(i) * row;
        map_entropy -= w(i) * resp.log_resp.row(i).maxCoeff();
    }
    d.entropy = entropy;
    d.icl = d.bic + 2.0 * entropy;
    d.icl_map = d.bic + 2.0 * map_entropy;
    d.normalized_entropy = K > 1 && d.n_samples > 0.0
                               ? entropy / (d.n_samples * std::log(static_cast<double>(K)))
                               : 0.0;

    const Eigen::VectorXi hard = hard_assignments(resp);
    d.experts.resize(static_cast<std::size_t>(K));
    for (Index k = 0; k < K; ++k) {
        ExpertDiagnostics& e = d.experts[static_cast<std::size_t>(k)];
        e.effective_size = w.dot(h.col(k));
        e.gate_mass = w.dot(g.col(k));
        double posterior = 0.0;
        for (Index i = 0; i < n; ++i) {
            if (hard(i) != k) continue;
            e.hard_size += w(i);
            posterior += w(i) * h(i, k);
        }
        e.average_posterior = e.hard_size > 0.0 ? posterior / e.hard_size : nan;
        const Eigen::SelfAdjointEigenSolver<Matrix> solver(
            model.experts.covariances[static_cast<std::size_t>(k)].covariance,
            Eigen::EigenvaluesOnly);
        e.min_eigenvalue = solver.eigenvalues().minCoeff();
        e.max_eigenvalue = solver.eigenvalues().maxCoeff();
        e.condition_number = e.max_eigenvalue / e.min_eigenvalue;
    }

    if (const auto* tree = std::get_if<TreeGate>(&model.gate))
        d.tree_nodes = tree_diagnostics(*tree, data, h);
    if (fit != nullptr) d.fit_history = fit_history_diagnostics(*fit);
    return d;
}

std::vector<Index> parse_expert_range(std::string_view text) {
    constexpr const char* fn = "parse_expert_range";
    const std::string shown = "'" + std::string(text) + "'";
    auto fail = [&](const std::string& requirement) {
        throw_invalid_argument(fn,
                               "experts (--experts)",
                               shown,
                               requirement,
                               "Write a range such as 1:6, one number, or a list such as 1,2,4.");
    };
    auto number = [&](std::string_view part) -> Index {
        long long value = 0;
        const auto* end = part.data() + part.size();
        const auto [ptr, ec] = std::from_chars(part.data(), end, value);
        if (part.empty() || ec != std::errc() || ptr != end) fail("must be made of whole numbers");
        if (value < 1) fail("must hold numbers >= 1");
        if (value > 4096) fail("must hold numbers <= 4096");
        return static_cast<Index>(value);
    };
    std::vector<Index> out;
    if (const auto colon = text.find(':'); colon != std::string_view::npos) {
        const Index lo = number(text.substr(0, colon));
        const Index hi = number(text.substr(colon + 1));
        if (hi < lo) fail("must be a range lo:hi with lo <= hi");
        if (hi - lo >= 1000) fail("must span at most 1000 values");
        for (Index k = lo; k <= hi; ++k)
            out.push_back(k);
        return out;
    }
    std::size_t start = 0;
    while (true) {
        const auto comma = text.find(',', start);
        out.push_back(number(text.substr(
            start, comma == std::string_view::npos ? std::string_view::npos : comma - start)));
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    if (out.size() > 1000) fail("must list at most 1000 values");
    return out;
}

SelectionResult select_model(const Dataset& data,
                             const FitOptions& base,
                             const SelectionGrid& grid,
                             Criterion criterion,
                             const std::function<void(const SelectionCandidate&)>& on_candidate) {
    constexpr const char* fn = "select_model";
    if (grid.n_experts.empty() || grid.covariances.empty() || grid.gates.empty())
        throw_invalid_argument(
            fn, "grid", "empty", "needs at least one number of experts, covariance and gate");
    for (Index k : grid.n_experts)
        if (k < 1) throw_invalid_argument(fn, "grid.n_experts", std::to_string(k), "must be >= 1");
    for (GateKind gate : grid.gates) {
        if (gate == GateKind::Tree)
            throw_invalid_argument(fn,
                                   "grid.gates",
                                   "'tree'",
                                   "must be constant or softmax",
                                   "Compare tree shapes with separate 'moekit fit --tree' runs.");
        if (gate == GateKind::Hash)
            throw_invalid_argument(fn,
                                   "grid.gates",
                                   "'hash'",
                                   "must be constant or softmax",
                                   "Fit hash routing with 'moekit fit --hash-column COL'.");
    }
    if (!(grid.min_share >= 0.0 && grid.min_share < 1.0))
        throw_invalid_argument(fn,
                               "grid.min_share (--min-share)",
                               format_number(grid.min_share),
                               "must be in [0, 1)",
                               "Use 0.05 (flexmix's minprior), or 0 to disable the rule.");
    validate(data, fn);
    {
        FitOptions check = base;
        check.gate = GateKind::Constant;
        check.tree.clear();
        validate(check, fn);
    }

    SelectionResult result;
    result.table.criterion = criterion;
    result.table.min_share = grid.min_share;
    std::vector<SelectionCandidate> ok;
    std::vector<SelectionCandidate> spurious;
    std::vector<SelectionCandidate> failed;
    double best_value = std::numeric_limits<double>::infinity();
    bool stop = false;

    for (Index k : grid.n_experts) {
        for (CovarianceType covariance : grid.covariances) {
            for (GateKind gate : grid.gates) {
                if (stop) break;
                SelectionCandidate c;
                c.n_experts = k;
                c.covariance = covariance;
                c.gate = gate;
                FitOptions options = base;
                options.n_experts = k;
                options.covariance = covariance;
                options.gate = gate;
                options.tree.clear();
                options.init = base.init == InitMethod::Model ? InitMethod::Auto : base.init;
                const Dataset cdata = candidate_data(data, gate);
                try {
                    FitResult fitted = fit(cdata, options);
                    Diagnostics diag = diagnose(fitted.model, cdata, &fitted);
                    c.ok = true;
                    c.log_likelihood = diag.log_likelihood;
                    c.n_parameters = diag.n_parameters;
                    c.aic = diag.aic;
                    c.bic = diag.bic;
                    c.icl = diag.icl;
                    c.normalized_entropy = diag.normalized_entropy;
                    c.min_share = 1.0;
                    for (const ExpertDiagnostics& e : diag.experts)
                        c.min_share = std::min(c.min_share, e.effective_size / diag.n_samples);
                    c.spurious = c.min_share < grid.min_share;
                    c.converged = fitted.converged;
                    c.restarts = diag.fit_history->restarts.count;
                    c.reached_best = diag.fit_history->restarts.reached_best;
                    c.interventions = static_cast<int>(fitted.interventions.size());
                    stop = fitted.interrupted;
                    const double value = criterion_value(c, criterion);
                    if (!c.spurious && (!result.found || value < best_value)) {
                        best_value = value;
                        result.found = true;
                        result.best = std::move(fitted);
                        result.best_options = options;
                        result.best_options.on_iteration = nullptr;
                        result.best_diagnostics = std::move(diag);
                    }
                } catch (const InvalidArgument& e) {
                    c.error = e.what();
                } catch (const NumericalError& e) {
                    c.error = e.what();
                }
                if (on_candidate) on_candidate(c);
                (c.ok ? (c.spurious ? spurious : ok) : failed).push_back(std::move(c));
            }
        }
    }

    const auto by_criterion = [criterion](const auto& a, const auto& b) {
        return criterion_value(a, criterion) < criterion_value(b, criterion);
    };
    std::stable_sort(ok.begin(), ok.end(), by_criterion);
    std::stable_sort(spurious.begin(), spurious.end(), by_criterion);
    result.table.candidates = std::move(ok);
    for (auto* group : {&spurious, &failed})
        for (auto& c : *group)
            result.table.candidates.push_back(std::move(c));
    if (result.found) result.best_diagnostics.selection = result.table;
    return result;
}

} // namespace moekit
