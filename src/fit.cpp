#include "moekit/fit.hpp"

#include "blocks.hpp"
#include "detail.hpp"
#include "optimize.hpp"
#include "moekit/errors.hpp"
#include "moekit/log_sum_exp.hpp"

#include <algorithm>
#include <cassert>
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
    case InitMethod::Upcycle: return "upcycle";
    }
    return "?";
}

std::string_view to_string(FitMethod method) {
    switch (method) {
    case FitMethod::Auto: return "auto";
    case FitMethod::EM: return "em";
    case FitMethod::Gradient: return "gradient";
    }
    return "?";
}

FitMethod parse_fit_method(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "auto") return FitMethod::Auto;
    if (t == "em") return FitMethod::EM;
    if (t == "gradient") return FitMethod::Gradient;
    throw_invalid_argument("parse_fit_method", "method (--method)", "'" + std::string(text) + "'",
                           "must be auto, em or gradient");
}

std::string_view to_string(Variant variant) {
    switch (variant) {
    case Variant::Standard: return "standard";
    case Variant::MetaPi: return "meta-pi";
    case Variant::Hard: return "hard";
    }
    return "?";
}

Variant parse_variant(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "standard") return Variant::Standard;
    if (t == "meta-pi" || t == "metapi") return Variant::MetaPi;
    if (t == "hard") return Variant::Hard;
    throw_invalid_argument("parse_variant", "variant (--variant)", "'" + std::string(text) + "'",
                           "must be standard, meta-pi or hard");
}

FitMethod resolved_method(const FitOptions& options) {
    if (options.method != FitMethod::Auto) return options.method;
    return options.variant == Variant::MetaPi || options.top_k > 0 ? FitMethod::Gradient : FitMethod::EM;
}

InitMethod parse_init_method(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "kmeans++" || t == "k-means++" || t == "kmeans") return InitMethod::KMeansPlusPlus;
    if (t == "random") return InitMethod::Random;
    if (t == "lines" || t == "random-lines") return InitMethod::RandomLines;
    if (t == "auto") return InitMethod::Auto;
    if (t == "upcycle") return InitMethod::Upcycle;
    throw_invalid_argument("parse_init_method",
                           "init",
                           "'" + std::string(text) + "'",
                           "must be auto, kmeans++, random, lines, upcycle, or a model file");
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

    // Variants, sparse gating, upcycling.
    const FitMethod method = resolved_method(o);
    if (o.top_k < 0 || o.top_k > o.n_experts)
        throw_invalid_argument(function, "top_k (--top-k)", std::to_string(o.top_k),
                               "must be between 0 (dense) and the number of experts (" + std::to_string(o.n_experts) + ")");
    if (o.top_k > 0) {
        if (o.gate != GateKind::Softmax)
            throw_invalid_argument(function, "top_k (--top-k)", std::to_string(o.top_k),
                                   "sparse top-k gating needs a softmax gate (it is " + std::string(to_string(o.gate)) + ")",
                                   "Add --gate softmax with gate inputs, or drop --top-k.");
        if (o.variant != Variant::Standard)
            throw_invalid_argument(function, "top_k (--top-k)", std::to_string(o.top_k),
                                   "is not combined with the " + std::string(to_string(o.variant)) + " variant",
                                   "Use --variant hard for top-1 routing trained by classification EM, or drop --top-k.");
        if (method != FitMethod::Gradient)
            throw_invalid_argument(function, "method (--method)", "em", "sparse top-k gating is trained by gradient ascent",
                                   "Use --method gradient (or auto) with --top-k.");
    }
    if (!(o.balance_weight >= 0.0) || !std::isfinite(o.balance_weight))
        throw_invalid_argument(function, "balance_weight (--balance-weight)", num(o.balance_weight), "must be finite and >= 0");
    if (!(o.capacity_factor >= 0.0) || !std::isfinite(o.capacity_factor))
        throw_invalid_argument(function, "capacity_factor (--capacity-factor)", num(o.capacity_factor),
                               "must be finite and >= 0 (0: no limit)");
    if ((o.balance_weight > 0.0 || o.capacity_factor > 0.0) && o.top_k == 0)
        throw_invalid_argument(function, o.balance_weight > 0.0 ? "balance_weight (--balance-weight)" : "capacity_factor (--capacity-factor)",
                               num(o.balance_weight > 0.0 ? o.balance_weight : o.capacity_factor),
                               "load balancing and capacity limits apply to sparse top-k gating", "Add --top-k.");
    if (o.gate_noise && o.top_k == 0)
        throw_invalid_argument(function, "gate_noise (--gate-noise)", "on", "noisy gating is part of sparse top-k gating",
                               "Add --top-k.");
    if (o.balance_loss == BalanceLoss::Load && o.balance_weight > 0.0 && !o.gate_noise)
        throw_invalid_argument(function, "balance_loss (--balance-loss)", "load",
                               "the smooth load loss is defined through the gate noise", "Add --gate-noise, or use switch or importance.");
    if (!(o.upcycle_noise >= 0.0) || !std::isfinite(o.upcycle_noise))
        throw_invalid_argument(function, "upcycle_noise (--upcycle-noise)", num(o.upcycle_noise), "must be finite and >= 0");
    if (o.variant == Variant::MetaPi && method == FitMethod::EM)
        throw_invalid_argument(function, "method (--method)", "em", "meta-pi is trained by gradient descent on the squared error",
                               "Use --method gradient (or auto) with --variant meta-pi.");
    if (o.variant == Variant::Hard) {
        if (method == FitMethod::Gradient)
            throw_invalid_argument(function, "method (--method)", "gradient", "the hard variant is trained by classification EM",
                                   "Use --method em (or auto) with --variant hard.");
        if (o.gate != GateKind::Softmax && o.gate != GateKind::Tree)
            throw_invalid_argument(function, "variant (--variant)", "hard",
                                   "routes by the gate's top-1 expert, which needs a softmax or tree gate (it is " +
                                       std::string(to_string(o.gate)) + ")",
                                   "Add --gate softmax (or --tree) with gate inputs.");
    }
    if (o.gate == GateKind::Hash && o.variant != Variant::Standard)
        throw_invalid_argument(function, "variant (--variant)", std::string(to_string(o.variant)),
                               "a hash gate routes every sample to one fixed expert already", "Drop --variant.");
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
    return exp_of_log(log_resp);
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

/// The interventions of one M-step (EM with soft, classification EM with hard responsibilities).
void record_m_step(std::vector<Intervention>& list, int restart, int it, const ExpertUpdateReport& er, const GateUpdateReport& gr) {
    for (Index k : er.kept)
        record(list, {restart, it, "expert_kept", k,
                      "expert " + std::to_string(k + 1) + " fell below the minimum effective size and kept its parameters"});
    for (Index k : er.singular)
        record(list, {restart, it, "singular_covariance", k,
                      "expert " + std::to_string(k + 1) +
                          " had a covariance estimate that is not positive definite and kept its parameters"});
    if (er.rank_deficient)
        record(list, {restart, it, "rank_deficient", -1,
                      "a weighted design matrix was rank deficient (collinear inputs): minimum-norm coefficients used"});
    if (gr.stalled)
        record(list, {restart, it, "gate_stalled", -1,
                      "a Newton step of the gate found no increase even after step halving"});
}

double objective(const Model& model, double log_likelihood, const FitOptions& options) {
    return log_likelihood - gate_penalty(model.gate, options.gate_options.gate_l2);
}

} // namespace

namespace {

/// A fresh gate of the kind the options ask for: uniform weights, zero softmax coefficients.
Gate fresh_gate(const Dataset& data, const FitOptions& options) {
    const Index K = options.n_experts;
    switch (options.gate) {
    case GateKind::Constant: return ConstantGate{Vector::Constant(K, 1.0 / static_cast<double>(K))};
    case GateKind::Softmax: return SoftmaxGate{Matrix::Zero(data.z.cols() + 1, K)};
    case GateKind::Tree: return make_tree_gate(options.tree, data.z.cols());
    case GateKind::Hash: return HashGate{data.key_name, K};
    }
    return ConstantGate{};
}

/// Upcycling: one expert fitted to all the data, copied K times with seeded perturbations.
Experts upcycled_experts(const Dataset& data, const FitOptions& options, const ExpertRegularization& reg, Rng& rng) {
    const Index n = data.n_samples();
    Experts one = initial_experts(options.expert, options.covariance, data, Matrix::Ones(n, 1), reg);
    Experts out = one;
    out.coefficients.assign(static_cast<std::size_t>(options.n_experts), one.coefficients[0]);
    out.covariances.assign(static_cast<std::size_t>(options.n_experts), one.covariances[0]);
    const Vector residual_sd = one.covariances[0].covariance.diagonal().cwiseSqrt();
    const double total = data.weights.sum();
    Vector input_sd = Vector::Ones(data.x.cols());
    for (Index l = 0; l < data.x.cols() && options.expert == ExpertKind::Linear; ++l) {
        const double mean = data.weights.dot(data.x.col(l)) / total;
        const double sd = std::sqrt(data.weights.dot((data.x.col(l).array() - mean).square().matrix()) / total);
        if (sd > 0.0 && std::isfinite(sd)) input_sd(l) = sd;
    }
    for (Matrix& w : out.coefficients)
        for (Index j = 0; j < w.cols(); ++j)
            for (Index r = 0; r < w.rows(); ++r)
                w(r, j) += options.upcycle_noise * standard_normal(rng) * residual_sd(j) / (r == 0 ? 1.0 : input_sd(r - 1));
    return out;
}

} // namespace

Model initialize(const Dataset& data, const FitOptions& options, Rng& rng) {
    const Index K = options.n_experts;
    ExpertRegularization reg = options.regularization;
    if (reg.scale.size() != data.y.cols()) reg.scale = target_scale(data);
    Model model;
    model.target_names = data.target_names;
    if (options.expert == ExpertKind::Linear) model.input_names = data.input_names;
    if (options.gate == GateKind::Softmax || options.gate == GateKind::Tree) model.gate_input_names = data.gate_input_names;
    model.top_k = options.top_k;

    if (options.init == InitMethod::Upcycle) {
        model.experts = upcycled_experts(data, options, reg, rng);
        model.gate = fresh_gate(data, options);
        return model;
    }
    Matrix resp;
    if (options.gate == GateKind::Hash) {
        resp = exp_of_log(gate_log_probabilities(fresh_gate(data, options), data)); // fixed routing: start from it
    } else {
        InitMethod method = options.init;
        if (method == InitMethod::Auto || method == InitMethod::Model)
            method = options.expert == ExpertKind::Linear ? InitMethod::RandomLines : InitMethod::KMeansPlusPlus;
        if (method == InitMethod::Random)
            resp = random_responsibilities(data.n_samples(), K, rng);
        else if (method == InitMethod::RandomLines)
            resp = random_lines_responsibilities(data, options.expert, K, rng);
        else
            resp = kmeans_responsibilities(clustering_features(data, options), data.weights, K, options.kmeans_iter, rng);
    }
    model.experts = initial_experts(options.expert, options.covariance, data, resp, reg);
    Vector nk = resp.transpose() * data.weights;
    nk = nk.cwiseMax(1e-8 * nk.sum()); // an empty initial cluster keeps a tiny weight
    if (options.gate == GateKind::Constant) {
        model.gate = ConstantGate{nk / nk.sum()};
    } else {
        Gate gate = fresh_gate(data, options);
        update_gate(gate, data, resp, options.gate_options);
        model.gate = std::move(gate);
    }
    return model;
}

namespace {

/// fit_em; with final_responsibilities false the result's responsibilities stay empty (fit
/// computes them once, for the best start only).
FitResult fit_em_impl(const Dataset& data, Model init, const FitOptions& options, int restart, bool final_responsibilities) {
    FitResult result;
    ExpertRegularization reg = options.regularization;
    // The scale only multiplies the ridge: not needed (a pass over the data saved) without one.
    if (reg.scale.size() != data.y.cols() && reg.reg_covar != 0.0) reg.scale = target_scale(data);
    const double total = data.weights.sum();

    Model model = std::move(init);
    // The one n×K buffer of the loop, allocated once: the responsibilities h (probabilities),
    // rewritten in place by every E-step, and the n log-normalisers. Kept only for gates whose
    // M-step passes over them (softmax, tree): a constant gate's update comes from the
    // statistics and a hash gate has none (update_gate does not read them), so their loop keeps
    // no responsibilities (the returned model's are computed once, by the last E-step). Top-k
    // routing still forms its n×K gate log-probabilities in every E-step.
    const bool keep_h = std::holds_alternative<SoftmaxGate>(model.gate) || std::holds_alternative<TreeGate>(model.gate);
    Matrix h;
    Vector log_norm;
    // The M-step statistics around the current experts (and a softmax gate's Newton start),
    // gathered by the E-step's pass, and the log-likelihood.
    detail::EStepStatistics stats;
    const double gate_l2 = options.gate_options.gate_l2;
    auto e_step_pass = [&](const Model& m) {
        detail::e_step_with_statistics(m, data, gate_l2, keep_h ? &h : nullptr, keep_h ? &log_norm : nullptr, stats);
        return stats.log_likelihood;
    };
    double current = e_step_pass(model);
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
    // The E-step of the iteration that ends the fit only needs what the result holds: the
    // log-likelihood and (final_responsibilities) the returned model's log responsibilities.
    // An iteration known to be the last (the max_iter-th) or predicted to converge therefore
    // runs a plain E-step (e_step into the result, or log_likelihood) instead of the pass
    // gathering the next M-step's statistics, and the final E-step after the loop is saved. All
    // three compute the log-likelihood with the same kernels and the same blocked sum, so the
    // trace has the same bits either way; a wrong prediction (the fit goes on) costs one more
    // pass, for the statistics, and changes no result.
    bool final_ready = false; // result.responsibilities hold `model`'s
    double previous_change = -1.0;
    double last_change = -1.0;
    auto predicted_last = [&](int it) {
        if (it == options.max_iter) return true;
        // EM converges linearly: the next change is about last·(last / previous). Predicted
        // only well below tol, so that a wrong prediction stays rare.
        if (options.tol <= 0.0 || previous_change <= 0.0 || last_change < 0.0 || last_change >= previous_change) return false;
        return last_change * (last_change / previous_change) < 0.5 * options.tol;
    };
    auto plain_pass = [&](const Model& m) {
        if (!final_responsibilities) return log_likelihood(m, data);
        // The storage of an h (kept, or formed for the exact second pass) becomes the result's:
        // never two n×K arrays at once.
        if (h.size() != 0) result.responsibilities.log_resp = std::move(h);
        e_step(m, data, result.responsibilities);
        return detail::weighted_sum(data.weights, result.responsibilities.log_norm);
    };

    for (int it = 1; it <= options.max_iter; ++it) {
        Model candidate = model;
        // The responsibilities of `model` are needed only for the exact second pass of the
        // expert M-step; without a kept h they are computed for it then.
        if (!keep_h) h.resize(0, 0);
        const auto resp = [&]() -> ConstMatrixRef {
            if (!keep_h && h.size() == 0) e_step_probabilities(model, data, h, log_norm);
            return h;
        };
        const ExpertUpdateReport experts_report =
            detail::update_experts_from(candidate.experts, data, resp, reg, stats.experts);
        // A constant gate's sizes n_k = Σ w h_k are the (0, 0) entries of the statistics; a
        // softmax gate's Newton iteration starts from what the E-step gathered.
        GateUpdateReport gate_report;
        if (auto* constant = std::get_if<ConstantGate>(&candidate.gate)) {
            Vector sizes(static_cast<Index>(stats.experts.size()));
            for (std::size_t k = 0; k < stats.experts.size(); ++k) sizes(static_cast<Index>(k)) = stats.experts[k](0, 0);
            gate_report = update_constant_gate(*constant, sizes);
        } else if (auto* softmax = std::get_if<SoftmaxGate>(&candidate.gate); softmax && stats.has_gate_start) {
            gate_report = detail::update_softmax_gate_from(*softmax, data, h, options.gate_options, stats.gate_start);
        } else {
            gate_report = update_gate(candidate.gate, data, h, options.gate_options);
        }
        record_m_step(result.interventions, restart, it, experts_report, gate_report);

        // The candidate's E-step overwrites the buffers; a rejected (non-finite) candidate
        // ends the loop, and the final E-step below is the kept model's.
        const bool plain = predicted_last(it);
        const double value = plain ? plain_pass(candidate) : e_step_pass(candidate);
        if (!std::isfinite(value)) {
            record(result.interventions, {restart, it, "non_finite", -1,
                                          "the log-likelihood became non-finite; stopped with the last finite model"});
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
        // The hook sees every iteration, the converging one included; stopping a fit that has
        // converged changes nothing.
        const bool go_on =
            !options.on_iteration || options.on_iteration(FitProgress{restart, options.restarts, it, current});
        if (change < options.tol || !go_on || it == options.max_iter) {
            result.converged = change < options.tol;
            result.interrupted = !result.converged && !go_on;
            final_ready = plain && final_responsibilities;
            break;
        }
        previous_change = last_change;
        last_change = change;
        if (plain) {
            // Predicted wrongly: the next M-step needs this model's statistics (and a kept h).
            // The result's n×K storage goes back to h (freed at the next iteration when h is
            // not kept). The same log-likelihood, to the bit.
            if (result.responsibilities.log_resp.size() != 0) h = std::move(result.responsibilities.log_resp);
            const double again = e_step_pass(model);
            assert(again == current);
            static_cast<void>(again);
        }
    }
    if (final_responsibilities && !final_ready) {
        // The log responsibilities of the returned model, written over h's storage when the loop
        // kept one (never two n×K arrays at once); a constant- or hash-gated loop kept none, and
        // they are allocated here (or a plain pass of a rejected candidate left them).
        if (h.size() != 0) result.responsibilities.log_resp = std::move(h);
        if (log_norm.size() != 0) result.responsibilities.log_norm = std::move(log_norm);
        e_step(model, data, result.responsibilities);
    }
    result.model = std::move(model);
    result.log_likelihood = current;
    return result;
}

} // namespace

FitResult fit_em(const Dataset& data, Model init, const FitOptions& options, int restart) {
    return fit_em_impl(data, std::move(init), options, restart, true);
}

namespace {

ObjectiveOptions objective_options(const FitOptions& options, const Dataset& data) {
    ObjectiveOptions o;
    o.gate_l2 = options.gate_options.gate_l2;
    o.reg_covar = options.regularization.reg_covar;
    o.scale = options.regularization.scale.size() == data.y.cols() ? options.regularization.scale : target_scale(data);
    o.balance_weight = options.balance_weight;
    o.balance = options.balance_loss;
    o.capacity_factor = options.capacity_factor;
    return o;
}

} // namespace

namespace {

/// Noisy top-k gating: plain gradient ascent over (model, noise weights U), one fresh noise draw
/// per pass, a backtracking step on that pass's objective, exactly max_iter passes.
FitResult fit_noisy(const Dataset& data, Model init, const FitOptions& options, int restart) {
    FitResult result;
    result.method = FitMethod::Gradient;
    const Index n = data.n_samples();
    const Index K = init.n_experts();
    const Index g1 = data.z.cols() + 1;
    const Model shape = init;
    const Index np = pack_parameters(shape).size();
    Vector theta(np + g1 * K);
    theta.head(np) = pack_parameters(shape);
    theta.tail(g1 * K).setZero(); // softplus(0) = log 2: the noise starts at scale 0.69
    Matrix eps(n, K);
    ObjectiveOptions oo = objective_options(options, data);
    auto eval = [&](const Vector& t, Vector* grad) -> double {
        Model m = shape;
        if (!unpack_parameters(m, t.head(np))) return -std::numeric_limits<double>::infinity();
        const Matrix u = Eigen::Map<const Matrix>(t.data() + np, g1, K);
        ObjectiveOptions with = oo;
        with.noise_weights = &u;
        with.noise_draws = &eps;
        Vector gm;
        Matrix gu;
        const double v = likelihood_objective(m, data, with, grad ? &gm : nullptr, nullptr, grad ? &gu : nullptr);
        if (grad) {
            grad->resize(t.size());
            grad->head(np) = gm;
            grad->tail(g1 * K) = Eigen::Map<const Vector>(gu.data(), g1 * K);
        }
        return v;
    };
    Rng rng(derive_seed(derive_seed(options.seed, 0x6e6f697365ULL), static_cast<std::uint64_t>(restart)));
    double step = 0.0;
    for (int pass = 1; pass <= options.max_iter; ++pass) {
        for (Index k = 0; k < K; ++k)
            for (Index i = 0; i < n; ++i) eps(i, k) = standard_normal(rng);
        Vector grad;
        const double value = eval(theta, &grad);
        if (!std::isfinite(value) || !grad.allFinite()) {
            record(result.interventions, {restart, pass, "non_finite", -1, "the noisy objective became non-finite; stopped"});
            break;
        }
        if (step == 0.0) step = 1.0 / std::max(grad.norm(), 1e-300);
        double reached = value;
        for (int halving = 0; halving < 40; ++halving) {
            const Vector trial = theta + step * grad;
            const double v = eval(trial, nullptr);
            if (std::isfinite(v) && v >= value + 1e-4 * step * grad.squaredNorm()) {
                theta = trial;
                reached = v;
                step *= 2.0;
                break;
            }
            step *= 0.5;
        }
        result.trace.push_back(reached);
        result.iterations = pass;
        if (options.on_iteration && !options.on_iteration(FitProgress{restart, options.restarts, pass, reached})) {
            result.interrupted = true;
            break;
        }
    }
    result.converged = !result.interrupted && result.iterations == options.max_iter;
    Model model = shape;
    unpack_parameters(model, theta.head(np));
    result.log_likelihood = log_likelihood(model, data);
    result.model = std::move(model);
    return result;
}

} // namespace

FitResult fit_gradient(const Dataset& data, Model init, const FitOptions& options, int restart) {
    if (options.gate_noise) return fit_noisy(data, std::move(init), options, restart);
    FitResult result;
    result.method = FitMethod::Gradient;
    const bool meta = options.variant == Variant::MetaPi;
    const ParameterSet set = meta ? ParameterSet::GateAndMeans : ParameterSet::All;
    const ObjectiveOptions oo = objective_options(options, data);
    const double gate_l2 = options.gate_options.gate_l2;
    const Model shape = init;
    auto objective_at = [&](const Vector& theta, Vector& gradient) -> double {
        Model m = shape;
        if (!unpack_parameters(m, theta, set)) return -std::numeric_limits<double>::infinity();
        return meta ? meta_pi_objective(m, data, gate_l2, &gradient) : likelihood_objective(m, data, oo, &gradient);
    };
    Vector trace_gradient;
    const Vector start = pack_parameters(init, set);
    const double start_value = objective_at(start, trace_gradient);
    result.trace.push_back(start_value);
    if (!std::isfinite(start_value)) {
        result.model = std::move(init);
        result.log_likelihood = -std::numeric_limits<double>::infinity();
        record(result.interventions, {restart, 0, "non_finite", -1, "the initial model gives a non-finite objective"});
        return result;
    }
    bool stopped = false;
    auto on_step = [&](int it, double value) {
        result.trace.push_back(value);
        if (options.on_iteration && !options.on_iteration(FitProgress{restart, options.restarts, it, value})) {
            stopped = true;
            return false;
        }
        return true;
    };
    const detail::LbfgsResult r =
        detail::maximize_lbfgs(objective_at, start, options.max_iter, options.tol, data.weights.sum(), on_step);
    // on_step sees every accepted step, so the trace is complete; guard it all the same.
    if (static_cast<int>(result.trace.size()) < r.iterations + 1) result.trace.push_back(r.value);
    Model model = shape;
    unpack_parameters(model, r.theta, set);
    if (meta) gate_weighted_covariances(model, data, oo.reg_covar, oo.scale);
    result.iterations = r.iterations;
    result.converged = r.converged;
    result.interrupted = stopped && !r.converged; // a stop request on the converging step changes nothing
    if (r.line_search_failed)
        record(result.interventions, {restart, r.iterations, "line_search_failed", -1,
                                      "no step along the gradient increased the objective (a maximum to machine "
                                      "precision, or a discontinuity where top-k routing changes); stopped there"});
    result.log_likelihood = log_likelihood(model, data);
    result.model = std::move(model);
    return result;
}

FitResult fit_hard(const Dataset& data, Model init, const FitOptions& options, int restart) {
    FitResult result;
    result.method = FitMethod::EM;
    ExpertRegularization reg = options.regularization;
    if (reg.scale.size() != data.y.cols()) reg.scale = target_scale(data);
    const Index n = data.n_samples();
    const Index K = init.n_experts();
    Model model = std::move(init);
    model.top_k = 0; // trained dense; routed top-1 once fitted
    Eigen::VectorXi labels = Eigen::VectorXi::Constant(n, -1);
    double previous = -std::numeric_limits<double>::infinity();
    for (int it = 0; it <= options.max_iter; ++it) {
        if (it > 0) {
            Matrix hard = Matrix::Zero(n, K);
            for (Index i = 0; i < n; ++i) hard(i, labels(i)) = 1.0;
            Model candidate = model;
            record_m_step(result.interventions, restart, it, update_experts(candidate.experts, data, hard, reg),
                          update_gate(candidate.gate, data, hard, options.gate_options));
            model = std::move(candidate);
        }
        // C-step: each sample to its most responsible expert; classification log-likelihood.
        const Responsibilities resp = e_step(model, data);
        Eigen::VectorXi next(n);
        double value = 0.0;
        for (Index i = 0; i < n; ++i) {
            Index best = 0;
            resp.log_resp.row(i).maxCoeff(&best);
            next(i) = static_cast<int>(best);
            value += data.weights(i) * (resp.log_resp(i, best) + resp.log_norm(i));
        }
        if (!std::isfinite(value)) {
            record(result.interventions, {restart, it, "non_finite", -1,
                                          "the classification log-likelihood became non-finite; stopped"});
            break;
        }
        if (value < previous - 1e-9 * std::max(1.0, std::abs(previous)))
            record(result.interventions, {restart, it, "likelihood_decrease", -1,
                                          "the classification log-likelihood decreased from " + format_number(previous) +
                                              " to " + format_number(value)});
        result.trace.push_back(value);
        result.iterations = it;
        const bool same = (next.array() == labels.array()).all();
        labels = next;
        previous = value;
        // Iteration 0 is the initial C-step (labels start at −1, so it never converges). The
        // hook sees every later iteration, the converging one included.
        const bool go_on = it == 0 || !options.on_iteration ||
                           options.on_iteration(FitProgress{restart, options.restarts, it, value});
        if (same) {
            result.converged = true;
            break;
        }
        if (!go_on) {
            result.interrupted = true;
            break;
        }
    }
    // How often the top-1 gate route and the most responsible expert disagree.
    const Eigen::VectorXi route = route_hard(model.gate, data);
    double differ = 0.0;
    for (Index i = 0; i < n; ++i)
        if (route(i) != labels(i)) differ += data.weights(i);
    result.hard_disagreement = differ / data.weights.sum();
    model.top_k = 1;
    result.log_likelihood = log_likelihood(model, data);
    result.model = std::move(model);
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
    if (options.gate == GateKind::Hash && static_cast<Index>(data.keys.size()) != n)
        throw_invalid_argument(fn, "the hash gate's key column", "not read", "a hash gate routes by a key column",
                               "Name it with --hash-column.");
    if ((options.gate == GateKind::Softmax || options.gate == GateKind::Tree) && data.z.cols() < 1)
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
        init.top_k = opts.top_k; // fit_hard trains dense and routes top-1 at the end
        // A single EM start returns its responsibilities from its last E-step; with several
        // starts no start keeps an n×K array, and the best one's are computed below.
        const bool single = opts.restarts == 1;
        FitResult candidate = opts.variant == Variant::Hard        ? fit_hard(data, std::move(init), opts, r)
                              : resolved_method(opts) == FitMethod::EM ? fit_em_impl(data, std::move(init), opts, r, single)
                                                                       : fit_gradient(data, std::move(init), opts, r);
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
    // The final E-step (fit and predict agree), unless the start already holds it (the same bits).
    if (best.responsibilities.log_resp.rows() != data.n_samples()) best.responsibilities = e_step(best.model, data);
    best.log_likelihood = detail::weighted_sum(data.weights, best.responsibilities.log_norm); // as the trace
    best.n_parameters = n_parameters(best.model);
    best.n_samples = data.weights.sum();
    best.aic = aic(best.log_likelihood, best.n_parameters);
    best.bic = bic(best.log_likelihood, best.n_parameters, best.n_samples);
    best.method = resolved_method(opts);
    best.mse = mean_squared_error(best.model, data);
    if (best.model.top_k > 0 && std::holds_alternative<SoftmaxGate>(best.model.gate) && opts.variant == Variant::Standard)
        likelihood_objective(best.model, data, objective_options(opts, data), nullptr, &best.sparse);
    for (const auto& item : best.interventions)
        best.warnings.push_back("start " + std::to_string(item.restart + 1) + ", iteration " +
                                std::to_string(item.iteration) + ": " + item.message);
    if (best.interrupted)
        best.warnings.push_back("the fit was interrupted after start " + std::to_string(best.restart_log_likelihoods.size()) +
                                " of " + std::to_string(opts.restarts) + "; the best model so far is returned");
    else if (!best.converged)
        best.warnings.push_back(std::string(opts.variant == Variant::Hard ? "classification EM"
                                            : best.method == FitMethod::EM ? "EM" : "gradient ascent") +
                                " did not converge in " + std::to_string(best.iterations) +
                                " iterations (--max-iter " + std::to_string(opts.max_iter) + ", --tol " +
                                format_number(opts.tol) + "); raise --max-iter or --tol");
    return best;
}

} // namespace moekit
