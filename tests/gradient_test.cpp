// Gradient-based fitting (issue 5): every analytic gradient against central finite differences
// of its own objective; packing round trips; the balance losses under uniform routing (hand
// values); gradient ascent and EM agreeing; sparse top-k, capacity, hard MoE, meta-pi, hash
// routing and upcycling checked against independent computations.

#include "moekit/fit.hpp"
#include "moekit/gradient.hpp"
#include "moekit/errors.hpp"
#include "moekit/simulate.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>

using moekit::Index;
using moekit::Matrix;
using moekit::Vector;

namespace {

/// Three-regime piecewise-linear data with q targets and one input used by experts and gate.
moekit::Dataset regimes(Index n, Index q, std::uint64_t seed) {
    moekit::Rng rng(seed);
    Matrix x(n, 1), y(n, q);
    for (Index i = 0; i < n; ++i) {
        x(i, 0) = 4.0 * moekit::uniform01(rng) - 2.0;
        const int regime = x(i, 0) < -0.7 ? 0 : (x(i, 0) < 0.6 ? 1 : 2);
        for (Index j = 0; j < q; ++j) {
            const double slope = regime == 0 ? -1.5 : (regime == 1 ? 0.5 : 2.0);
            y(i, j) = (1.0 + 0.3 * static_cast<double>(j)) * slope * x(i, 0) + static_cast<double>(regime) +
                      (0.2 + 0.1 * static_cast<double>(regime)) * moekit::standard_normal(rng);
        }
    }
    moekit::Dataset d = moekit::make_dataset(y, x, x);
    for (Index i = 0; i < n; ++i) d.weights(i) = 0.5 + static_cast<double>(i % 3) * 0.5; // weights matter
    return d;
}

/// A perturbed model, away from any optimum, so that every gradient component is non-zero.
moekit::Model perturbed_model(const moekit::Dataset& data, moekit::FitOptions o, std::uint64_t seed) {
    moekit::Rng rng(seed);
    o.regularization.scale = moekit::target_scale(data);
    moekit::Model m = moekit::initialize(data, o, rng);
    Vector theta = moekit::pack_parameters(m);
    for (Index j = 0; j < theta.size(); ++j) theta(j) += 0.1 * moekit::standard_normal(rng);
    REQUIRE(moekit::unpack_parameters(m, theta));
    return m;
}

/// Central differences of f at theta; relative step per coordinate.
Vector numeric_gradient(const std::function<double(const Vector&)>& f, const Vector& theta) {
    Vector g(theta.size());
    for (Index j = 0; j < theta.size(); ++j) {
        const double h = 1e-6 * std::max(1.0, std::abs(theta(j)));
        Vector a = theta, b = theta;
        a(j) += h;
        b(j) -= h;
        g(j) = (f(a) - f(b)) / (2.0 * h);
    }
    return g;
}

void check_gradient(const Vector& analytic, const Vector& numeric) {
    REQUIRE(analytic.size() == numeric.size());
    const double scale = std::max(1.0, numeric.cwiseAbs().maxCoeff());
    for (Index j = 0; j < analytic.size(); ++j) {
        CAPTURE(j, analytic(j), numeric(j));
        REQUIRE(std::abs(analytic(j) - numeric(j)) <= 1e-5 * scale);
    }
}

void likelihood_gradient_case(moekit::FitOptions o, const moekit::Dataset& data, double reg_covar, double gate_l2) {
    const moekit::Model m = perturbed_model(data, o, 11);
    moekit::ObjectiveOptions oo;
    oo.reg_covar = reg_covar;
    oo.gate_l2 = gate_l2;
    oo.scale = moekit::target_scale(data);
    oo.balance_weight = o.balance_weight;
    oo.balance = o.balance_loss;
    oo.capacity_factor = o.capacity_factor;
    Vector analytic;
    moekit::likelihood_objective(m, data, oo, &analytic);
    const Vector theta = moekit::pack_parameters(m);
    const Vector numeric = numeric_gradient(
        [&](const Vector& t) {
            moekit::Model c = m;
            REQUIRE(moekit::unpack_parameters(c, t));
            return moekit::likelihood_objective(c, data, oo);
        },
        theta);
    check_gradient(analytic, numeric);
}

/// k linear experts with a softmax gate, every other option at its default.
moekit::FitOptions linear_softmax(Index k) {
    moekit::FitOptions o;
    o.expert = moekit::ExpertKind::Linear;
    o.gate = moekit::GateKind::Softmax;
    o.n_experts = k;
    return o;
}

/// Linear experts with a softmax gate under sparse top-k routing, trained by gradient ascent.
moekit::FitOptions sparse_options(Index k, Index top_k) {
    moekit::FitOptions o = linear_softmax(k);
    o.top_k = top_k;
    o.method = moekit::FitMethod::Gradient;
    return o;
}

} // namespace

TEST_CASE("pack and unpack round-trip every gate and covariance structure", "[gradient]") {
    const moekit::Dataset data = regimes(60, 2, 1);
    for (auto gate : {moekit::GateKind::Constant, moekit::GateKind::Softmax, moekit::GateKind::Tree})
        for (auto cov : {moekit::CovarianceType::Full, moekit::CovarianceType::Tied, moekit::CovarianceType::Diag,
                         moekit::CovarianceType::Spherical}) {
            moekit::FitOptions o;
            o.expert = moekit::ExpertKind::Linear;
            o.gate = gate;
            o.covariance = cov;
            o.n_experts = gate == moekit::GateKind::Tree ? 4 : 3;
            if (gate == moekit::GateKind::Tree) o.tree = {2, 2};
            moekit::Rng rng(3);
            moekit::Model m = moekit::initialize(data, o, rng);
            const Vector theta = moekit::pack_parameters(m);
            moekit::Model back = m;
            REQUIRE(moekit::unpack_parameters(back, theta));
            REQUIRE(moekit::pack_parameters(back).isApprox(theta, 1e-12));
            REQUIRE(moekit::log_likelihood(back, data) == Approx(moekit::log_likelihood(m, data)).epsilon(1e-10));
            moekit::validate(back, "test");
            Vector wrong(theta.size() + 1);
            REQUIRE_FALSE(moekit::unpack_parameters(back, wrong));
        }
}

TEST_CASE("log-likelihood gradient matches central differences", "[gradient]") {
    const moekit::Dataset lin = regimes(80, 2, 2);
    moekit::FitOptions o;
    o.expert = moekit::ExpertKind::Linear;
    o.n_experts = 3;
    for (auto cov : {moekit::CovarianceType::Full, moekit::CovarianceType::Tied, moekit::CovarianceType::Diag,
                     moekit::CovarianceType::Spherical}) {
        o.covariance = cov;
        SECTION(std::string("constant gate, ") + std::string(moekit::to_string(cov))) {
            o.gate = moekit::GateKind::Constant;
            likelihood_gradient_case(o, lin, 1e-2, 0.0);
        }
        SECTION(std::string("softmax gate, ") + std::string(moekit::to_string(cov))) {
            o.gate = moekit::GateKind::Softmax;
            likelihood_gradient_case(o, lin, 1e-3, 0.5);
        }
    }
    SECTION("tree gate 2x2") {
        o.gate = moekit::GateKind::Tree;
        o.tree = {2, 2};
        o.n_experts = 4;
        likelihood_gradient_case(o, lin, 1e-3, 0.1);
    }
    SECTION("Gaussian experts, full covariance") {
        o.expert = moekit::ExpertKind::Gaussian;
        o.gate = moekit::GateKind::Constant;
        likelihood_gradient_case(o, lin, 0.0, 0.0);
    }
}

TEST_CASE("sparse top-k objective gradient (balance loss, capacity) matches central differences", "[gradient][topk]") {
    const moekit::Dataset lin = regimes(90, 1, 4);
    moekit::FitOptions o = sparse_options(3, 2);
    SECTION("switch loss") {
        o.balance_weight = 3.0;
        o.balance_loss = moekit::BalanceLoss::Switch;
        likelihood_gradient_case(o, lin, 1e-3, 0.1);
    }
    SECTION("importance loss") {
        o.balance_weight = 5.0;
        o.balance_loss = moekit::BalanceLoss::Importance;
        likelihood_gradient_case(o, lin, 1e-3, 0.1);
    }
    SECTION("capacity factor") {
        o.top_k = 1;
        o.capacity_factor = 1.0;
        likelihood_gradient_case(o, lin, 1e-3, 0.1);
    }
}

TEST_CASE("meta-pi squared-error gradient matches central differences", "[gradient][metapi]") {
    const moekit::Dataset lin = regimes(70, 2, 5);
    moekit::FitOptions o;
    o.expert = moekit::ExpertKind::Linear;
    o.n_experts = 3;
    for (auto gate : {moekit::GateKind::Constant, moekit::GateKind::Softmax, moekit::GateKind::Tree}) {
        o.gate = gate;
        o.n_experts = gate == moekit::GateKind::Tree ? 4 : 3;
        o.tree = gate == moekit::GateKind::Tree ? std::vector<Index>{2, 2} : std::vector<Index>{};
        const moekit::Model m = perturbed_model(lin, o, 13);
        Vector analytic;
        moekit::meta_pi_objective(m, lin, 0.3, &analytic);
        const Vector theta = moekit::pack_parameters(m, moekit::ParameterSet::GateAndMeans);
        const Vector numeric = numeric_gradient(
            [&](const Vector& t) {
                moekit::Model c = m;
                REQUIRE(moekit::unpack_parameters(c, t, moekit::ParameterSet::GateAndMeans));
                return moekit::meta_pi_objective(c, lin, 0.3);
            },
            theta);
        INFO("gate " << moekit::to_string(gate));
        check_gradient(analytic, numeric);
    }
}

TEST_CASE("balance losses under uniform routing: Switch = 1 (so α·K·Σ f P = α), CV losses 0", "[gradient][topk]") {
    // Half the samples at z = +1, half at z = −1; a symmetric gate sends each half to its own
    // expert with probability 0.8, so f = P = (½, ½) and, with top-1, importance = load = (n/2, n/2).
    const Index n = 10;
    Matrix z(n, 1), y = Matrix::Zero(n, 1);
    for (Index i = 0; i < n; ++i) z(i, 0) = i < n / 2 ? 1.0 : -1.0;
    moekit::Dataset data = moekit::make_dataset(y, Matrix(), z);
    moekit::Model m;
    Matrix v = Matrix::Zero(2, 2);
    v(1, 1) = -0.5 * std::log(4.0); // scores ±log 2: probabilities 0.8 / 0.2
    m.gate = moekit::SoftmaxGate{v};
    m.top_k = 1;
    m.experts.coefficients = {Matrix::Zero(1, 1), Matrix::Zero(1, 1)};
    m.experts.covariances = {*moekit::try_factor(Matrix::Identity(1, 1)), *moekit::try_factor(Matrix::Identity(1, 1))};
    m.target_names = {"y1"};
    m.gate_input_names = {"z1"};
    const moekit::ObjectiveReport r = moekit::balance_losses(m, data);
    REQUIRE(r.switch_loss == Approx(1.0).epsilon(1e-15));
    REQUIRE(r.importance_cv2 == Approx(0.0).margin(1e-15));
    REQUIRE(r.load_cv2 == Approx(0.0).margin(1e-15));
    REQUIRE(r.load(0) == Approx(0.5));
    // In the objective the penalty is α × the loss: α exactly for the Switch loss.
    moekit::ObjectiveOptions oo;
    oo.balance_weight = 0.01;
    moekit::ObjectiveReport with;
    const double value = moekit::likelihood_objective(m, data, oo, nullptr, &with);
    const double none = moekit::likelihood_objective(m, data, moekit::ObjectiveOptions{}, nullptr);
    REQUIRE(none - value == Approx(0.01).epsilon(1e-12));
}

TEST_CASE("top-k keeps the k largest and renormalises", "[gradient][topk]") {
    Matrix lg(2, 4);
    lg << std::log(0.1), std::log(0.4), std::log(0.3), std::log(0.2), std::log(0.25), std::log(0.25), std::log(0.25),
        std::log(0.25);
    moekit::keep_top_k(lg, 2);
    REQUIRE(std::exp(lg(0, 1)) == Approx(4.0 / 7.0));
    REQUIRE(std::exp(lg(0, 2)) == Approx(3.0 / 7.0));
    REQUIRE(lg(0, 0) == -std::numeric_limits<double>::infinity());
    REQUIRE(lg(0, 3) == -std::numeric_limits<double>::infinity());
    REQUIRE(std::exp(lg(1, 0)) == Approx(0.5)); // ties: the lower indices
    REQUIRE(std::exp(lg(1, 1)) == Approx(0.5));
    REQUIRE(lg(1, 2) == -std::numeric_limits<double>::infinity());
}

TEST_CASE("EM's optimum is a stationary point of gradient ascent, and back (softmax and tree gates)", "[gradient]") {
    // Both methods find local optima (on these separable regimes the gate coefficients grow
    // large and the starts end in different optima), so the check is that each method, started
    // at the other's optimum, stays there: the same fixed point, to 1e-6 relative.
    const moekit::Dataset data = regimes(400, 1, 6);
    for (auto gate : {moekit::GateKind::Softmax, moekit::GateKind::Tree}) {
        moekit::FitOptions o;
        o.expert = moekit::ExpertKind::Linear;
        o.gate = gate;
        o.n_experts = gate == moekit::GateKind::Tree ? 4 : 3;
        if (gate == moekit::GateKind::Tree) o.tree = {2, 2};
        o.restarts = 4;
        o.seed = 9;
        INFO("gate " << moekit::to_string(gate));
        const moekit::FitResult em = moekit::fit(data, o);
        o.method = moekit::FitMethod::Gradient;
        const moekit::FitResult gr = moekit::fit(data, o, &em.model);
        CAPTURE(em.log_likelihood, gr.log_likelihood, gr.iterations);
        REQUIRE(gr.method == moekit::FitMethod::Gradient);
        REQUIRE(gr.converged);
        REQUIRE(std::abs(gr.log_likelihood - em.log_likelihood) <= 1e-6 * std::abs(em.log_likelihood));
        for (std::size_t t = 1; t < gr.trace.size(); ++t) REQUIRE(gr.trace[t] >= gr.trace[t - 1]);

        // (The reverse does not hold here: from its own starts gradient ascent stops on the ridge
        // along which the near-separable gate sharpens, where the objective changes by less than
        // tol per sample and iteration, and EM's IRLS still climbs 0.16 further; docs/model.md.)
    }
}

TEST_CASE("sparse top-k fit: routing, load, capacity drops", "[gradient][topk]") {
    const moekit::Dataset data = regimes(300, 1, 7);
    moekit::FitOptions o = linear_softmax(3);
    o.top_k = 1;
    o.balance_weight = 0.01;
    o.seed = 3;
    o.max_iter = 300;
    const moekit::FitResult r = moekit::fit(data, o);
    REQUIRE(r.method == moekit::FitMethod::Gradient);
    REQUIRE(r.model.top_k == 1);
    // Top-1: every sample has exactly one finite gate entry, and its responsibility is 1.
    const Matrix g = moekit::gate_probabilities(r.model, data);
    for (Index i = 0; i < g.rows(); ++i) REQUIRE((g.row(i).array() > 0.0).count() == 1);
    REQUIRE(r.sparse.load.size() == 3);
    REQUIRE(r.sparse.load.sum() == Approx(1.0));
    REQUIRE(r.sparse.dropped == 0);
    REQUIRE(std::isfinite(r.log_likelihood));

    o.capacity_factor = 0.5; // each expert at most 50 samples: at least 150 samples dropped
    const moekit::FitResult c = moekit::fit(data, o);
    REQUIRE(c.sparse.dropped >= 150);
    REQUIRE(c.sparse.dropped_samples == c.sparse.dropped); // top-1: a dropped routing drops the sample
    REQUIRE(c.sparse.load.sum() <= 0.5 + 1e-12);
}

TEST_CASE("hard MoE: classification EM, top-1 routing, disagreement share", "[gradient][hard]") {
    const moekit::Dataset data = regimes(300, 1, 8);
    moekit::FitOptions o = linear_softmax(3);
    o.variant = moekit::Variant::Hard;
    o.restarts = 3;
    o.seed = 2;
    const moekit::FitResult r = moekit::fit(data, o);
    REQUIRE(r.converged);
    REQUIRE(r.model.top_k == 1);
    // Classification log-likelihood never decreases.
    for (std::size_t t = 1; t < r.trace.size(); ++t) REQUIRE(r.trace[t] >= r.trace[t - 1] - 1e-9 * std::abs(r.trace[t - 1]));
    REQUIRE(r.hard_disagreement >= 0.0);
    REQUIRE(r.hard_disagreement < 0.2); // regimes are separable in x: the gate learns them
    // Prediction is the top-1 expert's mean.
    const Matrix pred = moekit::predict_mean(r.model, data);
    const Eigen::VectorXi route = moekit::route_hard(r.model.gate, data);
    for (Index i = 0; i < data.n_samples(); ++i)
        REQUIRE(pred(i, 0) == Approx(moekit::expert_mean(r.model.experts, data, route(i))(i, 0)).epsilon(1e-12));
    // Its log-likelihood is that of the routed expert.
    const Vector hard = moekit::log_likelihood_samples_hard(r.model, data);
    REQUIRE(r.log_likelihood == Approx(data.weights.dot(hard)).epsilon(1e-10));

    o.gate = moekit::GateKind::Constant;
    REQUIRE_THROWS_AS(moekit::fit(data, o), moekit::InvalidArgument);
}

TEST_CASE("meta-pi: lower squared error than the likelihood-trained MoE on the same data", "[gradient][metapi]") {
    const moekit::Dataset data = regimes(300, 1, 9);
    moekit::FitOptions o = linear_softmax(2); // too few experts for 3 regimes: the two objectives disagree
    o.restarts = 3;
    o.seed = 4;
    const moekit::FitResult ml = moekit::fit(data, o);
    o.variant = moekit::Variant::MetaPi;
    const moekit::FitResult mp = moekit::fit(data, o);
    CAPTURE(ml.mse, mp.mse, ml.log_likelihood, mp.log_likelihood);
    REQUIRE(mp.method == moekit::FitMethod::Gradient);
    REQUIRE(mp.mse < ml.mse);                       // meta-pi minimises the squared error ...
    REQUIRE(ml.log_likelihood > mp.log_likelihood); // ... the MoE maximises the likelihood
    REQUIRE(mp.mse == Approx(moekit::mean_squared_error(mp.model, data)));
    moekit::validate(mp.model, "test"); // covariances set from the gate-weighted residuals
    o.method = moekit::FitMethod::EM;
    REQUIRE_THROWS_AS(moekit::fit(data, o), moekit::InvalidArgument);
}

TEST_CASE("hash routing: experts fitted on their hashed groups", "[gradient][hash]") {
    moekit::Dataset data = regimes(120, 1, 10);
    const std::vector<std::string> cells = {"7", "007", "a", "b", "  7 ", "+7", "abc"};
    REQUIRE(moekit::hash_key("7") == moekit::hash_key("007"));
    REQUIRE(moekit::hash_key("7") == moekit::hash_key("  7 "));
    REQUIRE(moekit::hash_key("7") == moekit::hash_key("+7"));
    REQUIRE(moekit::hash_key("a") != moekit::hash_key("b"));
    data.keys.clear();
    for (Index i = 0; i < data.n_samples(); ++i) data.keys.push_back(moekit::hash_key(std::to_string(i % 5)));
    data.key_name = "group";
    moekit::FitOptions o;
    o.expert = moekit::ExpertKind::Linear;
    o.gate = moekit::GateKind::Hash;
    o.n_experts = 3;
    const moekit::FitResult r = moekit::fit(data, o);
    REQUIRE(std::holds_alternative<moekit::HashGate>(r.model.gate));
    REQUIRE(moekit::n_parameters(r.model.gate) == 0);
    // The E-step adds the gate's 0 / −∞ block by block (no n×K gate matrix): the same bits as
    // the expert densities plus gate_log_probabilities.
    const Matrix expected =
        moekit::expert_log_densities(r.model.experts, data) + moekit::gate_log_probabilities(r.model, data);
    REQUIRE((moekit::log_joint(r.model, data).array() == expected.array()).all());
    // Each expert is the weighted least-squares line of its own group.
    for (Index k = 0; k < 3; ++k) {
        Matrix a(0, 2);
        Vector b(0), w(0);
        for (Index i = 0; i < data.n_samples(); ++i) {
            if (moekit::hash_expert(data.keys[static_cast<std::size_t>(i)], 3) != k) continue;
            a.conservativeResize(a.rows() + 1, 2);
            a.row(a.rows() - 1) << 1.0, data.x(i, 0);
            b.conservativeResize(b.size() + 1);
            b(b.size() - 1) = data.y(i, 0);
            w.conservativeResize(w.size() + 1);
            w(w.size() - 1) = data.weights(i);
        }
        if (a.rows() < 3) continue;
        const Matrix aw = a.array().colwise() * w.array().sqrt();
        const Vector bw = b.array() * w.array().sqrt();
        const Vector coef = aw.colPivHouseholderQr().solve(bw);
        REQUIRE(r.model.experts.coefficients[static_cast<std::size_t>(k)](0, 0) == Approx(coef(0)).epsilon(1e-8));
        REQUIRE(r.model.experts.coefficients[static_cast<std::size_t>(k)](1, 0) == Approx(coef(1)).epsilon(1e-8));
    }
    moekit::Dataset no_keys = data;
    no_keys.keys.clear();
    REQUIRE_THROWS_AS(moekit::fit(no_keys, o), moekit::InvalidArgument);
}

TEST_CASE("upcycling: one expert copied K times with seeded perturbations", "[gradient][upcycle]") {
    const moekit::Dataset data = regimes(300, 1, 12);
    moekit::FitOptions o = linear_softmax(3);
    o.init = moekit::InitMethod::Upcycle;
    o.seed = 5;
    o.regularization.scale = moekit::target_scale(data);
    moekit::Rng a(1), b(1), c(2);
    const moekit::Model m1 = moekit::initialize(data, o, a);
    const moekit::Model m2 = moekit::initialize(data, o, b);
    const moekit::Model m3 = moekit::initialize(data, o, c);
    REQUIRE(m1.experts.coefficients[0] == m2.experts.coefficients[0]); // same seed, same start
    REQUIRE(m1.experts.coefficients[0] != m3.experts.coefficients[0]);
    REQUIRE(m1.experts.coefficients[0] != m1.experts.coefficients[1]); // copies differ
    // Every copy shares the single expert's covariance; the gate starts uniform.
    REQUIRE(m1.experts.covariances[0].covariance == m1.experts.covariances[2].covariance);
    REQUIRE(std::get<moekit::SoftmaxGate>(m1.gate).coefficients.isZero(0.0));
    o.upcycle_noise = 0.0;
    moekit::Rng d(1);
    const moekit::Model same = moekit::initialize(data, o, d);
    REQUIRE(same.experts.coefficients[0] == same.experts.coefficients[2]);
    o.upcycle_noise = 0.1;
    const moekit::FitResult r = moekit::fit(data, o);
    REQUIRE(r.converged);
    const moekit::FitResult again = moekit::fit(data, o);
    REQUIRE(again.log_likelihood == r.log_likelihood);
}

TEST_CASE("noisy top-k gating: gradient in V, experts and noise weights matches central differences", "[gradient][topk][noise]") {
    const moekit::Dataset lin = regimes(60, 1, 14);
    const moekit::FitOptions o = sparse_options(3, 2);
    const moekit::Model m = perturbed_model(lin, o, 15);
    moekit::Rng rng(16);
    Matrix u(2, 3), eps(lin.n_samples(), 3);
    for (Index j = 0; j < u.size(); ++j) u(j) = 0.5 * moekit::standard_normal(rng);
    for (Index j = 0; j < eps.size(); ++j) eps(j) = moekit::standard_normal(rng);
    for (auto loss : {moekit::BalanceLoss::Switch, moekit::BalanceLoss::Importance, moekit::BalanceLoss::Load}) {
        INFO("balance loss " << moekit::to_string(loss));
        moekit::ObjectiveOptions oo;
        oo.reg_covar = 1e-3;
        oo.gate_l2 = 0.1;
        oo.balance = loss;
        oo.balance_weight = 4.0;
        oo.noise_draws = &eps;
        auto value_at = [&](const Vector& t) {
            moekit::Model c = m;
            const Index np = moekit::pack_parameters(m).size();
            REQUIRE(moekit::unpack_parameters(c, t.head(np)));
            const Matrix uu = Eigen::Map<const Matrix>(t.data() + np, 2, 3);
            moekit::ObjectiveOptions with = oo;
            with.noise_weights = &uu;
            return moekit::likelihood_objective(c, lin, with);
        };
        const Vector packed = moekit::pack_parameters(m);
        Vector theta(packed.size() + u.size());
        theta << packed, Eigen::Map<const Vector>(u.data(), u.size());
        moekit::ObjectiveOptions with = oo;
        with.noise_weights = &u;
        Vector gm;
        Matrix gu;
        moekit::likelihood_objective(m, lin, with, &gm, nullptr, &gu);
        Vector analytic(theta.size());
        analytic << gm, Eigen::Map<const Vector>(gu.data(), gu.size());
        check_gradient(analytic, numeric_gradient(value_at, theta));
    }
}

TEST_CASE("smooth load loss is 0 when the noise treats the experts alike", "[gradient][topk][noise]") {
    // Equal clean scores; sample pairs with swapped draws: P_i1 = Φ(−ε_i2), P_i2 = Φ(−ε_i1), so
    // both experts get the same load.
    const Index n = 6;
    Matrix z(n, 1), y = Matrix::Zero(n, 1), eps(n, 2);
    for (Index i = 0; i < n; ++i) {
        z(i, 0) = static_cast<double>(i);
        const double a = 0.3 * static_cast<double>(i / 2) - 0.4, b = -0.7 + 0.1 * static_cast<double>(i / 2);
        eps(i, 0) = i % 2 == 0 ? a : b;
        eps(i, 1) = i % 2 == 0 ? b : a;
    }
    moekit::Dataset data = moekit::make_dataset(y, Matrix(), z);
    moekit::Model m;
    m.gate = moekit::SoftmaxGate{Matrix::Zero(2, 2)};
    m.top_k = 1;
    m.experts.coefficients = {Matrix::Zero(1, 1), Matrix::Zero(1, 1)};
    m.experts.covariances = {*moekit::try_factor(Matrix::Identity(1, 1)), *moekit::try_factor(Matrix::Identity(1, 1))};
    m.target_names = {"y1"};
    m.gate_input_names = {"z1"};
    const Matrix u = Matrix::Zero(2, 2);
    moekit::ObjectiveOptions oo;
    oo.balance = moekit::BalanceLoss::Load;
    oo.balance_weight = 1.0;
    oo.noise_weights = &u;
    oo.noise_draws = &eps;
    moekit::ObjectiveReport rep;
    moekit::likelihood_objective(m, data, oo, nullptr, &rep);
    REQUIRE(rep.balance_loss == Approx(0.0).margin(1e-14));
}

TEST_CASE("noisy gating fit: seeded, finite, clean prediction", "[gradient][topk][noise]") {
    const moekit::Dataset data = regimes(200, 1, 17);
    moekit::FitOptions o = linear_softmax(3);
    o.top_k = 1;
    o.gate_noise = true;
    o.balance_loss = moekit::BalanceLoss::Load;
    o.balance_weight = 0.1;
    o.max_iter = 60;
    o.seed = 8;
    const moekit::FitResult a = moekit::fit(data, o);
    const moekit::FitResult b = moekit::fit(data, o);
    REQUIRE(a.iterations == 60);
    REQUIRE(a.converged); // the schedule ran to its end
    REQUIRE(std::isfinite(a.log_likelihood));
    REQUIRE(a.log_likelihood == b.log_likelihood); // same seed, same draws, same fit
    REQUIRE(a.log_likelihood > a.trace.front() - 1e9); // finite trace
    o.seed = 9;
    REQUIRE(moekit::fit(data, o).log_likelihood != a.log_likelihood);
    o.gate_noise = false;
    REQUIRE_THROWS_AS(moekit::fit(data, o), moekit::InvalidArgument); // load loss needs the noise
}
