#include "moekit/fit.hpp"

#include "blocks.hpp"
#include "detail.hpp"
#include "moekit/errors.hpp"
#include "moekit/log_sum_exp.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>

namespace moekit {

std::string_view to_string(InitMethod method) {
    switch (method) {
    case InitMethod::Auto: return "auto";
    case InitMethod::KMeansPlusPlus: return "kmeans++";
    case InitMethod::RandomLines: return "lines";
    case InitMethod::Random: return "random";
    case InitMethod::Model: return "model";
    }
    return "?";
}

InitMethod parse_init_method(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "kmeans++" || t == "k-means++" || t == "kmeans") return InitMethod::KMeansPlusPlus;
    if (t == "random") return InitMethod::Random;
    if (t == "lines" || t == "random-lines") return InitMethod::RandomLines;
    if (t == "auto") return InitMethod::Auto;
    throw_invalid_argument("parse_init_method",
                           "init",
                           "'" + std::string(text) + "'",
                           "must be auto, kmeans++, random, lines, or a model file");
}

double aic(double log_likelihood, Index n_parameters) {
    return -2.0 * log_likelihood + 2.0 * static_cast<double>(n_parameters);
}

double bic(double log_likelihood, Index n_parameters, double n_samples) {
    return -2.0 * log_likelihood + static_cast<double>(n_parameters) * std::log(n_samples);
}

void validate(const FitOptions& o, const char* function) {
    auto num = [](double v) { return format_number(v); };
    if (o.n_experts < 1)
        throw_invalid_argument(function, "n_experts (--experts)", std::to_string(o.n_experts), "must be >= 1");
    if (o.max_iter < 1)
        throw_invalid_argument(function, "max_iter (--max-iter)", std::to_string(o.max_iter), "must be >= 1");
    if (!(o.tol >= 0.0) || !std::isfinite(o.tol))
        throw_invalid_argument(function, "tol (--tol)", num(o.tol), "must be finite and >= 0");
    if (o.restarts < 1)
        throw_invalid_argument(function, "restarts (--restarts)", std::to_string(o.restarts), "must be >= 1");
    if (o.kmeans_iter < 0)
        throw_invalid_argument(function, "kmeans_iter (--kmeans-iter)", std::to_string(o.kmeans_iter), "must be >= 0");
    if (o.gate == GateKind::Tree) {
        if (o.tree.empty())
            throw_invalid_argument(function, "tree (--tree)", "empty", "a tree gate needs its shape",
                                   "Give the children per level, e.g. --tree 2x2.");
        Index product = 1;
        for (Index b : o.tree) {
            if (b < 2)
                throw_invalid_argument(function, "tree (--tree)", format_tree_shape(o.tree),
                                       "every level must have at least 2 children");
            product *= b;
        }
        if (product != o.n_experts)
            throw_invalid_argument(function, "n_experts (--experts)", std::to_string(o.n_experts),
                                   "must equal the number of leaves of the tree " + format_tree_shape(o.tree) +
                                       " (" + std::to_string(product) + ")",
                                   "Omit --experts or make it match --tree.");
    } else if (!o.tree.empty()) {
        throw_invalid_argument(function, "tree (--tree)", format_tree_shape(o.tree), "is only used with a tree gate",
                               "Add --gate tree or drop --tree.");
    }
    const auto& r = o.regularization;
    if (!(r.reg_covar >= 0.0) || !std::isfinite(r.reg_covar))
        throw_invalid_argument(function, "reg_covar (--reg-covar)", num(r.reg_covar), "must be finite and >= 0");
    if (!std::isfinite(r.min_expert_size))
        throw_invalid_argument(function, "min_expert_size (--min-expert-size)", num(r.min_expert_size), "must be finite");
    const auto& g = o.gate_options;
    if (!(g.gate_l2 >= 0.0) || !std::isfinite(g.gate_l2))
        throw_invalid_argument(function, "gate_l2 (--gate-l2)", num(g.gate_l2), "must be finite and >= 0");
    if (g.newton_steps < 1)
        throw_invalid_argument(function, "newton_steps (--newton-steps)", std::to_string(g.newton_steps), "must be >= 1");
}

namespace {

/// The columns k-means++ clusters on: standardised y and x (and z when the experts have no
/// inputs), dropping constant columns.
Matrix clustering_features(const Dataset& data, const FitOptions& options) {
    std::vector<const Matrix*> blocks{&data.y};
    if (options.expert == ExpertKind::Linear) blocks.push_back(&data.x);
    if (options.gate != GateKind::Constant && options.expert == ExpertKind::Gaussian) blocks.push_back(&data.z);
    Index cols = 0;
    for (const Matrix* b : blocks) cols += b->cols();
    Matrix f(data.n_samples(), cols);
    Index c = 0;
    const double total = data.weights.sum();
    for (const Matrix* b : blocks) {
        for (Index j = 0; j < b->cols(); ++j) {
            const double mean = data.weights.dot(b->col(j)) / total;
            const double sd = std::sqrt(data.weights.dot((b->col(j).array() - mean).square().matrix()) / total);
            if (sd > 0.0 && std::isfinite(sd)) f.col(c++) = (b->col(j).array() - mean) / sd;
        }
    }
    if (c == 0) return data.y;
    return f.leftCols(c);
}

/// Squared distances of every row of f to every centre: n×K.
Matrix squared_distances(const Matrix& f, const Matrix& centres) {
    Matrix d = -2.0 * f * centres.transpose();
    d.colwise() += f.rowwise().squaredNorm();
    d.rowwise() += centres.rowwise().squaredNorm().transpose();
    return d.cwiseMax(0.0);
}

/// Weighted k-means++ seeding followed by Lloyd iterations; returns one-hot responsibilities.
Matrix kmeans_responsibilities(const Matrix& f, const Vector& w, Index K, int iterations, Rng& rng) {
    const Index n = f.rows();
    Matrix centres(K, f.cols());
    auto draw = [&](const Vector& mass) -> Index {
        const double total = mass.sum();
        double u = uniform01(rng) * total;
        for (Index i = 0; i < n; ++i) {
            u -= mass(i);
            if (u < 0.0 && mass(i) > 0.0) return i;
        }
        for (Index i = n - 1; i >= 0; --i)
            if (mass(i) > 0.0) return i;
        return 0;
    };
    centres.row(0) = f.row(draw(w));
    Vector nearest = (f.rowwise() - centres.row(0)).rowwise().squaredNorm();
    for (Index k = 1; k < K; ++k) {
        centres.row(k) = f.row(draw(w.cwiseProduct(nearest)));
        nearest = nearest.cwiseMin((f.rowwise() - centres.row(k)).rowwise().squaredNorm());
    }
    Eigen::VectorXi label(n);
    for (int it = 0; it <= iterations; ++it) {
        const Matrix d = squared_distances(f, centres);
        bool changed = false;
        for (Index i = 0; i < n; ++i) {
            Index best = 0;
            d.row(i).minCoeff(&best);
            if (it == 0 || label(i) != best) changed = true;
            label(i) = static_cast<int>(best);
        }
        if (!changed || it == iterations) break;
        Matrix sums = Matrix::Zero(K, f.cols());
        Vector mass = Vector::Zero(K);
        for (Index i = 0; i < n; ++i) {
            sums.row(label(i)) += w(i) * f.row(i);
            mass(label(i)) += w(i);
        }
        for (Index k = 0; k < K; ++k)
            if (mass(k) > 0.0) centres.row(k) = sums.row(k) / mass(k); // an empty cluster keeps its centre
    }
    Matrix resp = Matrix::Zero(n, K);
    for (Index i = 0; i < n; ++i) resp(i, label(i)) = 1.0;
    return resp;
}

Matrix random_responsibilities(Index n, Index K, Rng& rng) {
    // Uniform on the simplex: normalised standard exponentials.
    Matrix resp(n, K);
    for (Index i = 0; i < n; ++i) {
        for (Index k = 0; k < K; ++k) resp(i, k) = -std::log1p(-uniform01(rng));
        resp.row(i) /= resp.row(i).sum();
    }
    return resp;
}

/// Random-lines partition: expert k is the least-squares fit through d + 1 distinct random
/// samples; every sample goes to the expert with the smallest standardised squared residual.
Matrix random_lines_responsibilities(const Dataset& data, ExpertKind kind, Index K, Rng& rng) {
    const Index n = data.n_samples();
    Matrix design(n, kind == ExpertKind::Linear ? data.x.cols() + 1 : 1);
    design.col(0).setOnes();
    if (kind == ExpertKind::Linear) design.rightCols(data.x.cols()) = data.x;
    const Index p = std::min(design.cols(), n);
    const Vector scale = target_scale(data).cwiseSqrt();
    Matrix cost(n, K);
    std::vector<Index> rows;
    for (Index k = 0; k < K; ++k) {
        rows.clear();
        for (int attempt = 0; static_cast<Index>(rows.size()) < p && attempt < 100 * p; ++attempt) {
            const auto i = static_cast<Index>(uniform_index(rng, static_cast<std::uint64_t>(n)));
            if (std::find(rows.begin(), rows.end(), i) == rows.end()) rows.push_back(i);
        }
        Matrix a(static_cast<Index>(rows.size()), design.cols());
        Matrix b(static_cast<Index>(rows.size()), data.y.cols());
        for (Index r = 0; r < a.rows(); ++r) {
            a.row(r) = design.row(rows[static_cast<std::size_t>(r)]);
            b.row(r) = data.y.row(rows[static_cast<std::size_t>(r)]);
        }
        const Matrix w = Eigen::CompleteOrthogonalDecomposition<Matrix>(a).solve(b);
        const Matrix residual = (data.y - design * w).array().rowwise() / scale.transpose().array();
        cost.col(k) = residual.rowwise().squaredNorm();
    }
    // Soft responsibilities under the random lines with a robust scale per line: s_k is
    // 1.4826 × the median absolute (standardised) residual of the samples nearest to line k,
    // so a line through two samples of a tight regime starts tight and is not dragged away
    // by far samples (plain nearest-line partitions miss the tonedata optimum every time).
    Eigen::VectorXi nearest(n);
    for (Index i = 0; i < n; ++i) {
        Index best = 0;
        cost.row(i).minCoeff(&best);
        nearest(i) = static_cast<int>(best);
    }
    const double q = static_cast<double>(data.y.cols());
    Matrix log_resp(n, K);
    for (Index k = 0; k < K; ++k) {
        std::vector<double> r;
        for (Index i = 0; i < n; ++i)
            if (nearest(i) == k) r.push_back(std::sqrt(cost(i, k) / q));
        double s2 = 1.0;
        if (!r.empty()) {
            std::nth_element(r.begin(), r.begin() + static_cast<std::ptrdiff_t>(r.size() / 2), r.end());
            const double mad = 1.4826 * r[r.size() / 2];
            if (mad > 0.0) s2 = mad * mad;
            else s2 = 1e-12; // the line passes through all its samples: start very tight
        }
        log_resp.col(k) = -0.5 * q * std::log(s2) - 0.5 * cost.col(k).array() / s2;
    }
    log_softmax_rows_in_place(log_resp);
    return log_resp.array().exp().matrix();
}

/// Number of distinct rows of [y x z], counting no further than `limit`.
Index distinct_rows(const Dataset& data, Index limit) {
    std::set<std::vector<double>> seen;
    std::vector<double> row;
    for (Index i = 0; i < data.n_samples() && static_cast<Index>(seen.size()) < limit; ++i) {
        row.clear();
        for (const Matrix* m : {&data.y, &data.x, &data.z})
            for (Index j = 0; j < m->cols(); ++j) row.push_back((*m)(i, j));
        seen.insert(row);
    }
    return static_cast<Index>(seen.size());
}

void record(std::vector<Intervention>& list, Intervention item) {
    // One entry per kind and expert: the first iteration it happened.
    for (const auto& existing : list)
        if (existing.kind == item.kind && existing.expert == item.expert) return;
    list.push_back(std::move(item));
}

double objective(const Model& model, double log_likelihood, const FitOptions& options) {
    return log_likelihood - gate_penalty(model.gate, options.gate_options.gate_l2);
}

} // namespace

Model initialize(const Dataset& data, const FitOptions& options, Rng& rng) {
    const Index K = options.n_experts;
    InitMethod method = options.init;
    if (method == InitMethod::Auto || method == InitMethod::Model)
        method = options.expert == ExpertKind::Linear ? InitMethod::RandomLines : InitMethod::KMeansPlusPlus;
    Matrix resp;
    if (method == InitMethod::Random)
        resp = random_responsibilities(data.n_samples(), K, rng);
    else if (method == InitMethod::RandomLines)
        resp = random_lines_responsibilities(data, options.expert, K, rng);
    else
        resp = kmeans_responsibilities(clustering_features(data, options), data.weights, K, options.kmeans_iter, rng);

    ExpertRegularization reg = options.regularization;
    if (reg.scale.size() != data.y.cols()) reg.scale = target_scale(data);
    Model model;
    model.experts = initial_experts(options.expert, options.covariance, data, resp, reg);
    model.target_names = data.target_names;
    if (options.expert == ExpertKind::Linear) model.input_names = data.input_names;
    Vector nk = resp.transpose() * data.weights;
    nk = nk.cwiseMax(1e-8 * nk.sum()); // an empty initial cluster keeps a tiny weight
    if (options.gate == GateKind::Constant) {
        model.gate = ConstantGate{nk / nk.sum()};
    } else {
        model.gate_input_names = data.gate_input_names;
        Gate gate = options.gate == GateKind::Tree ? Gate{make_tree_gate(options.tree, data.z.cols())}
                                                   : Gate{SoftmaxGate{Matrix::Zero(data.z.cols() + 1, K)}};
        update_gate(gate, data, resp, options.gate_options);
        model.gate = std::move(gate);
    }
    return model;
}

FitResult fit_em(const Dataset& data, Model init, const FitOptions& options, int restart) {
    FitResult result;
    ExpertRegularization reg = options.regularization;
    if (reg.scale.size() != data.y.cols()) reg.scale = target_scale(data);
    const double total = data.weights.sum();

    Model model = std::move(init);
    // The two n×K buffers of the loop, allocated once: the log responsibilities (rewritten in
    // place by every E-step) and the responsibilities h = exp(log_resp) the M-step reads.
    Responsibilities resp;
    e_step(model, data, resp);
    Matrix h(data.n_samples(), model.n_experts());
    double current = data.weights.dot(resp.log_norm);
    if (!std::isfinite(current)) {
        result.model = std::move(model);
        result.log_likelihood = current;
        result.trace.push_back(current);
        record(result.interventions, {restart, 0, "non_finite", -1,
                                      "the initial model gives a non-finite log-likelihood"});
        return result;
    }
    result.trace.push_back(current);
    double current_objective = objective(model, current, options);

    for (int it = 1; it <= options.max_iter; ++it) {
        detail::exp_blocked(resp.log_resp, h);
        Model candidate = model;
        const ExpertUpdateReport er = update_experts(candidate.experts, data, h, reg);
        for (Index k : er.kept)
            record(result.interventions, {restart, it, "expert_kept", k,
                                          "expert " + std::to_string(k + 1) +
                                              " fell below the minimum effective size and kept its parameters"});
        for (Index k : er.singular)
            record(result.interventions, {restart, it, "singular_covariance", k,
                                          "expert " + std::to_string(k + 1) +
                                              " had a covariance estimate that is not positive definite and kept its parameters"});
        if (er.rank_deficient)
            record(result.interventions, {restart, it, "rank_deficient", -1,
                                          "a weighted design matrix was rank deficient (collinear inputs): minimum-norm coefficients used"});
        const GateUpdateReport gr = update_gate(candidate.gate, data, h, options.gate_options);
        if (gr.stalled)
            record(result.interventions, {restart, it, "gate_stalled", -1,
                                          "a Newton step of the gate found no increase even after step halving"});

        // The candidate's E-step overwrites the buffers; the rare rejected candidate costs
        // one more E-step of the kept model to restore them.
        e_step(candidate, data, resp);
        const double value = data.weights.dot(resp.log_norm);
        if (!std::isfinite(value)) {
            record(result.interventions, {restart, it, "non_finite", -1,
                                          "the log-likelihood became non-finite; stopped with the last finite model"});
            e_step(model, data, resp);
            break;
        }
        const double value_objective = objective(candidate, value, options);
        if (value_objective < current_objective - 1e-9 * std::max(1.0, std::abs(current_objective)))
            record(result.interventions, {restart, it, "likelihood_decrease", -1,
                                          "the EM objective decreased from " + format_number(current_objective) +
                                              " to " + format_number(value_objective)});
        model = std::move(candidate);
        const double change = std::abs(value - current) / total;
        current = value;
        current_objective = value_objective;
        result.trace.push_back(current);
        result.iterations = it;
        if (change < options.tol) {
            result.converged = true;
            break;
        }
        if (options.on_iteration && !options.on_iteration(FitProgress{restart, options.restarts, it, current})) {
            result.interrupted = true;
            break;
        }
    }
    result.model = std::move(model);
    result.log_likelihood = current;
    result.responsibilities = std::move(resp);
    return result;
}

FitResult fit(const Dataset& data, const FitOptions& options, const Model* warm_start) {
    constexpr const char* fn = "fit";
    validate(options, fn);
    validate(data, fn);
    const Index n = data.n_samples();
    if (data.y.cols() < 1) throw_invalid_argument(fn, "the number of targets", "0", "must be >= 1", "Name target columns with --target.");
    for (const std::string& target : data.target_names) {
        const bool input = std::find(data.input_names.begin(), data.input_names.end(), target) != data.input_names.end();
        if (input || std::find(data.gate_input_names.begin(), data.gate_input_names.end(), target) != data.gate_input_names.end())
            throw_invalid_argument(fn, "the target '" + target + "'", input ? "also an expert input" : "also a gate input",
                                   "a target cannot explain itself", "Remove it from the inputs.");
    }
    if (options.expert == ExpertKind::Linear && data.x.cols() < 1)
        throw_invalid_argument(fn, "the number of expert inputs", "0", "linear experts need at least one", "Name input columns with --inputs.");
    if (options.gate != GateKind::Constant && data.z.cols() < 1)
        throw_invalid_argument(fn, "the number of gate inputs", "0", "a softmax or tree gate needs at least one", "Name gate input columns with --gate-inputs (or --inputs).");
    if (options.n_experts > n)
        throw_invalid_argument(fn, "n_experts (--experts)", std::to_string(options.n_experts),
                               "must not exceed the number of samples (" + std::to_string(n) + ")",
                               "Use fewer experts.");
    const Index distinct = distinct_rows(data, options.n_experts);
    if (distinct < options.n_experts)
        throw_invalid_argument(fn, "n_experts (--experts)", std::to_string(options.n_experts),
                               "must not exceed the number of distinct rows (" + std::to_string(distinct) + ")",
                               "Use fewer experts.");
    if (warm_start) {
        validate(*warm_start, fn);
        check_compatible(*warm_start, data, true, fn);
        if (warm_start->n_experts() != options.n_experts || warm_start->experts.kind != options.expert ||
            warm_start->experts.covariance_type != options.covariance || gate_kind(warm_start->gate) != options.gate ||
            (options.gate == GateKind::Tree && std::get<TreeGate>(warm_start->gate).branching != options.tree))
            throw_invalid_argument(fn, "the warm-start model", "of a different kind",
                                   "must match --experts, --expert, --covariance and --gate",
                                   "Use the same model options as the model file.");
    }

    FitOptions opts = options;
    opts.regularization.scale = target_scale(data);

    FitResult best;
    bool have_best = false;
    std::vector<double> finals;
    for (int r = 0; r < opts.restarts; ++r) {
        Rng rng(derive_seed(opts.seed, static_cast<std::uint64_t>(r)));
        Model init = (r == 0 && warm_start) ? *warm_start : initialize(data, opts, rng);
        FitResult candidate = fit_em(data, std::move(init), opts, r);
        finals.push_back(candidate.log_likelihood);
        const bool interrupted = candidate.interrupted;
        if (std::isfinite(candidate.log_likelihood) && (!have_best || candidate.log_likelihood > best.log_likelihood)) {
            best = std::move(candidate);
            best.best_restart = r;
            have_best = true;
        }
        if (interrupted) {
            best.interrupted = true;
            best.converged = false;
            break;
        }
    }
    if (!have_best)
        throw NumericalError("fit: no start reached a finite log-likelihood. Scale the data, increase "
                             "--reg-covar, or use fewer experts.");
    best.restart_log_likelihoods = std::move(finals);
    best.responsibilities = e_step(best.model, data); // final E-step: fit and predict agree
    best.log_likelihood = data.weights.dot(best.responsibilities.log_norm);
    best.n_parameters = n_parameters(best.model);
    best.n_samples = data.weights.sum();
    best.aic = aic(best.log_likelihood, best.n_parameters);
    best.bic = bic(best.log_likelihood, best.n_parameters, best.n_samples);
    for (const auto& item : best.interventions)
        best.warnings.push_back("start " + std::to_string(item.restart + 1) + ", iteration " +
                                std::to_string(item.iteration) + ": " + item.message);
    if (best.interrupted)
        best.warnings.push_back("the fit was interrupted after start " + std::to_string(best.restart_log_likelihoods.size()) +
                                " of " + std::to_string(opts.restarts) + "; the best model so far is returned");
    else if (!best.converged)
        best.warnings.push_back("EM did not converge in " + std::to_string(best.iterations) +
                                " iterations (--max-iter " + std::to_string(opts.max_iter) + ", --tol " +
                                format_number(opts.tol) + "); raise --max-iter or --tol");
    return best;
}

} // namespace moekit
