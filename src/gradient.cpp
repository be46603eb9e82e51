#include "moekit/gradient.hpp"

#include "detail.hpp"
#include "moekit/errors.hpp"
#include "moekit/log_sum_exp.hpp"

#include <boost/math/constants/constants.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace moekit {

std::string_view to_string(BalanceLoss loss) {
    switch (loss) {
    case BalanceLoss::Switch: return "switch";
    case BalanceLoss::Importance: return "importance";
    case BalanceLoss::Load: return "load";
    }
    return "?";
}

BalanceLoss parse_balance_loss(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "switch") return BalanceLoss::Switch;
    if (t == "importance") return BalanceLoss::Importance;
    if (t == "load") return BalanceLoss::Load;
    throw_invalid_argument("parse_balance_loss", "balance_loss (--balance-loss)", "'" + std::string(text) + "'",
                           "must be switch, importance or load");
}

namespace {

constexpr double minus_inf = -std::numeric_limits<double>::infinity();

/// The softmax matrices of a gate (flat softmax: one; tree: every node), mutable or not.
template <class G, class F> void for_each_softmax(G& gate, F&& f) {
    if (auto* s = std::get_if<SoftmaxGate>(&gate)) f(s->coefficients);
    if (auto* t = std::get_if<TreeGate>(&gate))
        for (auto& v : t->nodes) f(v);
}

Index gate_size(const Gate& gate) {
    if (const auto* c = std::get_if<ConstantGate>(&gate)) return c->weights.size() - 1;
    Index p = 0;
    for_each_softmax(gate, [&](const Matrix& v) { p += v.rows() * (v.cols() - 1); });
    return p;
}

Index covariance_size(const Experts& e) {
    const Index q = e.n_outputs();
    const Index K = e.n_experts();
    switch (e.covariance_type) {
    case CovarianceType::Full: return K * q * (q + 1) / 2;
    case CovarianceType::Tied: return q * (q + 1) / 2;
    case CovarianceType::Diag: return K * q;
    case CovarianceType::Spherical: return K;
    }
    return 0;
}

/// Gate gradient matrices (as from gate_gradient) in packed order.
void pack_gate_gradient(const std::vector<Matrix>& grads, Vector& out, Index& at) {
    for (const Matrix& g : grads) {
        const Index m = g.rows() * (g.cols() - 1);
        out.segment(at, m) = Eigen::Map<const Vector>(g.data() + g.rows(), m);
        at += m;
    }
}

/// ∂/∂L of −N log|L| − ½ tr(Σ⁻¹ S) is G − N diag(1/L_jj) with G = L⁻ᵀ L⁻¹ S L⁻ᵀ; written in the
/// log-Cholesky coordinates of `type` (off-diagonal L_ab, diagonal log L_jj).
void pack_covariance_gradient(CovarianceType type, const Matrix& lower, const Matrix& s, double mass, Vector& out, Index& at) {
    const Index q = lower.rows();
    const auto l = lower.triangularView<Eigen::Lower>();
    Matrix c = l.solve(s);                                   // L⁻¹ S
    c = l.solve(c.transpose()).eval();                       // L⁻¹ S L⁻ᵀ (symmetric)
    const Matrix g = l.transpose().solve(c);                 // L⁻ᵀ L⁻¹ S L⁻ᵀ
    switch (type) {
    case CovarianceType::Full:
    case CovarianceType::Tied:
        for (Index b = 0; b < q; ++b)
            for (Index a = b; a < q; ++a) out(at++) = a == b ? g(a, a) * lower(a, a) - mass : g(a, b);
        break;
    case CovarianceType::Diag:
        for (Index j = 0; j < q; ++j) out(at++) = g(j, j) * lower(j, j) - mass;
        break;
    case CovarianceType::Spherical: {
        double sum = 0.0;
        for (Index j = 0; j < q; ++j) sum += g(j, j) * lower(j, j) - mass;
        out(at++) = sum;
        break;
    }
    }
}

/// tr(Σ⁻¹ D) with Σ = L Lᵀ and D = diag(d): ‖L⁻¹ D^½‖²_F.
double trace_inverse_times_diag(const Matrix& lower, const Vector& d) {
    const Matrix m = lower.triangularView<Eigen::Lower>().solve(Matrix(d.cwiseSqrt().asDiagonal()));
    return m.squaredNorm();
}

Vector scale_or_unit(const Vector& scale, Index q) { return scale.size() == q ? scale : Vector::Ones(q); }

/// Capacity limit: each expert keeps its ceil(c·n/K) samples of largest gate probability.
/// Modifies log_g (dropped entries −∞, rows renormalised; a row with nothing left stays −∞).
Index apply_capacity(Matrix& log_g, double factor) {
    const Index n = log_g.rows();
    const Index K = log_g.cols();
    const auto capacity = static_cast<Index>(std::ceil(factor * static_cast<double>(n) / static_cast<double>(K)));
    Index dropped = 0;
    std::vector<Index> rows;
    for (Index k = 0; k < K; ++k) {
        rows.clear();
        for (Index i = 0; i < n; ++i)
            if (log_g(i, k) > minus_inf) rows.push_back(i);
        if (static_cast<Index>(rows.size()) <= capacity) continue;
        std::stable_sort(rows.begin(), rows.end(), [&](Index a, Index b) { return log_g(a, k) > log_g(b, k); });
        for (std::size_t r = static_cast<std::size_t>(capacity); r < rows.size(); ++r) {
            log_g(rows[r], k) = minus_inf;
            ++dropped;
        }
    }
    for (Index i = 0; i < n; ++i) {
        const double norm = log_sum_exp(log_g.row(i).transpose());
        if (norm > minus_inf) log_g.row(i).array() -= norm;
    }
    return dropped;
}

/// Switch loss, importance CV² and load CV² of a softmax gate with dense log-probabilities
/// `dense` and routed (top-k) log-probabilities `routed`; with `d_switch` / `d_importance`,
/// also the gradients of the two losses with respect to the scores (n×K).
void balance_terms(const Matrix& dense,
                   const Matrix& routed,
                   const Vector& w,
                   ObjectiveReport& report,
                   Matrix* d_switch,
                   Matrix* d_importance) {
    const Index n = dense.rows();
    const Index K = dense.cols();
    const double total = w.sum();
    const Matrix p = exp_of_log(dense);
    const Matrix g = exp_of_log(routed);
    Vector f = Vector::Zero(K);
    Vector load = Vector::Zero(K);
    for (Index i = 0; i < n; ++i) {
        Index best = 0;
        dense.row(i).maxCoeff(&best);
        f(best) += w(i);
        for (Index k = 0; k < K; ++k)
            if (routed(i, k) > minus_inf) load(k) += w(i);
    }
    f /= total;
    const Vector pk = p.transpose() * w / total;
    const Vector importance = g.transpose() * w;
    const auto kk = static_cast<double>(K);
    report.switch_loss = kk * f.dot(pk);
    report.importance_cv2 = kk * importance.squaredNorm() / (total * total) - 1.0;
    const double load_total = load.sum();
    report.load_cv2 = load_total > 0.0 ? kk * load.squaredNorm() / (load_total * load_total) - 1.0 : 0.0;
    if (d_switch) {
        // ∂/∂s_ij of K Σ_k f_k P_k = K (w_i/W) p_ij (f_j − Σ_k f_k p_ik); f is piecewise constant.
        const Vector pf = p * f;
        *d_switch = kk / total * ((p.array().colwise() * w.array()) * (f.transpose().replicate(n, 1).array() - pf.replicate(1, K).array())).matrix();
    }
    if (d_importance) {
        // ∂/∂s_ij of K Σ_k I_k² / W² − 1 = w_i g_ij (c_j − Σ_k c_k g_ik), c = 2K I / W².
        const Vector c = 2.0 * kk * importance / (total * total);
        const Vector gc = g * c;
        *d_importance = ((g.array().colwise() * w.array()) * (c.transpose().replicate(n, 1).array() - gc.replicate(1, K).array())).matrix();
    }
}

/// Shazeer's smooth load: P_ik = Φ((s_ik − t_ik)/σ_ik), t_ik the k-th largest noisy score
/// among the other experts (the (k+1)-th of all if i's top k holds k, else the k-th), loss
/// CV(load)². Adds the loss's gradient to d_clean (∂/∂s), d_noisy (∂/∂H, through t) and
/// d_sigma (∂/∂σ), each scaled by `scale`. Returns the loss.
double smooth_load_loss(const Matrix& clean,
                        const Matrix& noisy,
                        const Matrix& sigma,
                        const Vector& w,
                        Index top_k,
                        double scale,
                        Matrix* d_clean,
                        Matrix* d_noisy,
                        Matrix* d_sigma) {
    const Index n = clean.rows();
    const Index K = clean.cols();
    if (top_k >= K) return 0.0; // every expert is always routed: the load is constant
    Matrix u(n, K);
    Eigen::MatrixXi other(n, K);
    std::vector<Index> order(static_cast<std::size_t>(K));
    for (Index i = 0; i < n; ++i) {
        std::iota(order.begin(), order.end(), Index{0});
        std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return noisy(i, a) > noisy(i, b); });
        std::vector<bool> in_top(static_cast<std::size_t>(K), false);
        for (Index r = 0; r < top_k; ++r) in_top[static_cast<std::size_t>(order[static_cast<std::size_t>(r)])] = true;
        for (Index k = 0; k < K; ++k) {
            const Index j = order[static_cast<std::size_t>(in_top[static_cast<std::size_t>(k)] ? top_k : top_k - 1)];
            other(i, k) = static_cast<int>(j);
            u(i, k) = (clean(i, k) - noisy(i, j)) / sigma(i, k);
        }
    }
    const Matrix p = u.unaryExpr([](double v) { return 0.5 * std::erfc(-v / std::sqrt(2.0)); });
    const Vector load = p.transpose() * w;
    const double total = load.sum();
    const auto kk = static_cast<double>(K);
    const double loss = kk * load.squaredNorm() / (total * total) - 1.0;
    if (d_clean) {
        const Vector c = 2.0 * kk / (total * total) * (load.array() - load.squaredNorm() / total).matrix();
        for (Index i = 0; i < n; ++i)
            for (Index k = 0; k < K; ++k) {
                const double phi = std::exp(-0.5 * u(i, k) * u(i, k)) / std::sqrt(2.0 * boost::math::constants::pi<double>());
                const double base = scale * c(k) * w(i) * phi / sigma(i, k);
                (*d_clean)(i, k) += base;
                (*d_sigma)(i, k) -= base * u(i, k);
                (*d_noisy)(i, other(i, k)) -= base;
            }
    }
    return loss;
}

/// Z̃ᵀ D − λ V (slopes), column 0 zero: the gradient of a softmax gate from score derivatives D.
Matrix softmax_gradient_from_scores(const Matrix& v, const Matrix& design, const Matrix& d, double gate_l2) {
    Matrix grad = design.transpose() * d;
    if (grad.rows() > 1) grad.bottomRows(grad.rows() - 1) -= gate_l2 * v.bottomRows(v.rows() - 1);
    grad.col(0).setZero();
    return grad;
}

/// Length of the packed vector of `set`.
Index packed_size(const Model& model, ParameterSet set) {
    const Experts& e = model.experts;
    const Index p = e.coefficients.empty() ? 0 : e.coefficients[0].size();
    return gate_size(model.gate) + e.n_experts() * p + (set == ParameterSet::All ? covariance_size(e) : 0);
}

/// Per expert, the weighted share of the samples routed to it (finite log gate entry).
Vector routed_load(const Matrix& log_g, const Vector& routed_weights, double total) {
    Vector load = Vector::Zero(log_g.cols());
    for (Index i = 0; i < log_g.rows(); ++i)
        for (Index k = 0; k < log_g.cols(); ++k)
            if (log_g(i, k) > minus_inf) load(k) += routed_weights(i);
    return load / total;
}

} // namespace

Vector pack_parameters(const Model& model, ParameterSet set) {
    const Experts& e = model.experts;
    const Index K = e.n_experts();
    const Index q = e.n_outputs();
    Vector theta(packed_size(model, set));
    Index at = 0;
    if (const auto* c = std::get_if<ConstantGate>(&model.gate)) {
        const double base = std::log(std::max(c->weights(0), std::numeric_limits<double>::min()));
        for (Index k = 1; k < K; ++k) theta(at++) = std::log(std::max(c->weights(k), std::numeric_limits<double>::min())) - base;
    }
    for_each_softmax(model.gate, [&](const Matrix& v) {
        const Index m = v.rows() * (v.cols() - 1);
        theta.segment(at, m) = Eigen::Map<const Vector>(v.data() + v.rows(), m);
        at += m;
    });
    for (const Matrix& w : e.coefficients) {
        theta.segment(at, w.size()) = Eigen::Map<const Vector>(w.data(), w.size());
        at += w.size();
    }
    if (set == ParameterSet::All) {
        const Index stored = e.covariance_type == CovarianceType::Tied ? std::min<Index>(K, 1) : K;
        for (Index k = 0; k < stored; ++k) {
            const Matrix& l = e.covariances[static_cast<std::size_t>(k)].lower;
            switch (e.covariance_type) {
            case CovarianceType::Full:
            case CovarianceType::Tied:
                for (Index b = 0; b < q; ++b)
                    for (Index a = b; a < q; ++a) theta(at++) = a == b ? std::log(l(a, a)) : l(a, b);
                break;
            case CovarianceType::Diag:
                for (Index j = 0; j < q; ++j) theta(at++) = std::log(l(j, j));
                break;
            case CovarianceType::Spherical: theta(at++) = std::log(l(0, 0)); break;
            }
        }
    }
    return theta;
}

bool unpack_parameters(Model& model, const Vector& theta, ParameterSet set) {
    if (theta.size() != packed_size(model, set) || !theta.allFinite()) return false;
    Model out = model;
    Experts& e = out.experts;
    const Index K = e.n_experts();
    const Index q = e.n_outputs();
    Index at = 0;
    if (auto* c = std::get_if<ConstantGate>(&out.gate)) {
        Vector logits(K);
        logits(0) = 0.0;
        logits.tail(K - 1) = theta.segment(at, K - 1);
        at += K - 1;
        logits.array() -= log_sum_exp(logits);
        c->weights.resize(K);
        for (Index k = 0; k < K; ++k) c->weights(k) = std::exp(logits(k)); // std::exp: see log_plus
        c->weights /= c->weights.sum();
    }
    for_each_softmax(out.gate, [&](Matrix& v) {
        const Index m = v.rows() * (v.cols() - 1);
        Eigen::Map<Vector>(v.data() + v.rows(), m) = theta.segment(at, m);
        at += m;
    });
    for (Matrix& w : e.coefficients) {
        Eigen::Map<Vector>(w.data(), w.size()) = theta.segment(at, w.size());
        at += w.size();
    }
    if (set == ParameterSet::All) {
        const Index stored = e.covariance_type == CovarianceType::Tied ? std::min<Index>(K, 1) : K;
        for (Index k = 0; k < stored; ++k) {
            Matrix l = Matrix::Zero(q, q);
            switch (e.covariance_type) {
            case CovarianceType::Full:
            case CovarianceType::Tied:
                for (Index b = 0; b < q; ++b)
                    for (Index a = b; a < q; ++a) l(a, b) = a == b ? std::exp(theta(at++)) : theta(at++);
                break;
            case CovarianceType::Diag:
                for (Index j = 0; j < q; ++j) l(j, j) = std::exp(theta(at++));
                break;
            case CovarianceType::Spherical: {
                const double s = std::exp(theta(at++));
                for (Index j = 0; j < q; ++j) l(j, j) = s;
                break;
            }
            }
            CovarianceFactor f;
            f.lower = l;
            const Matrix product = l * l.transpose();
            f.covariance = 0.5 * (product + product.transpose());
            f.log_det = detail::log_det_of_factor(l);
            if (!f.covariance.allFinite() || !std::isfinite(f.log_det) || !(l.diagonal().array() > 0.0).all()) return false;
            if (e.covariance_type == CovarianceType::Tied)
                for (auto& c : e.covariances) c = f;
            else
                e.covariances[static_cast<std::size_t>(k)] = std::move(f);
        }
    }
    model = std::move(out);
    return true;
}

double likelihood_objective(const Model& model,
                            const Dataset& data,
                            const ObjectiveOptions& options,
                            Vector* gradient,
                            ObjectiveReport* report,
                            Matrix* noise_gradient) {
    const Experts& e = model.experts;
    const Index n = data.n_samples();
    const Index K = e.n_experts();
    const Index q = e.n_outputs();
    const double total = data.weights.sum();
    const auto* softmax = std::get_if<SoftmaxGate>(&model.gate);
    const bool sparse = softmax != nullptr && model.top_k >= 1;

    ObjectiveReport local;
    ObjectiveReport& rep = report ? *report : local;
    rep = ObjectiveReport{};

    // Gate (routed; noisy scores H = z̃V + ε ⊙ softplus(z̃U) when noise is given), capacity,
    // experts, responsibilities.
    const bool noisy = sparse && options.noise_weights != nullptr && options.noise_draws != nullptr;
    Matrix gate_x, clean, noisy_scores, sigma, sigma_slope;
    Matrix log_g;
    Matrix dense_clean; // dense log gate of a clean sparse evaluation
    if (noisy) {
        gate_x = gate_design(data);
        clean = gate_x * softmax->coefficients;
        const Matrix a = gate_x * *options.noise_weights;
        // softplus(a) = log(1 + e^a) and its derivative, the logistic function, without overflow.
        sigma = a.unaryExpr([](double v) { return v > 0.0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); });
        sigma_slope = a.unaryExpr([](double v) { return v >= 0.0 ? 1.0 / (1.0 + std::exp(-v)) : std::exp(v) / (1.0 + std::exp(v)); });
        noisy_scores = clean + options.noise_draws->cwiseProduct(sigma);
        log_g = noisy_scores;
        log_softmax_rows_in_place(log_g);
        keep_top_k(log_g, model.top_k);
    } else if (sparse) {
        dense_clean = gate_log_probabilities(model.gate, data); // once: also the balance terms' input
        log_g = dense_clean;
        keep_top_k(log_g, model.top_k);
    } else {
        log_g = gate_log_probabilities(model, data);
    }
    if (sparse && options.capacity_factor > 0.0) rep.dropped = apply_capacity(log_g, options.capacity_factor);
    const Matrix log_p = expert_log_densities(e, data);
    Matrix joint = log_g + log_p;
    for (Index i = 0; i < n; ++i)
        for (Index k = 0; k < K; ++k)
            if (log_g(i, k) == minus_inf) joint(i, k) = minus_inf; // −∞ + finite, never NaN
    const Vector log_norm = log_sum_exp_rows(joint);
    Vector w = data.weights;
    for (Index i = 0; i < n; ++i)
        if (log_norm(i) == minus_inf && log_g.row(i).maxCoeff() == minus_inf) {
            w(i) = 0.0; // dropped by every expert: left out of this evaluation
            ++rep.dropped_samples;
        }
    double ll = 0.0;
    for (Index i = 0; i < n; ++i)
        if (w(i) > 0.0) ll += w(i) * log_norm(i);
    rep.log_likelihood = ll;
    rep.load = routed_load(log_g, w, total); // w is 0 for the samples left out

    // Penalties.
    double penalty = gate_penalty(model.gate, options.gate_l2);
    const Vector d = options.reg_covar * scale_or_unit(options.scale, q);
    const bool tied = e.covariance_type == CovarianceType::Tied;
    const double c = tied ? total : total / static_cast<double>(K);
    if (options.reg_covar > 0.0) {
        const Index stored = tied ? 1 : K;
        for (Index k = 0; k < stored; ++k)
            penalty += 0.5 * c * trace_inverse_times_diag(e.covariances[static_cast<std::size_t>(k)].lower, d);
    }
    rep.penalty = penalty;

    Matrix d_balance;                   // ∂(α·balance)/∂(scores the softmax acts on)
    Matrix d_load_clean, d_load_sigma; // noisy load loss: ∂/∂ clean scores, ∂/∂σ
    double balance = 0.0;
    if (sparse) {
        Matrix dense = noisy ? noisy_scores : std::move(dense_clean);
        if (noisy) log_softmax_rows_in_place(dense);
        Matrix routed = dense;
        keep_top_k(routed, model.top_k); // before the capacity limit
        const bool weighted = options.balance_weight > 0.0 && gradient != nullptr;
        Matrix d_switch, d_importance;
        balance_terms(dense, routed, data.weights, rep,
                      weighted && options.balance == BalanceLoss::Switch ? &d_switch : nullptr,
                      weighted && options.balance == BalanceLoss::Importance ? &d_importance : nullptr);
        if (options.balance == BalanceLoss::Load) {
            if (!noisy && weighted)
                throw_invalid_argument("likelihood_objective", "options.balance", "load",
                                       "the smooth load loss needs noisy gating", "Give noise weights and draws.");
            if (!noisy) {
                // Evaluating the clean model (after training): the load of counts, CV(load)².
                balance = rep.load_cv2;
            } else if (weighted) {
                d_balance = Matrix::Zero(n, K);
                d_load_clean = Matrix::Zero(n, K);
                d_load_sigma = Matrix::Zero(n, K);
            }
            if (noisy)
                balance = smooth_load_loss(clean, noisy_scores, sigma, data.weights, model.top_k, options.balance_weight,
                                           weighted ? &d_load_clean : nullptr, weighted ? &d_balance : nullptr,
                                           weighted ? &d_load_sigma : nullptr);
        } else {
            balance = options.balance == BalanceLoss::Switch ? rep.switch_loss : rep.importance_cv2;
            if (weighted) d_balance = options.balance_weight * (options.balance == BalanceLoss::Switch ? d_switch : d_importance);
        }
        rep.balance_loss = balance;
    }
    const double value = ll - penalty - options.balance_weight * balance;
    if (!gradient) return value;

    // Responsibilities h_ik (0 for dropped samples and unrouted experts).
    Matrix h(n, K);
    for (Index i = 0; i < n; ++i)
        for (Index k = 0; k < K; ++k)
            h(i, k) = (w(i) > 0.0 && joint(i, k) > minus_inf) ? std::exp(joint(i, k) - log_norm(i)) : 0.0;

    Vector& grad = *gradient;
    grad.resize(packed_size(model, ParameterSet::All));
    Index at = 0;
    if (sparse) {
        // Σ_i w_i z̃_i (h_ik − g_ik) over the routed experts, minus α ∂(balance)/∂V.
        const Matrix g = exp_of_log(log_g);
        Matrix scores = ((h - g).array().colwise() * w.array()).matrix(); // ∂/∂(noisy) scores
        if (d_balance.size() > 0) scores -= d_balance;
        if (noisy) {
            // H = s + ε ⊙ softplus(z̃U): ∂/∂s = ∂/∂H (+ the load loss's own ∂/∂s), and
            // ∂/∂U = z̃ᵀ [(∂/∂H ⊙ ε − ∂load/∂σ) ⊙ logistic(z̃U)].
            Matrix d_sigma = scores.cwiseProduct(*options.noise_draws);
            Matrix d_clean = scores;
            if (d_load_clean.size() > 0) {
                d_clean -= d_load_clean;
                d_sigma -= d_load_sigma;
            }
            const Matrix gm = softmax_gradient_from_scores(softmax->coefficients, gate_x, d_clean, options.gate_l2);
            pack_gate_gradient({gm}, grad, at);
            if (noise_gradient) *noise_gradient = gate_x.transpose() * d_sigma.cwiseProduct(sigma_slope);
        } else {
            const Matrix gm = softmax_gradient_from_scores(softmax->coefficients, gate_design(data), scores, options.gate_l2);
            pack_gate_gradient({gm}, grad, at);
        }
    } else {
        // gate_gradient multiplies by the data's weights; dropped samples have h = 0 only under
        // capacity limits, which apply to sparse softmax gates alone, so the weights agree here.
        pack_gate_gradient(gate_gradient(model.gate, data, h, options.gate_l2), grad, at);
    }

    const Matrix design = expert_design(e, data);
    Matrix s_tied = Matrix::Zero(q, q);
    double mass_tied = 0.0;
    std::vector<Matrix> s_k(static_cast<std::size_t>(K));
    std::vector<double> mass_k(static_cast<std::size_t>(K));
    for (Index k = 0; k < K; ++k) {
        const auto uk = static_cast<std::size_t>(k);
        const Vector a = w.cwiseProduct(h.col(k));
        const Matrix r = data.y - design * e.coefficients[uk];
        const auto l = e.covariances[uk].lower.triangularView<Eigen::Lower>();
        const Matrix u = l.transpose().solve(l.solve(r.transpose())); // Σ⁻¹ rᵢ, q×n
        const Matrix gw = design.transpose() * (u.transpose().array().colwise() * a.array()).matrix();
        grad.segment(at, gw.size()) = Eigen::Map<const Vector>(gw.data(), gw.size());
        at += gw.size();
        s_k[uk] = r.transpose() * (r.array().colwise() * a.array()).matrix();
        mass_k[uk] = a.sum();
        s_tied += s_k[uk];
        mass_tied += mass_k[uk];
    }
    if (tied) {
        s_tied += c * Matrix(d.asDiagonal());
        pack_covariance_gradient(e.covariance_type, e.covariances[0].lower, s_tied, mass_tied, grad, at);
    } else {
        for (Index k = 0; k < K; ++k) {
            const auto uk = static_cast<std::size_t>(k);
            s_k[uk] += c * Matrix(d.asDiagonal());
            pack_covariance_gradient(e.covariance_type, e.covariances[uk].lower, s_k[uk], mass_k[uk], grad, at);
        }
    }
    return value;
}

double meta_pi_objective(const Model& model, const Dataset& data, double gate_l2, Vector* gradient) {
    const Experts& e = model.experts;
    const Index n = data.n_samples();
    const Index K = e.n_experts();
    const Matrix g = gate_probabilities(model, data);
    std::vector<Matrix> f(static_cast<std::size_t>(K));
    Matrix mean = Matrix::Zero(n, e.n_outputs());
    for (Index k = 0; k < K; ++k) {
        f[static_cast<std::size_t>(k)] = expert_mean(e, data, k);
        mean += (f[static_cast<std::size_t>(k)].array().colwise() * g.col(k).array()).matrix();
    }
    const Matrix err = data.y - mean;
    const double value = -0.5 * data.weights.dot(err.rowwise().squaredNorm()) - gate_penalty(model.gate, gate_l2);
    if (!gradient) return value;

    Vector& grad = *gradient;
    grad.resize(packed_size(model, ParameterSet::GateAndMeans));
    Index at = 0;
    // Gate: ∂/∂ log g_ik = w_i g_ik f_ikᵀ e_i; gate_gradient takes "responsibilities" r with rows
    // summing to 1, so pass r_ik = g_ik (f_ik − ŷ_i)ᵀ e_i + g_ik (the added g cancels exactly).
    Matrix r(n, K);
    for (Index k = 0; k < K; ++k)
        r.col(k) = g.col(k).cwiseProduct(((f[static_cast<std::size_t>(k)] - mean).cwiseProduct(err)).rowwise().sum()) + g.col(k);
    pack_gate_gradient(gate_gradient(model.gate, data, r, gate_l2), grad, at);
    const Matrix design = expert_design(e, data);
    for (Index k = 0; k < K; ++k) {
        const Vector a = data.weights.cwiseProduct(g.col(k));
        const Matrix gw = design.transpose() * (err.array().colwise() * a.array()).matrix();
        grad.segment(at, gw.size()) = Eigen::Map<const Vector>(gw.data(), gw.size());
        at += gw.size();
    }
    return value;
}

double mean_squared_error(const Model& model, const Dataset& data) {
    const Matrix err = data.y - predict_mean(model, data);
    return data.weights.dot(err.rowwise().squaredNorm()) / (static_cast<double>(err.cols()) * data.weights.sum());
}

ObjectiveReport balance_losses(const Model& model, const Dataset& data) {
    if (!std::holds_alternative<SoftmaxGate>(model.gate))
        throw_invalid_argument("balance_losses", "model.gate", std::string(to_string(gate_kind(model.gate))),
                               "balance losses are defined for a softmax gate");
    ObjectiveReport rep;
    const Matrix dense = gate_log_probabilities(model.gate, data);
    Matrix routed = dense;
    keep_top_k(routed, model.top_k);
    balance_terms(dense, routed, data.weights, rep, nullptr, nullptr);
    rep.load = routed_load(routed, data.weights, data.weights.sum());
    return rep;
}

void gate_weighted_covariances(Model& model, const Dataset& data, double reg_covar, const Vector& scale) {
    Experts& e = model.experts;
    const Index K = e.n_experts();
    const Index q = e.n_outputs();
    const Matrix g = gate_probabilities(model, data);
    const Vector ridge = reg_covar * scale_or_unit(scale, q);
    const double total = data.weights.sum();
    std::vector<Matrix> s(static_cast<std::size_t>(K));
    std::vector<double> mass(static_cast<std::size_t>(K));
    Matrix pooled = Matrix::Zero(q, q);
    for (Index k = 0; k < K; ++k) {
        const Vector a = data.weights.cwiseProduct(g.col(k));
        const Matrix r = data.y - expert_mean(e, data, k);
        s[static_cast<std::size_t>(k)] = r.transpose() * (r.array().colwise() * a.array()).matrix();
        mass[static_cast<std::size_t>(k)] = a.sum();
        pooled += s[static_cast<std::size_t>(k)];
    }
    pooled /= total;
    const Matrix fallback = detail::structured_covariance(e.covariance_type, pooled, ridge);
    for (Index k = 0; k < K; ++k) {
        const auto uk = static_cast<std::size_t>(k);
        Matrix m = e.covariance_type == CovarianceType::Tied || mass[uk] < 1.0 ? fallback : detail::structured_covariance(e.covariance_type, s[uk] / mass[uk], ridge);
        auto f = try_factor(m);
        if (!f) f = try_factor(fallback);
        if (f) e.covariances[uk] = *std::move(f);
    }
}

} // namespace moekit
