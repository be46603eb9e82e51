// The blocked tree-gate (HME) kernels against naive per-sample code (docs/performance.md):
// - the leaf log-probabilities (gate_log_probabilities, computed block by block) against the
//   product of the node softmaxes along each path, in long double;
// - the blocked E-step (log_joint) against the expert densities plus those gate
//   log-probabilities, to the bit;
// - the tree M-step (update_gate, whose node targets and weights are formed per block inside
//   the Newton passes) against a naive IRLS per node on the log-space targets
//   exp(log h_child − log h_node) and weights w_i exp(log h_node), uniform targets where the
//   node's log mass is −∞, iterated to convergence; and each node, fitted in lockstep with the
//   others, against the flat softmax M-step on that node's targets and weights, to the bit;
// - both bit-identical with 1 and 2 threads.
// 9000 rows (blocks of 4096, 4096 and 808 rows) and an uneven 3x2 tree; some samples have no
// responsibility at all under a subtree (log mass −∞ there), some only under one child.

#include "support/thread_count.hpp"

#include <catch2/catch.hpp>

#include "moekit/moekit.hpp"
#include "support/naive.hpp"

#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace moekit;
using moekit_test::max_abs_diff;
using moekit_test::naive_gate_scores;
using moekit_test::naive_solve;

namespace {

constexpr Index n_rows = 9000;
constexpr double minus_inf = -std::numeric_limits<double>::infinity();

using moekit_test::ThreadCount;

/// 9000 samples: two gate inputs z ~ N(0, 1) (also the expert inputs), y a noisy line,
/// weights in [0.5, 1.5].
Dataset sample_data() {
    Rng rng(2024);
    Matrix z(n_rows, 2);
    Matrix y(n_rows, 1);
    Vector w(n_rows);
    for (Index i = 0; i < n_rows; ++i) {
        z(i, 0) = standard_normal(rng);
        z(i, 1) = standard_normal(rng);
        y(i, 0) = 0.5 * z(i, 0) - z(i, 1) + 0.3 * standard_normal(rng);
        w(i) = 0.5 + uniform01(rng);
    }
    Dataset d = make_dataset(y, z, z);
    d.weights = w;
    d.target_names = {"y"};
    d.input_names = {"z1", "z2"};
    d.gate_input_names = {"z1", "z2"};
    return d;
}

/// A 3x2 tree (root with 3 children, each with 2 leaves: 6 experts) with random coefficients.
TreeGate random_tree(double scale, std::uint64_t seed) {
    Rng rng(seed);
    TreeGate t = make_tree_gate({3, 2}, 2);
    for (Matrix& v : t.nodes)
        for (Index c = 1; c < v.cols(); ++c)
            for (Index r = 0; r < v.rows(); ++r) v(r, c) = scale * standard_normal(rng);
    return t;
}

/// log softmax of one row of scores, literally s_c − log Σ_j exp(s_j) in long double.
std::vector<long double> naive_log_softmax(const std::vector<double>& scores) {
    long double total = 0.0L;
    for (double s : scores) total += std::exp(static_cast<long double>(s));
    std::vector<long double> out;
    for (double s : scores) out.push_back(static_cast<long double>(s) - std::log(total));
    return out;
}

/// log Σ_k exp(a_k) literally, in long double, with exp(−∞) = 0 and log 0 = −∞.
long double naive_log_mass(const std::vector<long double>& a) {
    long double total = 0.0L;
    for (long double x : a) total += std::exp(x);
    return std::log(total);
}

/// Responsibilities: random rows normalised to 1, except rows with mass under one subtree only.
Matrix sample_responsibilities() {
    Rng rng(77);
    Matrix h(n_rows, 6);
    for (Index i = 0; i < n_rows; ++i) {
        for (Index k = 0; k < 6; ++k) h(i, k) = 0.05 + uniform01(rng);
        h.row(i) /= h.row(i).sum();
    }
    // Nothing under the root's children 2 and 3 (their nodes' log mass is −∞).
    h.row(5) << 0.3, 0.7, 0.0, 0.0, 0.0, 0.0;
    // Block 2: all mass on one leaf (the sibling leaf's and the other subtrees' are 0).
    h.row(4100) << 0.0, 0.0, 1.0, 0.0, 0.0, 0.0;
    // The partial last block: only under the root's third child.
    h.row(n_rows - 1) << 0.0, 0.0, 0.0, 0.0, 0.5, 0.5;
    // Tiny masses, far below e^−700.
    h.row(6000) << 1e-300, 3e-300, 0.25, 0.25, 0.25, 0.25 - 4e-300;
    return h;
}

/// The naive M-step of one node: maximises Σ_i a_i Σ_c t_ic log softmax(Vᵀ z̃_i)_c −
/// (λ/2)‖V (slopes)‖² over columns 1.. of V by Newton's method with step halving, to
/// convergence; a_i and t_ic from the log-space formulas (see the top of this file).
Matrix naive_node_fit(const Dataset& data,
                      const Matrix& resp,
                      Matrix v,
                      Index first,
                      Index span,
                      Index b,
                      double lambda,
                      double* objective) {
    const Index n = data.n_samples();
    const Index m = v.rows();
    const Index child_span = span / b;
    // Targets and weights, per sample, in log space.
    Matrix t(n, b);
    Vector a(n);
    for (Index i = 0; i < n; ++i) {
        std::vector<long double> log_leaves;
        for (Index k = first; k < first + span; ++k) log_leaves.push_back(std::log(static_cast<long double>(resp(i, k))));
        const long double log_node = naive_log_mass(log_leaves);
        for (Index c = 0; c < b; ++c) {
            const std::vector<long double> child(log_leaves.begin() + c * child_span,
                                                 log_leaves.begin() + (c + 1) * child_span);
            t(i, c) = std::isfinite(log_node) ? static_cast<double>(std::exp(naive_log_mass(child) - log_node))
                                              : 1.0 / static_cast<double>(b);
        }
        a(i) = data.weights(i) * static_cast<double>(std::exp(log_node));
    }
    auto value_at = [&](const Matrix& vv, Vector* gradient, Matrix* hessian) {
        const Index P = m * (b - 1);
        std::vector<long double> grad(static_cast<std::size_t>(P), 0.0L);
        std::vector<long double> hess(static_cast<std::size_t>(P * P), 0.0L);
        long double f = 0.0L;
        for (Index i = 0; i < n; ++i) {
            const std::vector<long double> lg = naive_log_softmax(naive_gate_scores(data.z, i, vv));
            std::vector<long double> zt(static_cast<std::size_t>(m));
            zt[0] = 1.0L;
            for (Index j = 1; j < m; ++j) zt[static_cast<std::size_t>(j)] = data.z(i, j - 1);
            for (Index c = 0; c < b; ++c)
                if (t(i, c) > 0.0) f += a(i) * t(i, c) * lg[static_cast<std::size_t>(c)];
            for (Index c = 1; c < b; ++c) {
                const long double gc = std::exp(lg[static_cast<std::size_t>(c)]);
                for (Index j = 0; j < m; ++j)
                    grad[static_cast<std::size_t>((c - 1) * m + j)] += a(i) * (t(i, c) - gc) * zt[static_cast<std::size_t>(j)];
                for (Index d = 1; d < b; ++d) {
                    const long double gd = std::exp(lg[static_cast<std::size_t>(d)]);
                    const long double h = -a(i) * gc * ((c == d ? 1.0L : 0.0L) - gd);
                    for (Index j = 0; j < m; ++j)
                        for (Index l = 0; l < m; ++l)
                            hess[static_cast<std::size_t>(((c - 1) * m + j) * P + (d - 1) * m + l)] +=
                                h * zt[static_cast<std::size_t>(j)] * zt[static_cast<std::size_t>(l)];
                }
            }
        }
        for (Index c = 1; c < b; ++c)
            for (Index j = 1; j < m; ++j) {
                f -= 0.5L * lambda * vv(j, c) * vv(j, c);
                grad[static_cast<std::size_t>((c - 1) * m + j)] -= lambda * vv(j, c);
                hess[static_cast<std::size_t>(((c - 1) * m + j) * P + (c - 1) * m + j)] -= lambda;
            }
        if (gradient) {
            gradient->resize(P);
            for (Index p = 0; p < P; ++p) (*gradient)(p) = static_cast<double>(grad[static_cast<std::size_t>(p)]);
        }
        if (hessian) {
            hessian->resize(P, P);
            for (Index p = 0; p < P; ++p)
                for (Index q = 0; q < P; ++q) (*hessian)(p, q) = static_cast<double>(hess[static_cast<std::size_t>(p * P + q)]);
        }
        return static_cast<double>(f);
    };
    double current = value_at(v, nullptr, nullptr);
    for (int step = 0; step < 100; ++step) {
        Vector gradient;
        Matrix hessian;
        value_at(v, &gradient, &hessian);
        const Matrix direction = naive_solve(-hessian, gradient).solution;
        if (0.5 * gradient.dot(direction.col(0)) <= 1e-15 * (1.0 + std::abs(current))) break;
        double step_size = 1.0;
        bool moved = false;
        for (int halving = 0; halving < 40; ++halving) {
            Matrix trial = v;
            for (Index c = 1; c < b; ++c)
                for (Index j = 0; j < m; ++j) trial(j, c) += step_size * direction((c - 1) * m + j, 0);
            const double value = value_at(trial, nullptr, nullptr);
            if (value >= current) {
                moved = value > current;
                v = trial;
                current = value;
                break;
            }
            step_size *= 0.5;
        }
        if (!moved) break;
    }
    *objective = current;
    return v;
}

} // namespace

TEST_CASE("blocked tree gate log-probabilities equal the naive path sums over several blocks", "[tree][threads]") {
    const Dataset data = sample_data();
    const TreeGate tree = random_tree(1.5, 5);
    Matrix log_g;
    {
        const ThreadCount one(1);
        log_g = gate_log_probabilities(Gate{tree}, data);
    }
    REQUIRE(log_g.rows() == n_rows);
    REQUIRE(log_g.cols() == 6);
    double worst = 0.0;
    for (Index i = 0; i < n_rows; ++i) {
        const std::vector<long double> root = naive_log_softmax(naive_gate_scores(data.z, i, tree.nodes[0]));
        for (Index c0 = 0; c0 < 3; ++c0) {
            const std::vector<long double> child =
                naive_log_softmax(naive_gate_scores(data.z, i, tree.nodes[static_cast<std::size_t>(1 + c0)]));
            for (Index c1 = 0; c1 < 2; ++c1) {
                const double naive = static_cast<double>(root[static_cast<std::size_t>(c0)] + child[static_cast<std::size_t>(c1)]);
                worst = std::max(worst, std::abs(log_g(i, c0 * 2 + c1) - naive) / (1.0 + std::abs(naive)));
            }
        }
    }
    CHECK(worst < 1e-13);
    {
        const ThreadCount two(2);
        CHECK(max_abs_diff(gate_log_probabilities(Gate{tree}, data), log_g) == 0.0);
    }

    // The blocked E-step adds the same gate bits to the expert log densities.
    Model model;
    model.gate = tree;
    model.experts.kind = ExpertKind::Linear;
    model.experts.covariance_type = CovarianceType::Full;
    Rng rng(9);
    for (Index k = 0; k < 6; ++k) {
        Matrix w(3, 1);
        w << standard_normal(rng), standard_normal(rng), standard_normal(rng);
        model.experts.coefficients.push_back(w);
        model.experts.covariances.push_back(*try_factor(Matrix::Constant(1, 1, 0.5 + 0.1 * static_cast<double>(k))));
    }
    model.target_names = {"y"};
    model.input_names = {"z1", "z2"};
    model.gate_input_names = {"z1", "z2"};
    const Matrix expected = expert_log_densities(model.experts, data) + log_g;
    for (int threads : {1, 2}) {
        const ThreadCount t(threads);
        CHECK(max_abs_diff(log_joint(model, data), expected) == 0.0);
        const Responsibilities r = e_step(model, data);
        for (Index i : {Index{0}, Index{4095}, Index{4096}, Index{8191}, Index{8192}, n_rows - 1}) {
            std::vector<long double> joint;
            for (Index k = 0; k < 6; ++k) joint.push_back(expected(i, k));
            const long double norm = naive_log_mass(joint);
            CHECK(r.log_norm(i) == Approx(static_cast<double>(norm)).epsilon(1e-14));
            for (Index k = 0; k < 6; ++k)
                CHECK(r.log_resp(i, k) == Approx(static_cast<double>(joint[static_cast<std::size_t>(k)] - norm)).margin(1e-12));
        }
    }
}

TEST_CASE("the blocked tree M-step equals a naive per-node IRLS, including nodes with no mass", "[tree][threads]") {
    const Dataset data = sample_data();
    const Matrix resp = sample_responsibilities();
    const TreeGate start = random_tree(0.5, 6);
    GateOptions options;
    options.gate_l2 = 1e-3;
    options.newton_steps = 100; // to convergence, as the naive reference
    Gate fitted = start;
    GateUpdateReport report;
    {
        const ThreadCount one(1);
        report = update_gate(fitted, data, resp, options);
    }
    const TreeGate& tree = std::get<TreeGate>(fitted);
    CHECK_FALSE(report.stalled);

    // Node j of the 3x2 tree: the root (leaves 0..5, 3 children of 2 leaves), then the root's
    // children c (leaves 2c, 2c + 1, 2 children of 1 leaf).
    double naive_total = 0.0;
    for (std::size_t j = 0; j < 4; ++j) {
        const Index first = j == 0 ? 0 : 2 * static_cast<Index>(j - 1);
        const Index span = j == 0 ? 6 : 2;
        const Index b = j == 0 ? 3 : 2;
        double objective = 0.0;
        const Matrix naive = naive_node_fit(data, resp, start.nodes[j], first, span, b, options.gate_l2, &objective);
        naive_total += objective;
        INFO("node " << j);
        REQUIRE(tree.nodes[j].allFinite());
        CHECK(tree.nodes[j].col(0).isZero(0.0));
        CHECK(max_abs_diff(tree.nodes[j], naive) < 1e-9 * (1.0 + naive.cwiseAbs().maxCoeff()));
    }
    CHECK(report.objective == Approx(naive_total).epsilon(1e-12));

    // Each node, fitted together with the others (in lockstep), gets the bits it gets alone:
    // the flat softmax M-step on the node's targets h_child / h_node and weights w_i h_node,
    // formed here as the kernel forms them (sums in leaf order; uniform where h_node = 0).
    for (std::size_t j = 0; j < 4; ++j) {
        const Index first = j == 0 ? 0 : 2 * static_cast<Index>(j - 1);
        const Index b = j == 0 ? 3 : 2;
        const Index child_span = j == 0 ? 2 : 1;
        Matrix targets(n_rows, b);
        Dataset node_data = data;
        for (Index i = 0; i < n_rows; ++i) {
            for (Index c = 0; c < b; ++c) {
                double mass = resp(i, first + c * child_span);
                for (Index k = 1; k < child_span; ++k) mass += resp(i, first + c * child_span + k);
                targets(i, c) = mass;
            }
            double node = targets(i, 0) + targets(i, 1);
            for (Index c = 2; c < b; ++c) node += targets(i, c);
            for (Index c = 0; c < b; ++c)
                targets(i, c) = node > 0.0 ? targets(i, c) / node : 1.0 / static_cast<double>(b);
            node_data.weights(i) = data.weights(i) * node;
        }
        Gate alone = SoftmaxGate{start.nodes[j]};
        update_gate(alone, node_data, targets, options);
        INFO("node " << j);
        CHECK(max_abs_diff(std::get<SoftmaxGate>(alone).coefficients, tree.nodes[j]) == 0.0);
    }

    // The same bits with 2 threads.
    Gate fitted2 = start;
    {
        const ThreadCount two(2);
        const GateUpdateReport report2 = update_gate(fitted2, data, resp, options);
        CHECK(report2.objective == report.objective);
    }
    for (std::size_t j = 0; j < 4; ++j) CHECK(max_abs_diff(std::get<TreeGate>(fitted2).nodes[j], tree.nodes[j]) == 0.0);
}
