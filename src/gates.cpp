#include "moekit/gates.hpp"

#include "blocks.hpp"
#include "detail.hpp"
#include "linear_scores.hpp"
#include "multi_crossprod.hpp"
#include "moekit/errors.hpp"
#include "moekit/log_sum_exp.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace moekit {

std::string_view to_string(GateKind kind) {
    switch (kind) {
    case GateKind::Constant: return "constant";
    case GateKind::Softmax: return "softmax";
    case GateKind::Tree: return "tree";
    case GateKind::Hash: return "hash";
    }
    return "?";
}

GateKind parse_gate_kind(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "constant") return GateKind::Constant;
    if (t == "softmax") return GateKind::Softmax;
    if (t == "tree") return GateKind::Tree;
    if (t == "hash") return GateKind::Hash;
    throw_invalid_argument(
        "parse_gate_kind", "gate", "'" + std::string(text) + "'", "must be constant, softmax, tree or hash");
}

GateKind gate_kind(const Gate& gate) {
    if (std::holds_alternative<ConstantGate>(gate)) return GateKind::Constant;
    if (std::holds_alternative<SoftmaxGate>(gate)) return GateKind::Softmax;
    if (std::holds_alternative<HashGate>(gate)) return GateKind::Hash;
    return GateKind::Tree;
}

Matrix gate_design(const Dataset& data) {
    const Index n = data.n_samples();
    Matrix design(n, data.z.cols() + 1);
    design.col(0).setOnes();
    design.rightCols(data.z.cols()) = data.z;
    return design;
}

namespace {

/// The columns of a gate design, as the blocked passes read them: an explicit n×m matrix, or
/// (1, z) straight from the data with the intercept column implicit (no n×(g+1) copy per
/// M-step).
struct DesignColumns {
    const double* data;
    Index stride;
    Index n;
    Index m;
    bool intercept;
    /// Rows [begin, begin + block) of column j.
    const double* column(Index j, Index begin) const {
        if (intercept) return j == 0 ? detail::ones_column() : data + (j - 1) * stride + begin;
        return data + j * stride + begin;
    }
};

DesignColumns columns_of(const ConstMatrixRef& design) {
    return {design.data(), design.outerStride(), design.rows(), design.cols(), false};
}

DesignColumns columns_of(const Dataset& data) {
    return {data.z.data(), data.z.outerStride(), data.n_samples(), data.z.cols() + 1, true};
}

/// What a softmax's Newton objective is fitted to: per-sample weights and soft targets.
/// Flat (children == 0): the weights w_i and the targets h_ik, the K columns of `resp`. A node
/// of a tree gate (children = b): the targets are the posteriors of the node's b children given
/// the node, h_child / h_node, and the weights w_i h_node, where h_node and h_child are sums of
/// the columns [first, first + span) of `resp` (b groups of span / b leaves). They are formed
/// per sample block inside every pass (no n-sized targets), see node_targets_block.
struct GateTargets {
    const double* weights;
    const double* resp;
    Index ld;
    Index first = 0;
    Index span = 0;
    Index children = 0;
};

GateTargets flat_targets(const ConstVectorRef& weights, const ConstMatrixRef& resp) {
    return {weights.data(), resp.data(), resp.outerStride()};
}

/// One objective evaluation of a pass over the data: the softmax with coefficients V fitted to
/// `targets`; its penalised objective goes to `value`, and the gradient and Hessian with
/// respect to the free coefficients to the vectors given (none when null).
struct Evaluation {
    const Matrix* coefficients = nullptr;
    const GateTargets* targets = nullptr;
    Vector* gradient = nullptr;
    Matrix* hessian = nullptr;
    double value = 0.0;
};

void evaluate_objectives(const DesignColumns& design, std::vector<Evaluation>& evaluations, double gate_l2);

double objective_impl(const SoftmaxGate& gate,
                      const DesignColumns& design,
                      const GateTargets& targets,
                      double gate_l2,
                      Vector* gradient,
                      Matrix* hessian) {
    std::vector<Evaluation> one{{&gate.coefficients, &targets, gradient, hessian}};
    evaluate_objectives(design, one, gate_l2);
    return one[0].value;
}

/// The scores z̃_i V of rows [begin, begin + rows) of the design, written to out[i + k·ld]
/// (K = v.cols() columns): v_0k (with the implicit intercept) or 0, then + v_jk z̃_ij for each
/// further column in order, per sample in a register (detail::linear_scores_block; the E-step
/// forms a flat softmax's scores the same way, so all passes give the same bits).
void softmax_scores_block(const Matrix& v, const DesignColumns& design, Index begin, Index rows, double* out, Index ld) {
    constexpr Index max_inline = 64;
    const double* inline_columns[max_inline];
    std::vector<const double*> many;
    const double** columns = inline_columns;
    if (design.m > max_inline) {
        many.resize(static_cast<std::size_t>(design.m));
        columns = many.data();
    }
    for (Index j = 0; j < design.m; ++j) columns[j] = design.column(j, begin);
    detail::linear_scores_block(v, columns, design.intercept, rows, out, ld);
}

/// Row-wise log-softmax of the scores z̃ V: n×K, block by block in parallel.
Matrix softmax_log_probabilities(const Matrix& coefficients, const DesignColumns& design) {
    const Index n = design.n;
    const Index K = coefficients.cols();
    Matrix out(n, K);
    std::vector<detail::AlignedBuffer> scratch;
    detail::for_each_block(
        n, scratch, [] { return detail::AlignedBuffer(static_cast<std::size_t>(detail::block_rows)); },
        [&](Index b, detail::AlignedBuffer& norm) {
            const Index begin = detail::block_begin(b);
            const Index rows = detail::block_size(b, n);
            softmax_scores_block(coefficients, design, begin, rows, out.data() + begin, n);
            detail::log_softmax_block(out.data() + begin, n, rows, K, norm.data());
        });
    return out;
}

Matrix softmax_log_probabilities(const Matrix& coefficients, const ConstMatrixRef& design) {
    return softmax_log_probabilities(coefficients, columns_of(design));
}

double penalty_of(const Matrix& coefficients, double gate_l2) {
    if (coefficients.rows() <= 1) return 0.0;
    return 0.5 * gate_l2 * coefficients.bottomRows(coefficients.rows() - 1).squaredNorm();
}

Matrix from_free(const Vector& theta, Index rows, Index K) {
    Matrix v = Matrix::Zero(rows, K);
    v.rightCols(K - 1) = Eigen::Map<const Matrix>(theta.data(), rows, K - 1);
    return v;
}

/// IRLS/Newton steps on one softmax: maximises Σ_i a_i Σ_c t_ic log softmax(Vᵀ z̃_i)_c − penalty
/// over the free columns 1.. of V, with step halving so the objective never decreases.
///
/// Written as a state machine (request() the next evaluation, take() its value) so that
/// several independent softmaxes, the nodes of a tree, advance in lockstep with their
/// objectives evaluated in one pass over the data per round (newton_lockstep). Each does
/// exactly the steps, and gets exactly the bits, it would alone.
class NewtonSoftmax {
  public:
    /// `start`: the objective, gradient and Hessian at the current coefficients, already
    /// evaluated (by the E-step's pass, the same bits): the first pass over the data is skipped.
    NewtonSoftmax(Matrix& coefficients,
                  const GateTargets& targets,
                  const GateOptions& options,
                  const detail::SoftmaxStart* start = nullptr)
        : out_(&coefficients),
          targets_(targets),
          options_(&options),
          K_(coefficients.cols()),
          rows_(coefficients.rows()),
          gate_{coefficients} {
        if (start) {
            gradient_ = start->gradient;
            hessian_ = start->hessian;
            take(start->value); // as if the initial evaluation had just returned
        }
    }

    bool done() const { return phase_ == Phase::Done; }
    const GateUpdateReport& report() const { return report_; }

    /// The evaluation needed next (pointers into this object: keep it in place until take()).
    Evaluation request() {
        if (phase_ == Phase::Trial) {
            // The full step is evaluated together with its gradient and Hessian: it is almost
            // always accepted, and its derivatives are the next step's, so the pass over the
            // data that would recompute them is saved (the objective is computed the same way
            // in both passes, so the result is unchanged). Not on the last step, whose
            // derivatives would go unused, nor for halved steps.
            // A step whose predicted increase is already tiny is almost surely the last: its
            // Hessian would only confirm that (the next prediction, quadratically smaller, is
            // below the stopping level), so it is not gathered; the stopping test then uses
            // the previous Hessian, and if that does not stop, a refresh pass computes the
            // current one (begin_step).
            const bool derivatives = trial_derivatives();
            const bool hessian = derivatives && !small_step_;
            return {&trial_.coefficients, &targets_, derivatives ? &trial_gradient_ : nullptr,
                    hessian ? &trial_hessian_ : nullptr};
        }
        return {&gate_.coefficients, &targets_, &gradient_, &hessian_}; // initial or refresh
    }

    /// The value of request()'s evaluation (its gradient and Hessian already written).
    void take(double value) {
        switch (phase_) {
        case Phase::Initial:
            current_ = value;
            report_.objective = current_;
            if (K_ == 1) {
                phase_ = Phase::Done;
                return;
            }
            begin_step();
            return;
        case Phase::Refresh:
            current_ = value;
            ++step_;
            begin_step();
            return;
        case Phase::RefreshHessian:
            // The same point and objective (the same bits); now with its own Hessian.
            current_ = value;
            hessian_stale_ = false;
            begin_step();
            return;
        case Phase::Trial:
            if (std::isfinite(value) && value >= current_) {
                const bool derivatives = trial_derivatives();
                gate_ = std::move(trial_);
                const bool accepted = value > current_;
                current_ = value;
                report_.step_halvings += halving_;
                if (!accepted) {
                    report_.stalled = true;
                    finish();
                    return;
                }
                ++report_.newton_steps;
                if (last_) {
                    finish();
                    return;
                }
                if (derivatives) {
                    gradient_.swap(trial_gradient_);
                    if (small_step_)
                        hessian_stale_ = true; // the previous point's, kept for the stopping test
                    else
                        hessian_.swap(trial_hessian_);
                    ++step_;
                    begin_step();
                } else {
                    phase_ = Phase::Refresh;
                }
                return;
            }
            t_ *= 0.5;
            if (++halving_ > 30) {
                report_.stalled = true;
                finish();
                return;
            }
            make_trial();
            return;
        case Phase::Done: return;
        }
    }

  private:
    enum class Phase { Initial, Trial, Refresh, RefreshHessian, Done };

    bool trial_derivatives() const { return !last_ && halving_ == 0; }

    void begin_step() {
        if (step_ >= options_->newton_steps) {
            finish();
            return;
        }
        // Newton direction: (−H) Δ = ∇. −H is positive semidefinite; LDLT copes with the
        // semidefinite case (a child with no mass anywhere), and a failure falls back to the
        // gradient direction.
        Eigen::LDLT<Matrix> ldlt(-hessian_);
        direction_ = ldlt.solve(gradient_);
        if (ldlt.info() != Eigen::Success || !direction_.allFinite() || gradient_.dot(direction_) <= 0.0)
            direction_ = gradient_;
        // Stop when the predicted increase ½ ∇ᵀΔ is at round-off level.
        const double predicted = 0.5 * gradient_.dot(direction_);
        const double scale = 1.0 + std::abs(current_);
        if (predicted <= 1e-13 * scale) {
            finish();
            return;
        }
        if (hessian_stale_) {
            // The previous Hessian does not confirm the stop: the current one decides.
            ++report_.hessian_refreshes;
            phase_ = Phase::RefreshHessian;
            return;
        }
        // Quadratic convergence: the next prediction is about C·predicted² (C of order 1 to 5
        // here), below the stopping level once predicted < 1e-7 of the objective.
        small_step_ = predicted < 1e-7 * scale;
        const Matrix free = gate_.coefficients.rightCols(K_ - 1);
        base_ = Eigen::Map<const Vector>(free.data(), rows_ * (K_ - 1));
        last_ = step_ + 1 == options_->newton_steps;
        t_ = 1.0;
        halving_ = 0;
        make_trial();
        phase_ = Phase::Trial;
    }

    void make_trial() { trial_ = SoftmaxGate{from_free(base_ + t_ * direction_, rows_, K_)}; }

    void finish() {
        report_.objective = current_;
        *out_ = std::move(gate_.coefficients);
        phase_ = Phase::Done;
    }

    Matrix* out_;
    GateTargets targets_;
    const GateOptions* options_;
    Index K_;
    Index rows_;
    SoftmaxGate gate_;
    SoftmaxGate trial_;
    Vector gradient_;
    Matrix hessian_;
    Vector trial_gradient_;
    Matrix trial_hessian_;
    Vector direction_;
    Vector base_;
    double current_ = 0.0;
    double t_ = 1.0;
    int step_ = 0;
    int halving_ = 0;
    bool last_ = false;
    bool small_step_ = false;    ///< this step's predicted increase is tiny: skip its Hessian
    bool hessian_stale_ = false; ///< hessian_ is the previous point's
    Phase phase_ = Phase::Initial;
    GateUpdateReport report_;
};

/// Runs independent Newton iterations in lockstep: each round evaluates every unfinished
/// one's pending objective in a single pass over the data (evaluate_objectives).
void newton_lockstep(std::vector<NewtonSoftmax>& solvers, const DesignColumns& design, double gate_l2) {
    std::vector<Evaluation> evaluations;
    std::vector<std::size_t> owner;
    while (true) {
        evaluations.clear();
        owner.clear();
        for (std::size_t j = 0; j < solvers.size(); ++j)
            if (!solvers[j].done()) {
                evaluations.push_back(solvers[j].request());
                owner.push_back(j);
            }
        if (evaluations.empty()) return;
        evaluate_objectives(design, evaluations, gate_l2);
        for (std::size_t e = 0; e < evaluations.size(); ++e) solvers[owner[e]].take(evaluations[e].value);
    }
}

GateUpdateReport newton_softmax(Matrix& coefficients,
                                const DesignColumns& design,
                                const GateTargets& targets,
                                const GateOptions& options) {
    std::vector<NewtonSoftmax> solver;
    solver.emplace_back(coefficients, targets, options);
    newton_lockstep(solver, design, options.gate_l2);
    return solver[0].report();
}

/// Leaves under one node of depth l: Π_{m>=l} branching[m].
/// 0 at each sample's hashed expert, −∞ elsewhere.
Matrix hash_log_probabilities(const HashGate& gate, const Dataset& data) {
    const Index n = data.n_samples();
    if (static_cast<Index>(data.keys.size()) != n)
        throw_invalid_argument("gate_log_probabilities", "data.keys", std::to_string(data.keys.size()) + " keys",
                               "a hash gate needs one key per sample (" + std::to_string(n) + ")",
                               "Read the key column '" + gate.column + "' (--hash-column).");
    Matrix out = Matrix::Constant(n, gate.n_experts, -std::numeric_limits<double>::infinity());
    for (Index i = 0; i < n; ++i) out(i, hash_expert(data.keys[static_cast<std::size_t>(i)], gate.n_experts)) = 0.0;
    return out;
}

Index leaves_below(const std::vector<Index>& branching, std::size_t depth) {
    Index span = 1;
    for (std::size_t m = depth; m < branching.size(); ++m) span *= branching[m];
    return span;
}

/// Walks the internal nodes breadth-first, calling f(node, depth, position, first_leaf, span).
template <class F> void for_each_node(const std::vector<Index>& branching, F&& f) {
    Index node = 0;
    Index count = 1;
    for (std::size_t l = 0; l < branching.size(); ++l) {
        const Index span = leaves_below(branching, l);
        for (Index p = 0; p < count; ++p, ++node) f(node, static_cast<Index>(l), p, p * span, span);
        count *= branching[l];
    }
}

/// Leaf log-probabilities of a tree for rows [begin, begin + rows) of the design, written to
/// out[i + k·ld] (K leaves): the downward pass, summing log-softmax along each path, one node
/// at a time while the block is in cache. A node's path is kept in the column of its first
/// leaf; its children's paths are written from the last child to the first, so the first
/// child's overwrites the node's only when nothing needs it any more. `scores`: block_rows ×
/// (largest branching) doubles; `norm`: block_rows doubles.
void tree_block(const TreeGate& tree,
                const DesignColumns& design,
                Index begin,
                Index rows,
                double* out,
                Index ld,
                double* scores,
                double* norm) {
    const Index lds = detail::block_rows;
    Index node = 0;
    Index count = 1;
    for (std::size_t l = 0; l < tree.branching.size(); ++l) {
        const Index b = tree.branching[l];
        const Index span = leaves_below(tree.branching, l);
        const Index child_span = span / b;
        for (Index p = 0; p < count; ++p, ++node) {
            const Matrix& v = tree.nodes[static_cast<std::size_t>(node)];
            if (l == 0) {
                // The root's log-softmax goes straight to its children's columns.
                softmax_scores_block(v, design, begin, rows, out, child_span * ld);
                detail::log_softmax_block(out, child_span * ld, rows, b, norm);
                continue;
            }
            softmax_scores_block(v, design, begin, rows, scores, lds);
            detail::log_softmax_block(scores, lds, rows, b, norm);
            const double* path = out + p * span * ld;
            for (Index c = b - 1; c >= 0; --c) {
                double* child = out + (p * span + c * child_span) * ld;
                const double* local = scores + c * lds;
                for (Index i = 0; i < rows; ++i) child[i] = path[i] + local[i];
            }
        }
        count *= b;
    }
}

Index max_branching(const TreeGate& tree) {
    return *std::max_element(tree.branching.begin(), tree.branching.end());
}

/// Leaf log-probabilities of a tree: n×K, block by block in parallel (tree_block).
Matrix tree_log_probabilities(const TreeGate& tree, const DesignColumns& design) {
    const Index n = design.n;
    Matrix out(n, leaves_below(tree.branching, 0));
    std::vector<Matrix> scratch;
    detail::for_each_block(
        n, scratch, [&] { return Matrix(detail::block_rows, max_branching(tree) + 1); },
        [&](Index b, Matrix& s) {
            const Index begin = detail::block_begin(b);
            tree_block(tree, design, begin, detail::block_size(b, n), out.data() + begin, n, s.data(),
                       s.data() + max_branching(tree) * detail::block_rows);
        });
    return out;
}

/// The targets and weights of a tree node (GateTargets) for rows [begin, begin + rows):
/// t[i + c·block_rows] = h_child c / h_node, w[i] = w_i h_node, where h_child is the sum of the
/// child's leaf responsibilities (in leaf order) and h_node the sum of the children's. Where the
/// node's mass is 0 (its log mass −∞; also NaN or +∞: log mass not finite) the targets are
/// uniform, 1/b, as they always were. The responsibilities are probabilities in [0, 1], so the
/// sums cannot underflow below their largest term, and the ratio equals exp(log h_child −
/// log h_node) of the log-space formulation up to rounding (without the error of |log h|·ε
/// that the log/exp round trip adds). `node`: block_rows doubles; `child`: b pointers.
void node_targets_block(
    const GateTargets& tg, Index begin, Index rows, double* t, double* w, double* node, const double** child) {
    const Index b = tg.children;
    const Index child_span = tg.span / b;
    auto leaf = [&](Index k) { return tg.resp + (tg.first + k) * tg.ld + begin; };
    // The children's masses (child[c]): the leaf column itself for a single leaf, else the sum
    // into t.
    for (Index c = 0; c < b; ++c) {
        if (child_span == 1) {
            child[static_cast<std::size_t>(c)] = leaf(c);
            continue;
        }
        double* tc = t + c * detail::block_rows;
        const double* h0 = leaf(c * child_span);
        const double* h1 = leaf(c * child_span + 1);
        for (Index i = 0; i < rows; ++i) tc[i] = h0[i] + h1[i];
        for (Index k = 2; k < child_span; ++k) {
            const double* hk = leaf(c * child_span + k);
            for (Index i = 0; i < rows; ++i) tc[i] += hk[i];
        }
        child[static_cast<std::size_t>(c)] = tc;
    }
    {
        const double* c0 = child[0];
        const double* c1 = child[1];
        for (Index i = 0; i < rows; ++i) node[i] = c0[i] + c1[i];
        for (Index c = 2; c < b; ++c) {
            const double* cc = child[static_cast<std::size_t>(c)];
            for (Index i = 0; i < rows; ++i) node[i] += cc[i];
        }
    }
    const double uniform = 1.0 / static_cast<double>(b);
    constexpr double largest = std::numeric_limits<double>::max();
    for (Index c = 0; c < b; ++c) {
        const double* cc = child[static_cast<std::size_t>(c)];
        double* tc = t + c * detail::block_rows;
        for (Index i = 0; i < rows; ++i) tc[i] = node[i] > 0.0 && node[i] <= largest ? cc[i] / node[i] : uniform;
    }
    const double* wi = tg.weights + begin;
    for (Index i = 0; i < rows; ++i) w[i] = wi[i] * node[i];
}

GateUpdateReport update_tree(TreeGate& tree, const Dataset& data, const ConstMatrixRef& resp, const GateOptions& options) {
    // Each node's softmax is refitted on its soft targets, the posterior of each child given
    // the node, h_child / h_node, weighted by w_i h_node (formed block by block inside the
    // Newton passes: node_targets_block). The nodes' problems are independent (each depends
    // only on the responsibilities), so all of them run in lockstep, one pass over the data
    // per round for all the nodes instead of one per node.
    std::vector<NewtonSoftmax> solvers;
    solvers.reserve(tree.nodes.size());
    for_each_node(tree.branching, [&](Index node, Index depth, Index, Index first, Index span) {
        GateTargets targets = flat_targets(data.weights, resp);
        targets.first = first;
        targets.span = span;
        targets.children = tree.branching[static_cast<std::size_t>(depth)];
        solvers.emplace_back(tree.nodes[static_cast<std::size_t>(node)], targets, options);
    });
    newton_lockstep(solvers, columns_of(data), options.gate_l2);
    GateUpdateReport total;
    for (const NewtonSoftmax& solver : solvers) {
        const GateUpdateReport& r = solver.report();
        total.newton_steps += r.newton_steps;
        total.step_halvings += r.step_halvings;
        total.hessian_refreshes += r.hessian_refreshes;
        total.stalled = total.stalled || r.stalled;
        total.objective += r.objective;
    }
    return total;
}

} // namespace

double softmax_gate_objective(const SoftmaxGate& gate,
                              const ConstMatrixRef& design,
                              const ConstVectorRef& weights,
                              const ConstMatrixRef& resp,
                              double gate_l2,
                              Vector* gradient,
                              Matrix* hessian) {
    return objective_impl(gate, columns_of(design), flat_targets(weights, resp), gate_l2, gradient, hessian);
}

namespace {

void evaluate_objectives(const DesignColumns& design, std::vector<Evaluation>& evaluations, double gate_l2) {
    // n samples, m = g + 1 design columns; per evaluation K experts (children), free parameters
    // columns 1..K−1. One blocked pass over the samples (blocks.hpp) for all the evaluations:
    // per block and evaluation the log-softmax of z̃ V, the objective, the gradient
    // Σ_i w_i z̃_i (h_ik − g_ik) and the Hessian blocks −Σ_i w_i g_ik (δ_kl − g_il) z̃_i z̃_iᵀ
    // (k <= l), each into its own part of the block's slot; block partials added in block
    // order. An evaluation's arithmetic does not depend on the others in the pass.
    const Index n = design.n;
    const Index m = design.m;
    struct Sums {
        Index K;
        Index offset;
        detail::SoftmaxObjectiveTotals totals;
    };
    std::vector<Sums> sums;
    Index slot_size = 0;
    Index max_K = 1;
    bool any_derivatives = false;
    bool any_node = false;
    for (const Evaluation& e : evaluations) {
        const Index K = e.coefficients->cols();
        Sums t{K, slot_size, detail::SoftmaxObjectiveTotals(m, K, e.gradient != nullptr, e.hessian != nullptr)};
        slot_size += t.totals.slot_size();
        max_K = std::max(max_K, K);
        any_derivatives = any_derivatives || e.gradient || e.hessian;
        any_node = any_node || e.targets->children > 0;
        sums.push_back(std::move(t));
    }
    struct Scratch {
        Matrix log_g;                       ///< block_rows × K
        Matrix g;                           ///< block_rows × K (gradient or Hessian)
        detail::AlignedBuffer norm;         ///< block_rows
        std::vector<const double*> columns; ///< the m design columns of the block
        Matrix t;                           ///< block_rows × K: a tree node's targets
        detail::AlignedBuffer w;            ///< block_rows: a tree node's weights
        std::vector<const double*> child;   ///< K: a tree node's child masses
    };
    std::vector<Scratch> scratch;
    detail::reduce_blocks(
        n,
        slot_size,
        scratch,
        [&] {
            Scratch s;
            s.log_g.resize(detail::block_rows, max_K);
            if (any_derivatives) s.g.resize(detail::block_rows, max_K);
            s.norm.resize(static_cast<std::size_t>(detail::block_rows));
            s.columns.resize(static_cast<std::size_t>(m));
            if (any_node) {
                s.t.resize(detail::block_rows, max_K);
                s.w.resize(static_cast<std::size_t>(detail::block_rows));
                s.child.resize(static_cast<std::size_t>(max_K));
            }
            return s;
        },
        [&](Index b, double* block_slot, Scratch& s) {
            const Index begin = detail::block_begin(b);
            const Index rows = detail::block_size(b, n);
            for (Index j = 0; j < m; ++j) s.columns[static_cast<std::size_t>(j)] = design.column(j, begin);
            for (std::size_t e = 0; e < evaluations.size(); ++e) {
                const Evaluation& ev = evaluations[e];
                const GateTargets& targets = *ev.targets;
                const Matrix& v = *ev.coefficients;
                const Index K = sums[e].K;
                double* slot = block_slot + sums[e].offset;
                const bool want_gradient = ev.gradient != nullptr || ev.hessian != nullptr;
                // The weights and the targets h_k (column k of resp, or a tree node's, formed
                // here into scratch; the norm buffer is free until the log-softmax below).
                const double* w = targets.weights + begin;
                const double* h0 = targets.resp + begin;
                Index ldh = targets.ld;
                if (targets.children > 0) {
                    node_targets_block(targets, begin, rows, s.t.data(), s.w.data(), s.norm.data(), s.child.data());
                    w = s.w.data();
                    h0 = s.t.data();
                    ldh = s.t.outerStride();
                }
                const Index ld = s.log_g.outerStride();
                // Scores z̃_i V, then their row log-softmax.
                softmax_scores_block(v, design, begin, rows, s.log_g.data(), ld);
                // Row log-softmax in place, and with derivatives also the probabilities g (one
                // exp per entry).
                const Index ldg = s.g.outerStride();
                if (want_gradient)
                    detail::softmax_block(s.log_g.data(), ld, rows, K, s.norm.data(), s.g.data(), ldg);
                else
                    detail::log_softmax_block(s.log_g.data(), ld, rows, K, s.norm.data());
                detail::softmax_objective_block(s.columns.data(), m, w, h0, ldh, s.log_g.data(), ld, s.g.data(), ldg, rows,
                                                K, ev.gradient != nullptr, ev.hessian != nullptr, slot);
            }
        },
        [&](const double* block_slot, Index) {
            for (std::size_t e = 0; e < evaluations.size(); ++e) sums[e].totals.add(block_slot + sums[e].offset);
        });
    for (std::size_t e = 0; e < evaluations.size(); ++e) {
        Evaluation& ev = evaluations[e];
        ev.value = sums[e].totals.finish(*ev.coefficients, gate_l2, ev.gradient, ev.hessian);
    }
}

} // namespace

namespace detail {

namespace {

using Packet = Eigen::internal::packet_traits<double>::type;
constexpr Index packet_size = Eigen::internal::packet_traits<double>::size;

} // namespace

void linear_scores_block(const ConstMatrixRef& v, const double* const* columns, bool intercept, Index rows, double* out, Index ld) {
    // Per sample and class a register sum (linear_scores_sweep), stored; beyond its column
    // limit column by column through memory, with the same multiply-adds in the same order.
    using namespace Eigen::internal;
    const Index m = v.rows();
    const Index first = intercept ? 1 : 0;
    if (m - first > linear_scores_max_columns) {
        for (Index k = 0; k < v.cols(); ++k) {
            double* sk = out + k * ld;
            std::fill(sk, sk + rows, intercept ? v(0, k) : 0.0);
            for (Index j = first; j < m; ++j) {
                const double vj = v(j, k);
                const double* dj = columns[j];
                for (Index i = 0; i < rows; ++i) sk[i] = fused_madd(vj, dj[i], sk[i]);
            }
        }
        return;
    }
    linear_scores_sweep(
        v, columns, intercept, rows, [&](Index k, Index i, Packet a) { pstoreu(out + k * ld + i, a); },
        [&](Index k, Index i, double a) { out[k * ld + i] = a; });
}

void softmax_hessian_block(const double* const* columns,
                           Index m,
                           const double* w,
                           const double* g,
                           Index ldg,
                           Index rows,
                           Index K,
                           double* out) {
    // The blocks −Σ_i w_i g_ik (δ_kl − g_il) z̃_i z̃_iᵀ for all pairs 1 <= k <= l < K in one
    // sweep (multi_crossprod_block): per chunk of rows the pair weights c_kl,i are formed once.
    thread_local std::vector<std::pair<Index, Index>> pairs;
    pairs.clear();
    for (Index k = 1; k < K; ++k)
        for (Index l = k; l < K; ++l) pairs.emplace_back(k, l);
    multi_crossprod_block(
        columns, m, rows, static_cast<Index>(pairs.size()),
        [&](Index i0, Index count, double* const* c) {
            const double* wi = w + i0;
            for (std::size_t p = 0; p < pairs.size(); ++p) {
                const auto [k, l] = pairs[p];
                const double* gk = g + k * ldg + i0;
                const double* gl = g + l * ldg + i0;
                double* cp = c[p];
                if (l == k)
                    for (Index i = 0; i < count; ++i) cp[i] = -wi[i] * gk[i] * (1.0 - gl[i]);
                else
                    for (Index i = 0; i < count; ++i) cp[i] = wi[i] * gk[i] * gl[i];
            }
        },
        out);
}

void softmax_objective_block(const double* const* columns,
                             Index m,
                             const double* w,
                             const double* resp,
                             Index ld_resp,
                             const double* log_g,
                             Index ld_log_g,
                             const double* g,
                             Index ldg,
                             Index rows,
                             Index K,
                             bool gradient,
                             bool hessian,
                             double* slot) {
    const Index F = K - 1;
    // Σ_i w_i Σ_k h_ik log g_ik; terms with h_ik = 0 contribute 0 even where log g_ik = −∞.
    thread_local std::vector<double> per_class;
    per_class.resize(static_cast<std::size_t>(K));
    masked_weighted_sums_block(w, resp, ld_resp, log_g, ld_log_g, rows, K, per_class.data());
    for (Index k = 0; k < K; ++k) slot[0] += per_class[static_cast<std::size_t>(k)];
    if (gradient) {
        // Σ_i w_i z̃_i (h_ik − g_ik) for the free columns k >= 1, all in one sweep
        // (multi_dot_block): per chunk of rows the weights c_k,i are formed once.
        multi_dot_block(
            columns, m, rows, F,
            [&](Index i0, Index count, double* const* c) {
                for (Index k = 1; k < K; ++k) {
                    const double* h = resp + k * ld_resp + i0;
                    const double* gk = g + k * ldg + i0;
                    const double* wi = w + i0;
                    double* ck = c[k - 1];
                    for (Index i = 0; i < count; ++i) ck[i] = wi[i] * (h[i] - gk[i]);
                }
            },
            slot + 1);
    }
    // −Σ_i w_i g_ik (δ_kl − g_il) z̃_i z̃_iᵀ, upper triangles of the blocks k <= l.
    if (hessian) softmax_hessian_block(columns, m, w, g, ldg, rows, K, slot + 1 + (gradient ? m * F : 0));
}

SoftmaxObjectiveTotals::SoftmaxObjectiveTotals(Index m, Index K, bool gradient, bool hessian)
    : m_(m),
      free_(K - 1),
      gradient_(gradient),
      grad_(Matrix::Zero(m, K - 1)),
      blocks_(static_cast<std::size_t>(hessian ? (K - 1) * K / 2 : 0), Matrix::Zero(m, m)) {}

Index SoftmaxObjectiveTotals::slot_size() const {
    return 1 + (gradient_ ? m_ * free_ : 0) + static_cast<Index>(blocks_.size()) * m_ * m_;
}

void SoftmaxObjectiveTotals::add(const double* slot) {
    value_ += slot[0];
    const Index grad_size = gradient_ ? m_ * free_ : 0;
    if (gradient_) grad_ += Eigen::Map<const Matrix>(slot + 1, m_, free_);
    for (Index p = 0; p < static_cast<Index>(blocks_.size()); ++p)
        blocks_[static_cast<std::size_t>(p)] += Eigen::Map<const Matrix>(slot + 1 + grad_size + p * m_ * m_, m_, m_);
}

double SoftmaxObjectiveTotals::finish(const Matrix& v, double gate_l2, Vector* gradient, Matrix* hessian) {
    // Works on the sums in place (the penalty subtracted, lower triangles filled): call once.
    const Index m = m_;
    const Index F = free_;
    const Index K = F + 1;
    double value = value_ - penalty_of(v, gate_l2);
    if (gradient) {
        if (m > 1) grad_.bottomRows(m - 1) -= gate_l2 * v.rightCols(F).bottomRows(m - 1);
        *gradient = Eigen::Map<const Vector>(grad_.data(), m * F);
    }
    if (hessian) {
        const Index P = m * F;
        hessian->resize(P, P);
        Index pair = 0;
        for (Index k = 1; k < K; ++k) {
            for (Index l = k; l < K; ++l, ++pair) {
                Matrix& block = blocks_[static_cast<std::size_t>(pair)];
                block.triangularView<Eigen::StrictlyLower>() = block.transpose();
                hessian->block((k - 1) * m, (l - 1) * m, m, m) = block;
                if (l != k) hessian->block((l - 1) * m, (k - 1) * m, m, m) = block.transpose();
            }
            for (Index j = 1; j < m; ++j) (*hessian)((k - 1) * m + j, (k - 1) * m + j) -= gate_l2;
        }
    }
    return value;
}

} // namespace detail

GateUpdateReport detail::update_softmax_gate_from(SoftmaxGate& gate,
                                                  const Dataset& data,
                                                  const ConstMatrixRef& resp,
                                                  const GateOptions& options,
                                                  const SoftmaxStart& start) {
    std::vector<NewtonSoftmax> solver;
    solver.emplace_back(gate.coefficients, flat_targets(data.weights, resp), options, &start);
    newton_lockstep(solver, columns_of(data), options.gate_l2);
    return solver[0].report();
}

GateUpdateReport update_constant_gate(ConstantGate& gate, const Vector& sizes) {
    gate.weights = sizes / sizes.sum();
    GateUpdateReport report;
    report.objective = 0.0;
    for (Index k = 0; k < sizes.size(); ++k) report.objective += sizes(k) * std::log(gate.weights(k)); // see log_plus
    return report;
}

Matrix gate_log_probabilities(const Gate& gate, const Dataset& data) {
    return std::visit(
        [&](const auto& g) -> Matrix {
            using T = std::decay_t<decltype(g)>;
            const Index n = data.n_samples();
            if constexpr (std::is_same_v<T, ConstantGate>) {
                RowVector log_w(g.weights.size());
                for (Index k = 0; k < log_w.size(); ++k) log_w(k) = std::log(g.weights(k)); // see log_plus
                return log_w.replicate(n, 1);
            } else if constexpr (std::is_same_v<T, SoftmaxGate>) {
                return softmax_log_probabilities(g.coefficients, columns_of(data));
            } else if constexpr (std::is_same_v<T, HashGate>) {
                return hash_log_probabilities(g, data);
            } else {
                return tree_log_probabilities(g, columns_of(data));
            }
        },
        gate);
}

GateUpdateReport update_gate(Gate& gate, const Dataset& data, const ConstMatrixRef& resp, const GateOptions& options) {
    return std::visit(
        [&](auto& g) -> GateUpdateReport {
            using T = std::decay_t<decltype(g)>;
            if constexpr (std::is_same_v<T, ConstantGate>) {
                // Closed form: π_k = Σ_i w_i h_ik / Σ_i w_i (a blocked, parallel, ordered sum).
                return update_constant_gate(g, detail::weighted_column_sums(resp, data.weights));
            } else if constexpr (std::is_same_v<T, SoftmaxGate>) {
                return newton_softmax(g.coefficients, columns_of(data), flat_targets(data.weights, resp), options);
            } else if constexpr (std::is_same_v<T, HashGate>) {
                return GateUpdateReport{}; // fixed routing: nothing to learn
            } else {
                return update_tree(g, data, resp, options);
            }
        },
        gate);
}

double gate_penalty(const Gate& gate, double gate_l2) {
    if (const auto* s = std::get_if<SoftmaxGate>(&gate)) return penalty_of(s->coefficients, gate_l2);
    double total = 0.0;
    if (const auto* t = std::get_if<TreeGate>(&gate))
        for (const Matrix& v : t->nodes) total += penalty_of(v, gate_l2);
    return total;
}

Index n_parameters(const Gate& gate) {
    return std::visit(
        [](const auto& g) -> Index {
            using T = std::decay_t<decltype(g)>;
            if constexpr (std::is_same_v<T, ConstantGate>) {
                return g.weights.size() - 1;
            } else if constexpr (std::is_same_v<T, SoftmaxGate>) {
                return (g.coefficients.cols() - 1) * g.coefficients.rows();
            } else if constexpr (std::is_same_v<T, HashGate>) {
                return 0;
            } else {
                Index p = 0;
                for (const Matrix& v : g.nodes) p += (v.cols() - 1) * v.rows();
                return p;
            }
        },
        gate);
}

Index n_experts(const Gate& gate) {
    return std::visit(
        [](const auto& g) -> Index {
            using T = std::decay_t<decltype(g)>;
            if constexpr (std::is_same_v<T, ConstantGate>) {
                return g.weights.size();
            } else if constexpr (std::is_same_v<T, SoftmaxGate>) {
                return g.coefficients.cols();
            } else if constexpr (std::is_same_v<T, HashGate>) {
                return g.n_experts;
            } else {
                return leaves_below(g.branching, 0);
            }
        },
        gate);
}

std::uint64_t hash_key(std::string_view cell) {
    auto mix = [](std::uint64_t x) { // splitmix64 finaliser
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebULL;
        x ^= x >> 31;
        return x;
    };
    std::string_view t = cell;
    while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
    while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
    std::string_view digits = t;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    long long value = 0;
    if (!digits.empty() && digits.front() != '+') {
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
        if (ec == std::errc() && end == digits.data() + digits.size())
            return mix(static_cast<std::uint64_t>(value) ^ 0x9e3779b97f4a7c15ULL);
    }
    std::uint64_t h = 0xcbf29ce484222325ULL; // FNV-1a over the exact cell text
    for (const char c : cell) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ULL;
    }
    return mix(h);
}

Index hash_expert(std::uint64_t key, Index n_experts) {
    return static_cast<Index>(key % static_cast<std::uint64_t>(n_experts));
}

void keep_top_k(Matrix& log_probabilities, Index k) {
    const Index K = log_probabilities.cols();
    if (k <= 0 || k >= K) return;
    constexpr double minus_inf = -std::numeric_limits<double>::infinity();
    std::vector<Index> order(static_cast<std::size_t>(K));
    for (Index i = 0; i < log_probabilities.rows(); ++i) {
        for (Index j = 0; j < K; ++j) order[static_cast<std::size_t>(j)] = j;
        auto row = log_probabilities.row(i);
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](Index a, Index b) {
            return row(a) > row(b) || (row(a) == row(b) && a < b);
        });
        Vector kept(k);
        for (Index j = 0; j < k; ++j) kept(j) = row(order[static_cast<std::size_t>(j)]);
        const double norm = log_sum_exp(kept);
        row.setConstant(minus_inf);
        for (Index j = 0; j < k; ++j) row(order[static_cast<std::size_t>(j)]) = kept(j) - norm;
    }
}

std::vector<Index> parse_tree_shape(std::string_view text) {
    auto fail = [&](const std::string& why) {
        throw_invalid_argument("parse_tree_shape", "tree (--tree)", "'" + std::string(text) + "'", why,
                               "Write the children per level separated by 'x', e.g. 2x3.");
    };
    std::vector<Index> out;
    Index experts = 1;
    std::size_t start = 0;
    while (true) {
        const std::size_t end = text.find_first_of("xX", start);
        const std::string_view part = text.substr(start, end == std::string_view::npos ? text.npos : end - start);
        Index value = 0;
        const auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), value);
        if (part.empty() || ec != std::errc() || ptr != part.data() + part.size())
            fail("must be whole numbers separated by 'x'");
        if (value < 2) fail("every level must have at least 2 children");
        // Checked before multiplying: a huge factor would overflow the product (UB, and a wrapped
        // product can look small).
        if (value > 4096) fail("must give at most 4096 experts");
        out.push_back(value);
        experts *= value;
        if (out.size() > 16) fail("must have at most 16 levels");
        if (experts > 4096) fail("must give at most 4096 experts");
        if (end == std::string_view::npos) break;
        start = end + 1;
    }
    return out;
}

std::string format_tree_shape(const std::vector<Index>& branching) {
    std::string out;
    for (std::size_t l = 0; l < branching.size(); ++l) out += (l ? "x" : "") + std::to_string(branching[l]);
    return out;
}

Index tree_n_nodes(const std::vector<Index>& branching) {
    Index nodes = 0;
    Index count = 1;
    for (Index b : branching) {
        nodes += count;
        count *= b;
    }
    return nodes;
}

std::vector<Index> tree_node_depths(const std::vector<Index>& branching) {
    std::vector<Index> depths;
    for_each_node(branching, [&](Index, Index depth, Index, Index, Index) { depths.push_back(depth); });
    return depths;
}

TreeGate make_tree_gate(const std::vector<Index>& branching, Index n_gate_inputs) {
    TreeGate tree;
    tree.branching = branching;
    for (Index depth : tree_node_depths(branching))
        tree.nodes.push_back(Matrix::Zero(n_gate_inputs + 1, branching[static_cast<std::size_t>(depth)]));
    return tree;
}

std::vector<Matrix> gate_gradient(const Gate& gate, const Dataset& data, const ConstMatrixRef& resp, double gate_l2) {
    const Index K = resp.cols();
    if (const auto* c = std::get_if<ConstantGate>(&gate)) {
        // Logits a_k = log π_k − log π_1: ∂L/∂a_k = Σ_i w_i (h_ik − π_k).
        const Vector nk = resp.transpose() * data.weights;
        Matrix g = (nk - data.weights.sum() * c->weights).transpose();
        g(0, 0) = 0.0;
        return {g};
    }
    const Matrix design = gate_design(data);
    auto node_gradient = [&](const Matrix& v, const Matrix& log_g, const Vector& node_post, const Matrix& child_post) {
        // Σ_i w_i z̃_i (h_child − h_node g(c | node)) − λ V (slopes), column 0 pinned.
        Matrix diff = child_post - (exp_of_log(log_g).array().colwise() * node_post.array()).matrix();
        diff = (diff.array().colwise() * data.weights.array()).matrix();
        Matrix grad = design.transpose() * diff;
        if (grad.rows() > 1) grad.bottomRows(grad.rows() - 1) -= gate_l2 * v.bottomRows(v.rows() - 1);
        grad.col(0).setZero();
        return grad;
    };
    if (std::holds_alternative<HashGate>(gate)) return {}; // nothing to learn
    if (const auto* s = std::get_if<SoftmaxGate>(&gate))
        return {node_gradient(s->coefficients, softmax_log_probabilities(s->coefficients, design),
                              Vector::Ones(design.rows()), Matrix(resp))};
    const TreeGate& tree = std::get<TreeGate>(gate);
    std::vector<Matrix> out;
    for_each_node(tree.branching, [&](Index node, Index depth, Index, Index first, Index span) {
        const Index b = tree.branching[static_cast<std::size_t>(depth)];
        const Index child_span = span / b;
        const Vector node_post = resp.middleCols(first, span).rowwise().sum();
        Matrix child_post(design.rows(), b);
        for (Index c = 0; c < b; ++c) child_post.col(c) = resp.middleCols(first + c * child_span, child_span).rowwise().sum();
        const Matrix& v = tree.nodes[static_cast<std::size_t>(node)];
        out.push_back(node_gradient(v, softmax_log_probabilities(v, design), node_post, child_post));
    });
    (void)K;
    return out;
}

Eigen::VectorXi route_hard(const Gate& gate, const Dataset& data) {
    const Index n = data.n_samples();
    Eigen::VectorXi out(n);
    const auto* tree = std::get_if<TreeGate>(&gate);
    if (!tree) {
        const Matrix log_g = gate_log_probabilities(gate, data);
        for (Index i = 0; i < n; ++i) {
            Index best = 0;
            log_g.row(i).maxCoeff(&best);
            out(i) = static_cast<int>(best);
        }
        return out;
    }
    // Follow the largest score at each node: only depth-many gates are evaluated per sample.
    const Matrix design = gate_design(data);
    for (Index i = 0; i < n; ++i) {
        Index node = 0;     // breadth-first index of the current node
        Index position = 0; // its position within its depth
        Index first_at_depth = 0;
        Index count = 1;
        for (std::size_t l = 0; l < tree->branching.size(); ++l) {
            const Matrix& v = tree->nodes[static_cast<std::size_t>(node)];
            Index best = 0;
            (design.row(i) * v).maxCoeff(&best);
            position = position * tree->branching[l] + best;
            first_at_depth += count;
            count *= tree->branching[l];
            node = first_at_depth + position;
        }
        out(i) = static_cast<int>(position);
    }
    return out;
}

std::vector<TreeNodeDiagnostics> tree_diagnostics(const TreeGate& tree, const Dataset& data, const ConstMatrixRef& resp) {
    const Matrix design = gate_design(data);
    const Matrix log_leaf = tree_log_probabilities(tree, columns_of(design));
    Eigen::VectorXi soft_best(design.rows());
    for (Index i = 0; i < design.rows(); ++i) {
        Index best = 0;
        log_leaf.row(i).maxCoeff(&best);
        soft_best(i) = static_cast<int>(best);
    }
    const Eigen::VectorXi hard = route_hard(tree, data);
    std::vector<TreeNodeDiagnostics> out;
    for_each_node(tree.branching, [&](Index node, Index depth, Index, Index first, Index span) {
        const Index b = tree.branching[static_cast<std::size_t>(depth)];
        const Index child_span = span / b;
        const Matrix& v = tree.nodes[static_cast<std::size_t>(node)];
        const Matrix log_g = softmax_log_probabilities(v, design);
        const Vector node_post = resp.middleCols(first, span).rowwise().sum();
        TreeNodeDiagnostics d;
        d.node = node;
        d.depth = depth;
        d.responsibility_mass = data.weights.dot(node_post);
        double entropy_weight = 0.0, entropy = 0.0, routed = 0.0, differ = 0.0;
        for (Index i = 0; i < design.rows(); ++i) {
            const double a = data.weights(i) * node_post(i);
            double h = 0.0;
            for (Index c = 0; c < b; ++c)
                if (std::isfinite(log_g(i, c))) h -= std::exp(log_g(i, c)) * log_g(i, c);
            entropy += a * h;
            entropy_weight += a;
            if (hard(i) >= first && hard(i) < first + span) {
                routed += data.weights(i);
                const bool same_child = (hard(i) - first) / child_span ==
                                        (soft_best(i) >= first && soft_best(i) < first + span
                                             ? (soft_best(i) - first) / child_span
                                             : -1);
                if (!same_child) differ += data.weights(i);
            }
        }
        d.gate_entropy = entropy_weight > 0.0 ? entropy / entropy_weight : 0.0;
        d.disagreement = routed > 0.0 ? differ / routed : 0.0;
        out.push_back(d);
    });
    return out;
}

namespace detail {

void reserve_scratch(TreeGateScratch& s, const TreeGate& tree) {
    s.scores.resize(block_rows, max_branching(tree));
    s.norm.resize(static_cast<std::size_t>(block_rows));
}

void tree_gate_log_probabilities_block(
    const TreeGate& tree, const Dataset& data, Index begin, Index rows, double* out, Index ld, TreeGateScratch& s) {
    tree_block(tree, columns_of(data), begin, rows, out, ld, s.scores.data(), s.norm.data());
}

void softmax_gate_scores_block(const Matrix& v, const Dataset& data, Index begin, Index rows, double* out, Index ld) {
    softmax_scores_block(v, columns_of(data), begin, rows, out, ld);
}

} // namespace detail

} // namespace moekit
