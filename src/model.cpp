#include "moekit/model.hpp"

#include "moekit/errors.hpp"
#include "moekit/log_sum_exp.hpp"

#include "blocks.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace moekit {

namespace {

/// Per-thread work space of the blocked E-step.
struct JointScratch {
    detail::ExpertScratch experts;
    Matrix gate;  ///< block_rows × K gate log-probabilities (softmax and tree gates)
    detail::TreeGateScratch tree;
    Matrix joint; ///< block_rows × K (log_likelihood_samples)
    std::vector<double> log_weights; ///< K: a constant gate's log π_k
};

JointScratch make_joint_scratch(const Model& model) {
    JointScratch s;
    detail::reserve_scratch(s.experts, model.experts);
    if (std::holds_alternative<SoftmaxGate>(model.gate) || std::holds_alternative<TreeGate>(model.gate))
        s.gate.resize(detail::block_rows, model.n_experts());
    if (const auto* t = std::get_if<TreeGate>(&model.gate)) detail::reserve_scratch(s.tree, *t);
    if (std::holds_alternative<ConstantGate>(model.gate)) s.log_weights.resize(static_cast<std::size_t>(model.n_experts()));
    return s;
}

/// log g_k(z_i) of the whole data for sparse top-k gating, which has no blocked kernel here;
/// empty for the dense gates, which are computed block by block (a hash gate's keys are
/// checked here, before the blocked pass).
Matrix unblocked_gate(const Model& model, const Dataset& data) {
    if (model.top_k == 0) {
        if (std::holds_alternative<HashGate>(model.gate) && static_cast<Index>(data.keys.size()) != data.n_samples())
            return gate_log_probabilities(model, data); // throws the message for missing keys
        return Matrix();
    }
    return gate_log_probabilities(model, data);
}

/// log g_k(z_i) + log p_k(y_i | x_i) for rows [begin, begin + rows), written to out[i + k·ld].
/// With `gate_prob` (a dense softmax gate only), the gate's probabilities g_ik go to
/// gate_prob[i + k·ldp] and its log-probabilities stay in s.gate: the same bits as without
/// (softmax_block and log_softmax_block agree), one exponential per entry more.
void joint_block(const Model& model,
                 const Dataset& data,
                 const Matrix& gate_log,
                 Index begin,
                 Index rows,
                 double* out,
                 Index ld,
                 JointScratch& s,
                 double* gate_prob = nullptr,
                 Index ldp = 0) {
    const Index K = model.n_experts();
    const auto* constant = gate_log.size() == 0 ? std::get_if<ConstantGate>(&model.gate) : nullptr;
    if (constant) {
        // log π_k enters the density kernel's constant: no extra pass over the block.
        s.log_weights.resize(static_cast<std::size_t>(K));
        for (Index k = 0; k < K; ++k) s.log_weights[static_cast<std::size_t>(k)] = std::log(constant->weights(k));
        detail::expert_log_densities_block(model.experts, data, begin, rows, out, ld, s.experts, s.log_weights.data());
        return;
    }
    detail::expert_log_densities_block(model.experts, data, begin, rows, out, ld, s.experts);
    if (gate_log.size() > 0) {
        for (Index k = 0; k < K; ++k)
            Eigen::Map<Eigen::ArrayXd>(out + k * ld, rows) += gate_log.col(k).segment(begin, rows).array();
    } else if (const auto* g = std::get_if<SoftmaxGate>(&model.gate)) {
        // log softmax(Vᵀ z̃_i), as gate_log_probabilities: scores z̃_i V, then the row log-softmax.
        double* scores = s.gate.data();
        const Index lds = s.gate.outerStride();
        detail::softmax_gate_scores_block(g->coefficients, data, begin, rows, scores, lds);
        double norm[detail::block_rows];
        if (gate_prob)
            detail::softmax_block(scores, lds, rows, K, norm, gate_prob, ldp);
        else
            detail::log_softmax_block(scores, lds, rows, K, norm);
        for (Index k = 0; k < K; ++k)
            Eigen::Map<Eigen::ArrayXd>(out + k * ld, rows) += Eigen::Map<const Eigen::ArrayXd>(scores + k * lds, rows);
    } else if (const auto* t = std::get_if<TreeGate>(&model.gate)) {
        // The leaf log-probabilities of the tree, as gate_log_probabilities, per block.
        const Index lds = s.gate.outerStride();
        detail::tree_gate_log_probabilities_block(*t, data, begin, rows, s.gate.data(), lds, s.tree);
        for (Index k = 0; k < K; ++k)
            Eigen::Map<Eigen::ArrayXd>(out + k * ld, rows) += Eigen::Map<const Eigen::ArrayXd>(s.gate.data() + k * lds, rows);
    } else if (const auto* h = std::get_if<HashGate>(&model.gate)) {
        // log g = 0 at each sample's hashed expert, −∞ elsewhere (gate_log_probabilities), added
        // as that matrix would be: no n×K array per E-step.
        constexpr double minus_infinity = -std::numeric_limits<double>::infinity();
        for (Index i = 0; i < rows; ++i) {
            const Index e = hash_expert(data.keys[static_cast<std::size_t>(begin + i)], h->n_experts);
            for (Index k = 0; k < K; ++k) out[i + k * ld] += k == e ? 0.0 : minus_infinity;
        }
    }
}

} // namespace

Matrix log_joint(const Model& model, const Dataset& data) {
    const Index n = data.n_samples();
    Matrix out(n, model.n_experts());
    const Matrix gate_log = unblocked_gate(model, data);
    std::vector<JointScratch> scratch;
    detail::for_each_block(
        n, scratch, [&] { return make_joint_scratch(model); }, [&](Index b, JointScratch& s) {
            const Index begin = detail::block_begin(b);
            joint_block(model, data, gate_log, begin, detail::block_size(b, n), out.data() + begin, n, s);
        });
    return out;
}

Responsibilities e_step(const Model& model, const Dataset& data) {
    Responsibilities r;
    e_step(model, data, r);
    return r;
}

namespace {

/// The blocked E-step: per sample block the log joint into out (n×K, column-major), then
/// normalise(block, rows, begin) while the block is in cache.
template <class Normalise>
void blocked_e_step(const Model& model, const Dataset& data, double* out, Normalise normalise) {
    const Index n = data.n_samples();
    const Matrix gate_log = unblocked_gate(model, data);
    std::vector<JointScratch> scratch;
    detail::for_each_block(
        n, scratch, [&] { return make_joint_scratch(model); }, [&](Index b, JointScratch& s) {
            const Index begin = detail::block_begin(b);
            const Index rows = detail::block_size(b, n);
            joint_block(model, data, gate_log, begin, rows, out + begin, n, s);
            normalise(out + begin, rows, begin);
        });
}

} // namespace

void e_step(const Model& model, const Dataset& data, Responsibilities& r) {
    const Index n = data.n_samples();
    const Index K = model.n_experts();
    r.log_resp.resize(n, K);
    r.log_norm.resize(n);
    blocked_e_step(model, data, r.log_resp.data(), [&](double* block, Index rows, Index begin) {
        detail::log_softmax_block(block, n, rows, K, r.log_norm.data() + begin);
    });
}

void e_step_probabilities(const Model& model, const Dataset& data, Matrix& h, Vector& log_norm) {
    // As e_step, but the block's log joint becomes probabilities in place (softmax_block).
    const Index n = data.n_samples();
    const Index K = model.n_experts();
    h.resize(n, K);
    log_norm.resize(n);
    blocked_e_step(model, data, h.data(), [&](double* block, Index rows, Index begin) {
        detail::softmax_block(block, n, rows, K, log_norm.data() + begin);
    });
}

void detail::e_step_with_statistics(const Model& model,
                                    const Dataset& data,
                                    double gate_l2,
                                    Matrix* h,
                                    Vector* log_norm,
                                    EStepStatistics& statistics) {
    // e_step_probabilities, with the M-step statistics of each block gathered right after its
    // responsibilities, while the block's data and h are in cache. The statistics are an
    // ordered reduction over the blocks (reduce_blocks): bit-identical for any number of
    // threads, and to the passes of update_experts and of the gate's Newton iteration, which
    // compute each block with the same kernels.
    const Index n = data.n_samples();
    const Index K = model.n_experts();
    const ExpertKind kind = model.experts.kind;
    const Index m = statistics_size(kind, data);
    const bool diagonal = diagonal_statistics(model.experts.covariance_type);
    const bool store = h != nullptr;
    if (store) {
        h->resize(n, K);
        log_norm->resize(n);
    }
    statistics.experts.assign(static_cast<std::size_t>(K), Matrix::Zero(m, m));
    const Matrix gate_log = unblocked_gate(model, data);
    // A dense softmax gate (K > 1): its scores and log-softmax are computed here anyway; with
    // the probabilities g kept, the block's share of the gate's Newton start follows from h.
    const SoftmaxGate* softmax =
        store && gate_log.size() == 0 ? std::get_if<SoftmaxGate>(&model.gate) : nullptr;
    if (softmax && K < 2) softmax = nullptr;
    const Index mg = data.z.cols() + 1;
    std::optional<SoftmaxObjectiveTotals> gate_totals;
    if (softmax) gate_totals.emplace(mg, K, true, true);
    // Slot: the experts' statistics, Σ w log-normaliser, then the gate's partial.
    const Index expert_slot = K * m * m;
    const Index gate_offset = expert_slot + 1;
    // Linear experts: the E-step's residuals are kept for the statistics (K·q columns of a
    // block, up to 32 MB per thread), not formed twice.
    const bool keep = kind == ExpertKind::Linear && K * data.y.cols() * block_rows <= (Index{1} << 22);
    struct Scratch {
        JointScratch joint;
        StatisticsScratch stats;
        Matrix kept;                        ///< block_rows × (K·q) residuals
        Matrix g;                           ///< block_rows × K gate probabilities
        Matrix h;                           ///< block_rows × K responsibilities (not stored)
        AlignedBuffer block_norm;           ///< block_rows log-normalisers (not stored)
        std::vector<const double*> columns; ///< the gate design columns of a block
    };
    std::vector<Scratch> scratch;
    double total = 0.0;
    reduce_blocks(
        n,
        gate_offset + (gate_totals ? gate_totals->slot_size() : 0),
        scratch,
        [&] {
            Scratch s{make_joint_scratch(model), make_statistics_scratch(kind, data), Matrix(), Matrix(), Matrix(), {}, {}};
            if (keep) {
                s.kept.resize(block_rows, K * data.y.cols());
                s.joint.experts.keep = s.kept.data();
                s.joint.experts.keep_ld = block_rows;
            }
            if (!store) {
                s.h.resize(block_rows, K);
                s.block_norm.resize(static_cast<std::size_t>(block_rows));
            }
            if (softmax) {
                s.g.resize(block_rows, K);
                s.columns.resize(static_cast<std::size_t>(mg));
            }
            return s;
        },
        [&](Index b, double* slot, Scratch& s) {
            const Index begin = block_begin(b);
            const Index rows = block_size(b, n);
            // The block's log joint, then responsibilities: in h (ld n) or in the thread's buffer.
            double* out = store ? h->data() + begin : s.h.data();
            const Index ld = store ? n : block_rows;
            double* norm = store ? log_norm->data() + begin : s.block_norm.data();
            // With a softmax gate the gate's probabilities g are kept for its Newton start.
            joint_block(model, data, gate_log, begin, rows, out, ld, s.joint, softmax ? s.g.data() : nullptr,
                        s.g.outerStride());
            softmax_block(out, ld, rows, K, norm);
            const RespView resp{out, ld, begin};
            shifted_statistics_block(kind, data, resp, model.experts.coefficients, diagonal, b, slot, s.stats,
                                     keep ? s.kept.data() : nullptr);
            // Σ_i w_i log p(y_i | x_i) of the block, in row order.
            const double* w = data.weights.data() + begin;
            slot[expert_slot] = weighted_sum_block(w, norm, rows);
            if (softmax) {
                s.columns[0] = ones_column();
                for (Index j = 1; j < mg; ++j)
                    s.columns[static_cast<std::size_t>(j)] = data.z.data() + (j - 1) * data.z.outerStride() + begin;
                softmax_objective_block(s.columns.data(), mg, w, out, ld, s.joint.gate.data(), s.joint.gate.outerStride(),
                                        s.g.data(), s.g.outerStride(), rows, K, true, true, slot + gate_offset);
            }
        },
        [&](const double* slot, Index) {
            add_statistics(statistics.experts, slot);
            total += slot[expert_slot];
            if (gate_totals) gate_totals->add(slot + gate_offset);
        });
    statistics.log_likelihood = total;
    statistics.has_gate_start = softmax != nullptr;
    if (softmax)
        statistics.gate_start.value = gate_totals->finish(softmax->coefficients, gate_l2, &statistics.gate_start.gradient,
                                                          &statistics.gate_start.hessian);
}

Vector log_likelihood_samples(const Model& model, const Dataset& data) {
    // Block by block: only a block_rows × K buffer per thread, never n×K.
    const Index n = data.n_samples();
    const Index K = model.n_experts();
    Vector out(n);
    const Matrix gate_log = unblocked_gate(model, data);
    std::vector<JointScratch> scratch;
    detail::for_each_block(
        n,
        scratch,
        [&] {
            JointScratch s = make_joint_scratch(model);
            s.joint.resize(detail::block_rows, K);
            return s;
        },
        [&](Index b, JointScratch& s) {
            const Index begin = detail::block_begin(b);
            const Index rows = detail::block_size(b, n);
            joint_block(model, data, gate_log, begin, rows, s.joint.data(), s.joint.outerStride(), s);
            detail::log_sum_exp_block(s.joint.data(), s.joint.outerStride(), rows, K, out.data() + begin);
        });
    return out;
}

double log_likelihood(const Model& model, const Dataset& data) {
    return detail::weighted_sum(data.weights, log_likelihood_samples(model, data));
}

Matrix gate_log_probabilities(const Model& model, const Dataset& data) {
    if (model.top_k == 1 && std::holds_alternative<TreeGate>(model.gate)) {
        const Eigen::VectorXi route = route_hard(model.gate, data);
        Matrix out = Matrix::Constant(data.n_samples(), model.n_experts(), -std::numeric_limits<double>::infinity());
        for (Index i = 0; i < data.n_samples(); ++i) out(i, route(i)) = 0.0;
        return out;
    }
    Matrix log_g = gate_log_probabilities(model.gate, data);
    keep_top_k(log_g, model.top_k);
    return log_g;
}

Matrix gate_probabilities(const Model& model, const Dataset& data) {
    return exp_of_log(gate_log_probabilities(model, data));
}

Matrix predict_mean(const Model& model, const Dataset& data) {
    const Matrix g = gate_probabilities(model, data);
    Matrix mean = Matrix::Zero(data.n_samples(), model.experts.n_outputs());
    for (Index k = 0; k < model.n_experts(); ++k)
        mean += (expert_mean(model.experts, data, k).array().colwise() * g.col(k).array()).matrix();
    return mean;
}

Eigen::VectorXi predict_expert(const Model& model, const Dataset& data) {
    const Matrix log_g = gate_log_probabilities(model, data);
    Eigen::VectorXi out(log_g.rows());
    for (Index i = 0; i < log_g.rows(); ++i) {
        Index best = 0;
        log_g.row(i).maxCoeff(&best);
        out(i) = static_cast<int>(best);
    }
    return out;
}

Matrix predict_mean_hard(const Model& model, const Dataset& data) {
    const Eigen::VectorXi route = route_hard(model.gate, data);
    Matrix mean(data.n_samples(), model.experts.n_outputs());
    for (Index k = 0; k < model.n_experts(); ++k) {
        if ((route.array() != static_cast<int>(k)).all()) continue;
        const Matrix mk = expert_mean(model.experts, data, k);
        for (Index i = 0; i < data.n_samples(); ++i)
            if (route(i) == k) mean.row(i) = mk.row(i);
    }
    return mean;
}

Vector log_likelihood_samples_hard(const Model& model, const Dataset& data) {
    const Eigen::VectorXi route = route_hard(model.gate, data);
    const Matrix log_p = expert_log_densities(model.experts, data);
    Vector out(data.n_samples());
    for (Index i = 0; i < data.n_samples(); ++i) out(i) = log_p(i, route(i));
    return out;
}

Matrix responsibility_matrix(const Responsibilities& r) { return exp_of_log(r.log_resp); }

Vector expert_sizes(const Responsibilities& r, const Dataset& data) {
    return responsibility_matrix(r).transpose() * data.weights;
}

Index n_parameters(const Model& model) {
    return n_parameters(model.gate) + n_parameters(model.experts);
}

namespace {

[[noreturn]] void invalid_model(const char* function, const std::string& what, const std::string& requirement) {
    throw_invalid_argument(function, what, "inconsistent", requirement, "The model is corrupt; refit it.");
}

std::string expert_name(Index k) { return "expert " + std::to_string(k + 1); }

} // namespace

void validate(const Model& model, const char* function) {
    const Experts& e = model.experts;
    const Index K = e.n_experts();
    if (K < 1)
        throw_invalid_argument(function, "n_experts", std::to_string(K), "must be >= 1");
    if (static_cast<Index>(e.covariances.size()) != K)
        invalid_model(function, "the number of covariances", "must equal the number of experts");
    if (n_experts(model.gate) != K)
        invalid_model(function, "the gate", "must have one column per expert");
    const Index q = e.n_outputs();
    const Index p = e.coefficients[0].rows();
    if (q < 1) invalid_model(function, "the number of targets", "must be >= 1");
    if (e.kind == ExpertKind::Gaussian && p != 1)
        invalid_model(function, "a Gaussian expert's mean", "must be one row");
    for (Index k = 0; k < K; ++k) {
        const auto uk = static_cast<std::size_t>(k);
        const Matrix& w = e.coefficients[uk];
        if (w.rows() != p || w.cols() != q)
            invalid_model(function, expert_name(k) + " coefficients", "must all have the same shape");
        if (!w.allFinite()) invalid_model(function, expert_name(k) + " coefficients", "must be finite");
        const CovarianceFactor& c = e.covariances[uk];
        if (c.covariance.rows() != q || c.covariance.cols() != q || c.lower.rows() != q || c.lower.cols() != q)
            invalid_model(function, expert_name(k) + " covariance", "must be q×q");
        if (!c.covariance.allFinite() || !c.lower.allFinite() || !std::isfinite(c.log_det))
            invalid_model(function, expert_name(k) + " covariance", "must be finite");
        const double scale = c.covariance.cwiseAbs().maxCoeff();
        if (!((c.lower * c.lower.transpose() - c.covariance).cwiseAbs().maxCoeff() <= 1e-10 * scale) ||
            !(c.lower.diagonal().array() > 0.0).all())
            invalid_model(function, expert_name(k) + " covariance", "must be SPD with a matching Cholesky factor");
        const Matrix off = c.covariance - Matrix(c.covariance.diagonal().asDiagonal());
        if ((e.covariance_type == CovarianceType::Diag || e.covariance_type == CovarianceType::Spherical) &&
            off.cwiseAbs().maxCoeff() > 0.0)
            invalid_model(function, expert_name(k) + " covariance", "must be diagonal for this covariance type");
        if (e.covariance_type == CovarianceType::Spherical &&
            c.covariance.diagonal().maxCoeff() != c.covariance.diagonal().minCoeff())
            invalid_model(function, expert_name(k) + " covariance", "must be a multiple of the identity");
        if (e.covariance_type == CovarianceType::Tied && c.covariance != e.covariances[0].covariance)
            invalid_model(function, expert_name(k) + " covariance", "must equal the shared (tied) covariance");
    }
    if (static_cast<Index>(model.target_names.size()) != q)
        invalid_model(function, "target names", "must name every target");
    if (static_cast<Index>(model.input_names.size()) != p - 1)
        invalid_model(function, "input names", "must name every expert input");
    if (model.top_k < 0 || model.top_k > K)
        invalid_model(function, "top_k", "must be between 0 (dense) and the number of experts");
    if (model.top_k > 1 && std::holds_alternative<TreeGate>(model.gate))
        invalid_model(function, "top_k", "must be 0 or 1 for a tree gate");
    if (const auto* h = std::get_if<HashGate>(&model.gate)) {
        if (h->column.empty()) invalid_model(function, "the hash gate", "must name its key column");
        if (!model.gate_input_names.empty())
            invalid_model(function, "gate input names", "must be empty for a hash gate");
    } else if (const auto* g = std::get_if<ConstantGate>(&model.gate)) {
        if (!g->weights.allFinite() || (g->weights.array() < 0.0).any())
            invalid_model(function, "the gate weights", "must be finite and non-negative");
        if (std::abs(g->weights.sum() - 1.0) > 1e-9)
            invalid_model(function, "the gate weights", "must sum to 1");
        if (!model.gate_input_names.empty())
            invalid_model(function, "gate input names", "must be empty for a constant gate");
    } else {
        std::vector<const Matrix*> softmaxes;
        if (const auto* s = std::get_if<SoftmaxGate>(&model.gate)) {
            softmaxes.push_back(&s->coefficients);
        } else {
            const TreeGate& t = std::get<TreeGate>(model.gate);
            if (t.branching.empty() || static_cast<Index>(t.nodes.size()) != tree_n_nodes(t.branching))
                invalid_model(function, "the tree gate", "must have one softmax per internal node");
            const std::vector<Index> depths = tree_node_depths(t.branching);
            for (std::size_t j = 0; j < t.nodes.size(); ++j) {
                if (t.nodes[j].cols() != t.branching[static_cast<std::size_t>(depths[j])])
                    invalid_model(function, "tree node " + std::to_string(j + 1), "must have one column per child");
                softmaxes.push_back(&t.nodes[j]);
            }
        }
        for (const Matrix* v : softmaxes) {
            if (!v->allFinite()) invalid_model(function, "the gate coefficients", "must be finite");
            if (!v->col(0).isZero(0.0)) invalid_model(function, "the gate coefficients", "must have column 0 equal to 0");
            if (static_cast<Index>(model.gate_input_names.size()) != v->rows() - 1 || v->rows() != softmaxes[0]->rows())
                invalid_model(function, "gate input names", "must name every gate input");
        }
    }
}

void check_compatible(const Model& model, const Dataset& data, bool need_targets, const char* function) {
    const Index d = model.experts.n_inputs();
    const Index q = model.experts.n_outputs();
    Index g = 0;
    if (const auto* s = std::get_if<SoftmaxGate>(&model.gate)) g = s->coefficients.rows() - 1;
    if (const auto* t = std::get_if<TreeGate>(&model.gate)) g = t->nodes[0].rows() - 1;
    if (data.x.cols() != d)
        throw_invalid_argument(function, "the number of expert inputs", std::to_string(data.x.cols()),
                               "the model needs " + std::to_string(d));
    if (data.z.cols() != g)
        throw_invalid_argument(function, "the number of gate inputs", std::to_string(data.z.cols()),
                               "the model needs " + std::to_string(g));
    if (const auto* h = std::get_if<HashGate>(&model.gate);
        h && static_cast<Index>(data.keys.size()) != data.n_samples())
        throw_invalid_argument(function, "the key column '" + h->column + "'", "not read",
                               "the model's hash gate routes by it", "Read it with --hash-column " + h->column + ".");
    if ((need_targets || data.y.cols() > 0) && data.y.cols() != q)
        throw_invalid_argument(function, "the number of targets", std::to_string(data.y.cols()),
                               "the model needs " + std::to_string(q));
}

} // namespace moekit
