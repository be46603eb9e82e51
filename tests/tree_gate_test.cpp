// Hierarchical mixtures of experts: tree gates against the flat softmax, finite differences,
// recovery of a four-regime truth, monotone EM and model-file round trips.
#include <catch2/catch.hpp>

#include "moekit/moekit.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

using namespace moekit;

namespace {

/// n samples of x ~ U(−2, 2) used both as expert input and gate input.
Dataset uniform_inputs(Index n, Rng& rng) {
    Matrix x(n, 1);
    for (Index i = 0; i < n; ++i) x(i, 0) = -2.0 + 4.0 * uniform01(rng);
    Dataset d = make_dataset(Matrix(n, 0), x, x);
    d.input_names = {"x"};
    d.gate_input_names = {"x"};
    d.target_names = {};
    return d;
}

/// A 2x2 HME on x: the root splits at x = 0, the left node at x = −1, the right at x = 1
/// (steep slopes so the regimes are sharp); four linear experts with distinct lines.
Model four_regime_truth() {
    TreeGate tree = make_tree_gate({2, 2}, 1);
    tree.nodes[0] << 0.0, 0.0, 0.0, 12.0;   // root: child 1 when x > 0
    tree.nodes[1] << 0.0, 12.0, 0.0, 12.0;  // left: child 1 when x > −1
    tree.nodes[2] << 0.0, -12.0, 0.0, 12.0; // right: child 1 when x > 1
    Model m;
    m.gate = tree;
    m.experts.kind = ExpertKind::Linear;
    m.experts.covariance_type = CovarianceType::Full;
    const double a[4] = {-4.0, 1.0, -1.0, 5.0};
    const double b[4] = {-2.0, 3.0, -3.0, 1.0};
    for (int k = 0; k < 4; ++k) {
        Matrix w(2, 1);
        w << a[k], b[k];
        m.experts.coefficients.push_back(w);
        m.experts.covariances.push_back(*try_factor(Matrix::Constant(1, 1, 0.1 * 0.1)));
    }
    m.target_names = {"y"};
    m.input_names = {"x"};
    m.gate_input_names = {"x"};
    return m;
}

Dataset draw(const Model& model, Index n, std::uint64_t seed) {
    Rng rng(seed);
    const Dataset inputs = uniform_inputs(n, rng);
    Dataset d = simulate(model, inputs, rng).data;
    d.target_names = {"y"};
    return d;
}

/// A random tree gate for finite-difference checks.
TreeGate random_tree(const std::vector<Index>& branching, Index g, Rng& rng) {
    TreeGate t = make_tree_gate(branching, g);
    for (Matrix& v : t.nodes)
        for (Index c = 1; c < v.cols(); ++c)
            for (Index r = 0; r < v.rows(); ++r) v(r, c) = standard_normal(rng);
    return t;
}

} // namespace

TEST_CASE("tree shapes parse and count", "[tree]") {
    CHECK(parse_tree_shape("2x3") == std::vector<Index>{2, 3});
    CHECK(parse_tree_shape("3X2x2") == std::vector<Index>{3, 2, 2});
    CHECK(format_tree_shape({3, 2, 2}) == "3x2x2");
    CHECK(tree_n_nodes({2, 3}) == 3);
    CHECK(tree_n_nodes({3, 2, 2}) == 1 + 3 + 6);
    CHECK(tree_node_depths({2, 2}) == std::vector<Index>{0, 1, 1});
    for (const char* bad : {"", "2x", "x2", "2x1", "0", "2xa", "2.5", "-2", "4096x2"})
        CHECK_THROWS_AS(parse_tree_shape(bad), InvalidArgument);
    CHECK_THROWS_WITH(parse_tree_shape("2x1"), Catch::Contains("at least 2 children"));
    const Gate g = make_tree_gate({2, 3}, 2);
    CHECK(n_experts(g) == 6);
    CHECK(n_parameters(g) == (1 * 3) + 2 * (2 * 3)); // root (2−1)(g+1), two nodes (3−1)(g+1)
}

TEST_CASE("a one-level tree equals the flat softmax gate", "[tree]") {
    Rng rng(11);
    const Model truth = four_regime_truth();
    const Dataset data = draw(truth, 500, 5);
    TreeGate one = random_tree({4}, 1, rng);
    const SoftmaxGate flat{one.nodes[0]};
    const Matrix a = gate_log_probabilities(Gate{one}, data);
    const Matrix b = gate_log_probabilities(Gate{flat}, data);
    CHECK((a - b).cwiseAbs().maxCoeff() == 0.0);

    // EM from the same start follows the same path to round-off.
    Model m_tree = truth;
    m_tree.gate = one;
    Model m_flat = truth;
    m_flat.gate = flat;
    FitOptions opt;
    opt.expert = ExpertKind::Linear;
    opt.n_experts = 4;
    opt.max_iter = 30;
    opt.gate = GateKind::Tree;
    opt.tree = {4};
    const FitResult rt = fit_em(data, m_tree, opt);
    opt.gate = GateKind::Softmax;
    opt.tree = {};
    const FitResult rf = fit_em(data, m_flat, opt);
    REQUIRE(rt.trace.size() == rf.trace.size());
    for (std::size_t t = 0; t < rt.trace.size(); ++t)
        CHECK(rt.trace[t] == Approx(rf.trace[t]).epsilon(1e-12));
    const Matrix& vt = std::get<TreeGate>(rt.model.gate).nodes[0];
    const Matrix& vf = std::get<SoftmaxGate>(rf.model.gate).coefficients;
    CHECK((vt - vf).cwiseAbs().maxCoeff() < 1e-9 * (1.0 + vf.cwiseAbs().maxCoeff()));
}

TEST_CASE("leaf gate probabilities are products along the path and sum to one", "[tree]") {
    Rng rng(3);
    const TreeGate t = random_tree({2, 3}, 2, rng);
    Matrix z(4, 2);
    z << 0.5, -1.0, 2.0, 0.3, -0.7, 0.0, 1.1, 1.9;
    const Dataset data = make_dataset(Matrix(4, 0), Matrix(), z);
    const Matrix log_g = gate_log_probabilities(Gate{t}, data);
    for (Index i = 0; i < 4; ++i) {
        CHECK(log_g.row(i).array().exp().sum() == Approx(1.0).epsilon(1e-14));
        // Naive: leaf k = (c0, c1), probability softmax_root(c0) · softmax_child c0 (c1).
        RowVector zt(3);
        zt << 1.0, z(i, 0), z(i, 1);
        auto softmax = [&](const Matrix& v) {
            RowVector s = zt * v;
            s = (s.array() - s.maxCoeff()).exp().matrix();
            return RowVector(s / s.sum());
        };
        const RowVector root = softmax(t.nodes[0]);
        for (Index c0 = 0; c0 < 2; ++c0) {
            const RowVector child = softmax(t.nodes[static_cast<std::size_t>(1 + c0)]);
            for (Index c1 = 0; c1 < 3; ++c1)
                CHECK(std::exp(log_g(i, c0 * 3 + c1)) == Approx(root(c0) * child(c1)).epsilon(1e-12));
        }
    }
}

TEST_CASE("gate_gradient matches finite differences of the log-likelihood", "[tree][gradient]") {
    const Model truth = four_regime_truth();
    const Dataset data = draw(truth, 300, 21);
    Rng rng(8);
    for (const std::vector<Index>& shape : {std::vector<Index>{2, 2}, std::vector<Index>{4}}) {
        Model m = truth;
        TreeGate t = random_tree(shape, 1, rng);
        for (Matrix& v : t.nodes) v *= 0.5;
        m.gate = t;
        const double lambda = 0.3;
        const Responsibilities r = e_step(m, data);
        const std::vector<Matrix> grad =
            gate_gradient(m.gate, data, r.log_resp.array().exp().matrix(), lambda);
        REQUIRE(grad.size() == t.nodes.size());
        auto objective = [&](const TreeGate& tg) {
            Model mm = m;
            mm.gate = tg;
            return log_likelihood(mm, data) - gate_penalty(mm.gate, lambda);
        };
        for (std::size_t j = 0; j < t.nodes.size(); ++j) {
            CHECK(grad[j].col(0).isZero(0.0));
            for (Index c = 1; c < t.nodes[j].cols(); ++c) {
                for (Index row = 0; row < t.nodes[j].rows(); ++row) {
                    const double h = 1e-5;
                    TreeGate up = t, down = t;
                    up.nodes[j](row, c) += h;
                    down.nodes[j](row, c) -= h;
                    const double fd = (objective(up) - objective(down)) / (2 * h);
                    CHECK(grad[j](row, c) == Approx(fd).epsilon(1e-6).margin(1e-6));
                }
            }
        }
    }
}

TEST_CASE("gate_gradient of flat gates matches finite differences", "[tree][gradient]") {
    const Model truth = four_regime_truth();
    const Dataset data = draw(truth, 300, 22);
    Rng rng(9);
    // Softmax gate.
    Model m = truth;
    Matrix v = Matrix::Zero(2, 4);
    for (Index c = 1; c < 4; ++c) v.col(c) << standard_normal(rng), standard_normal(rng);
    m.gate = SoftmaxGate{v};
    Responsibilities r = e_step(m, data);
    std::vector<Matrix> grad = gate_gradient(m.gate, data, r.log_resp.array().exp().matrix(), 0.0);
    for (Index c = 1; c < 4; ++c) {
        for (Index row = 0; row < 2; ++row) {
            Model up = m, down = m;
            std::get<SoftmaxGate>(up.gate).coefficients(row, c) += 1e-5;
            std::get<SoftmaxGate>(down.gate).coefficients(row, c) -= 1e-5;
            const double fd = (log_likelihood(up, data) - log_likelihood(down, data)) / 2e-5;
            CHECK(grad[0](row, c) == Approx(fd).epsilon(1e-6).margin(1e-6));
        }
    }
    // Constant gate: logits a_k = log π_k − log π_1.
    Vector logits(4);
    logits << 0.0, 0.3, -0.2, 0.5;
    auto with_logits = [&](const Vector& a) {
        Model mm = truth;
        Vector p = a.array().exp().matrix();
        mm.gate = ConstantGate{p / p.sum()};
        return mm;
    };
    const Model mc = with_logits(logits);
    r = e_step(mc, data);
    grad = gate_gradient(mc.gate, data, r.log_resp.array().exp().matrix(), 0.0);
    for (Index k = 1; k < 4; ++k) {
        Vector up = logits, down = logits;
        up(k) += 1e-5;
        down(k) -= 1e-5;
        const double fd = (log_likelihood(with_logits(up), data) - log_likelihood(with_logits(down), data)) / 2e-5;
        CHECK(grad[0](0, k) == Approx(fd).epsilon(1e-6).margin(1e-6));
    }
}

TEST_CASE("a 2x2 HME recovers a four-regime piecewise-linear truth", "[tree][recovery]") {
    const Model truth = four_regime_truth();
    const Dataset data = draw(truth, 4000, 2024);
    FitOptions opt;
    opt.expert = ExpertKind::Linear;
    opt.gate = GateKind::Tree;
    opt.tree = {2, 2};
    opt.n_experts = 4;
    opt.restarts = 10;
    opt.seed = 1;
    const FitResult r = fit(data, opt);
    CHECK(r.converged);
    CHECK(r.log_likelihood >= log_likelihood(truth, data) - 1e-6 * std::abs(log_likelihood(truth, data)));
    // Match experts by their coefficients (label-switch safe: best of the 24 permutations).
    std::vector<int> perm{0, 1, 2, 3}, best;
    double best_cost = 1e300;
    do {
        double cost = 0.0;
        for (int k = 0; k < 4; ++k)
            cost += (r.model.experts.coefficients[static_cast<std::size_t>(perm[static_cast<std::size_t>(k)])] -
                     truth.experts.coefficients[static_cast<std::size_t>(k)])
                        .squaredNorm();
        if (cost < best_cost) {
            best_cost = cost;
            best = perm;
        }
    } while (std::next_permutation(perm.begin(), perm.end()));
    for (int k = 0; k < 4; ++k) {
        const auto fk = static_cast<std::size_t>(best[static_cast<std::size_t>(k)]);
        const Matrix& w = r.model.experts.coefficients[fk];
        const Matrix& t = truth.experts.coefficients[static_cast<std::size_t>(k)];
        // ~1000 samples per regime on an interval of width 1 with σ = 0.1: standard errors are
        // about 0.01 (slope) and 0.02 (intercept, far from x = 0); allow 5 of them.
        CHECK(std::abs(w(1, 0) - t(1, 0)) < 0.05);
        CHECK(std::abs(w(0, 0) - t(0, 0)) < 0.1);
        CHECK(std::sqrt(r.model.experts.covariances[fk].covariance(0, 0)) == Approx(0.1).epsilon(0.05));
    }
    // Hard routing agrees with the regime that generated most samples.
    const Eigen::VectorXi hard = route_hard(r.model.gate, data);
    const Eigen::VectorXi soft = predict_expert(r.model, data);
    CHECK((hard.array() == soft.array()).cast<double>().mean() > 0.99);
}

TEST_CASE("HME EM is monotone and a 3x2x2 tree fits", "[tree][em]") {
    const Model truth = four_regime_truth();
    const Dataset data = draw(truth, 1500, 77);
    for (const std::vector<Index>& shape : {std::vector<Index>{2, 2}, std::vector<Index>{3, 2, 2}}) {
        FitOptions opt;
        opt.expert = ExpertKind::Linear;
        opt.gate = GateKind::Tree;
        opt.tree = shape;
        opt.n_experts = std::accumulate(shape.begin(), shape.end(), Index{1}, std::multiplies<>());
        opt.regularization.reg_covar = 0.0;
        opt.gate_options.gate_l2 = 0.0;
        opt.max_iter = 200;
        opt.seed = 4;
        const FitResult r = fit(data, opt);
        REQUIRE(std::isfinite(r.log_likelihood));
        for (std::size_t t = 1; t < r.trace.size(); ++t)
            CHECK(r.trace[t] >= r.trace[t - 1] - 1e-9 * std::abs(r.trace[t - 1]));
        for (const auto& item : r.interventions) CHECK(item.kind != "likelihood_decrease");
        CHECK(r.n_parameters == n_parameters(r.model));
        // Node diagnostics: masses per depth add up to the data, shares in [0, 1].
        const auto diag = tree_diagnostics(std::get<TreeGate>(r.model.gate), data,
                                           r.responsibilities.log_resp.array().exp().matrix());
        REQUIRE(static_cast<Index>(diag.size()) == tree_n_nodes(shape));
        std::vector<double> per_depth(shape.size(), 0.0);
        for (const auto& d : diag) {
            per_depth[static_cast<std::size_t>(d.depth)] += d.responsibility_mass;
            CHECK(d.disagreement >= 0.0);
            CHECK(d.disagreement <= 1.0);
            CHECK(d.gate_entropy >= 0.0);
            CHECK(d.gate_entropy <= std::log(static_cast<double>(shape[static_cast<std::size_t>(d.depth)])) + 1e-12);
        }
        for (double mass : per_depth) CHECK(mass == Approx(1500.0).epsilon(1e-10));
    }
}

TEST_CASE("tree models round-trip through model files bit for bit", "[tree][model_io]") {
    const Model truth = four_regime_truth();
    const Dataset data = draw(truth, 800, 9);
    FitOptions opt;
    opt.expert = ExpertKind::Linear;
    opt.gate = GateKind::Tree;
    opt.tree = {2, 2};
    opt.n_experts = 4;
    opt.restarts = 2;
    const FitResult r = fit(data, opt);
    const FitRecord record = make_fit_record(r, opt);
    const std::string text = model_to_json(r.model, &record);
    const ModelFile loaded = model_from_json(text, "tree.json");
    CHECK(model_to_json(loaded.model, &*loaded.fit) == text);
    const auto& a = std::get<TreeGate>(r.model.gate);
    const auto& b = std::get<TreeGate>(loaded.model.gate);
    CHECK(a.branching == b.branching);
    for (std::size_t j = 0; j < a.nodes.size(); ++j) CHECK(a.nodes[j] == b.nodes[j]);
    CHECK(loaded.fit->options.tree == opt.tree);
    CHECK(log_likelihood(loaded.model, data) == log_likelihood(r.model, data));
    // A branching that does not match n_experts is rejected.
    std::string bad = text;
    const auto at = bad.find("\"branching\": [2, 2]");
    REQUIRE(at != std::string::npos);
    bad.replace(at, 19, "\"branching\": [2, 3]");
    CHECK_THROWS_AS(model_from_json(bad, "bad.json"), DataError);
}

TEST_CASE("hard routing follows the largest score at every node", "[tree]") {
    const Model truth = four_regime_truth();
    Matrix x(5, 1);
    x << -1.6, -0.4, 0.3, 1.7, 0.9;
    const Dataset data = make_dataset(Matrix(5, 0), x, x);
    const Eigen::VectorXi route = route_hard(truth.gate, data);
    CHECK(route(0) == 0);
    CHECK(route(1) == 1);
    CHECK(route(2) == 2);
    CHECK(route(3) == 3);
    CHECK(route(4) == 2);
}

TEST_CASE("fit rejects inconsistent tree options", "[tree]") {
    const Dataset data = draw(four_regime_truth(), 100, 1);
    FitOptions opt;
    opt.expert = ExpertKind::Linear;
    opt.gate = GateKind::Tree;
    opt.tree = {2, 2};
    opt.n_experts = 3;
    CHECK_THROWS_WITH(fit(data, opt), Catch::Contains("number of leaves"));
    opt.tree = {};
    opt.n_experts = 4;
    CHECK_THROWS_WITH(fit(data, opt), Catch::Contains("tree"));
    opt.gate = GateKind::Softmax;
    opt.tree = {2, 2};
    CHECK_THROWS_WITH(fit(data, opt), Catch::Contains("only used with a tree gate"));
}
