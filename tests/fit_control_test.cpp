// The fit's progress hook: it sees every iteration, and returning false stops the fit cleanly.
#include <catch2/catch.hpp>

#include "moekit/moekit.hpp"

using namespace moekit;

namespace {
Dataset faithful() {
    CsvSpec spec;
    spec.targets = {"eruptions", "waiting"};
    return read_csv(std::string(MOEKIT_DATA_DIR) + "/faithful.csv", spec);
}
} // namespace

TEST_CASE("on_iteration sees every EM iteration of every start", "[fit][progress]") {
    const Dataset data = faithful();
    FitOptions opt;
    opt.restarts = 3;
    opt.seed = 2;
    std::vector<FitProgress> seen;
    opt.on_iteration = [&](const FitProgress& p) {
        seen.push_back(p);
        return true;
    };
    const FitResult r = fit(data, opt);
    REQUIRE(!seen.empty());
    CHECK(seen.front().restart == 0);
    CHECK(seen.back().restart == 2);
    CHECK(seen.front().n_restarts == 3);
    CHECK(!r.interrupted);
    // The same fit without the hook is identical.
    FitOptions plain = opt;
    plain.on_iteration = nullptr;
    const FitResult q = fit(data, plain);
    CHECK(q.trace == r.trace);
    CHECK(q.log_likelihood == r.log_likelihood);
}

TEST_CASE("returning false stops the fit and keeps the best model so far", "[fit][interrupt]") {
    const Dataset data = faithful();
    FitOptions opt;
    opt.restarts = 5;
    opt.seed = 2;
    opt.tol = 0.0;
    opt.max_iter = 1000;
    int calls = 0;
    opt.on_iteration = [&](const FitProgress&) { return ++calls < 3; };
    const FitResult r = fit(data, opt);
    CHECK(r.interrupted);
    CHECK_FALSE(r.converged);
    CHECK(r.iterations == 3);
    CHECK(r.restart_log_likelihoods.size() == 1);
    CHECK(std::isfinite(r.log_likelihood));
    CHECK(r.log_likelihood == Approx(log_likelihood(r.model, data)).epsilon(1e-12));
    validate(r.model, "test");
    bool warned = false;
    for (const auto& w : r.warnings) warned = warned || w.find("interrupted") != std::string::npos;
    CHECK(warned);
}

namespace {
Dataset npreg() {
    CsvSpec spec;
    spec.targets = {"yn"};
    spec.inputs = {"x"};
    spec.gate_inputs = {"x"};
    return read_csv(std::string(MOEKIT_DATA_DIR) + "/NPreg.csv", spec);
}
} // namespace

TEST_CASE("on_iteration sees the converging iteration of EM, hard and gradient fits",
          "[fit][progress]") {
    // One start each, run to convergence: the hook's last call is the result's last iteration.
    const Dataset data = npreg();
    auto check = [&](FitOptions opt) {
        opt.expert = ExpertKind::Linear;
        opt.gate = GateKind::Softmax;
        opt.n_experts = 2;
        opt.seed = 1;
        opt.tol = 1e-8;
        std::vector<FitProgress> seen;
        opt.on_iteration = [&](const FitProgress& p) {
            seen.push_back(p);
            return true;
        };
        const FitResult r = fit(data, opt);
        REQUIRE(r.converged);
        CHECK_FALSE(r.interrupted);
        REQUIRE(!seen.empty());
        CHECK(seen.back().iteration == r.iterations);
        CHECK(seen.front().iteration == 1);
        CHECK(static_cast<int>(seen.size()) == r.iterations); // one call per iteration
        // The hook's value is the trace's last entry (the converging iteration's).
        CHECK(seen.back().log_likelihood == r.trace.back());

        // A stop request on the converging iteration changes nothing.
        const int last = r.iterations;
        opt.on_iteration = [last](const FitProgress& p) { return p.iteration < last; };
        const FitResult s = fit(data, opt);
        CHECK(s.converged);
        CHECK_FALSE(s.interrupted);
        CHECK(s.iterations == last);
        CHECK(s.log_likelihood == r.log_likelihood);
    };
    SECTION("EM") {
        FitOptions opt;
        opt.method = FitMethod::EM;
        check(opt);
    }
    SECTION("hard") {
        FitOptions opt;
        opt.variant = Variant::Hard;
        check(opt);
    }
    SECTION("gradient") {
        FitOptions opt;
        opt.method = FitMethod::Gradient;
        check(opt);
    }
}
