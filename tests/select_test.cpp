// Model selection (moekit::select_model and `moekit select`).
// Truths: flexmix's stepFlexmix choice on NPreg (yn ~ x + x², k = 1..4: two experts) and the
// peer reference optimum of that model (tests/reference/NPreg_mixreg_K2.json, log-likelihood
// -642.532013736093, BIC 1332.74888377112); the definition of the ranking (sorted by the
// criterion recomputed from each candidate's numbers, spurious and failed candidates last);
// the construction of the data (3 distinct rows cannot hold 4 experts).

#include "moekit/csv.hpp"
#include "moekit/diagnostics.hpp"
#include "moekit/errors.hpp"
#include "moekit/model_io.hpp"
#include "support/cli_runner.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

using moekit::Index;
using moekit::Matrix;

namespace {

const std::string data_dir = MOEKIT_DATA_DIR;

constexpr double npreg_log_likelihood = -642.532013736093; // NPreg_mixreg_K2.json
constexpr double npreg_bic = 1332.74888377112;

moekit::Dataset npreg(bool with_gate_input = false) {
    moekit::CsvSpec spec;
    spec.targets = {"yn"};
    spec.inputs = {"x", "x2"};
    if (with_gate_input) spec.gate_inputs = {"x"};
    return moekit::read_csv(data_dir + "/NPreg.csv", spec);
}

moekit::FitOptions npreg_options() {
    moekit::FitOptions options;
    options.expert = moekit::ExpertKind::Linear;
    options.restarts = 10;
    options.seed = 1;
    return options;
}

/// The ranking invariants of a table: ok candidates first, not spurious before spurious, each
/// group sorted by the criterion, failed ones last.
void require_ranked(const moekit::SelectionTable& table) {
    auto group = [](const moekit::SelectionCandidate& c) { return !c.ok ? 2 : c.spurious ? 1 : 0; };
    for (std::size_t i = 1; i < table.candidates.size(); ++i) {
        const auto& a = table.candidates[i - 1];
        const auto& b = table.candidates[i];
        CHECK(group(a) <= group(b));
        if (group(a) == group(b) && a.ok)
            CHECK(moekit::criterion_value(a, table.criterion) <=
                  moekit::criterion_value(b, table.criterion));
    }
    for (const auto& c : table.candidates)
        if (c.ok) CHECK(c.spurious == (c.min_share < table.min_share));
}

} // namespace

TEST_CASE("select_model chooses two experts on NPreg, as flexmix's stepFlexmix does", "[select]") {
    moekit::SelectionGrid grid;
    grid.n_experts = {1, 2, 3, 4};
    const moekit::SelectionResult result =
        moekit::select_model(npreg(), npreg_options(), grid, moekit::Criterion::Bic);
    REQUIRE(result.found);
    CHECK(result.best.model.n_experts() == 2);
    CHECK(result.best.log_likelihood == Approx(npreg_log_likelihood).epsilon(1e-9));
    CHECK(result.best.bic == Approx(npreg_bic).epsilon(1e-9));
    CHECK(result.best_options.n_experts == 2);
    CHECK_FALSE(result.best_options.on_iteration);
    REQUIRE(result.table.candidates.size() == 4);
    const auto& first = result.table.candidates.front();
    CHECK(first.n_experts == 2);
    CHECK(first.ok);
    CHECK_FALSE(first.spurious);
    CHECK(first.bic == Approx(npreg_bic).epsilon(1e-9));
    CHECK(first.n_parameters == 9);
    require_ranked(result.table);
    // The best model's diagnostics carry the table (for `moekit report`).
    REQUIRE(result.best_diagnostics.selection);
    CHECK(result.best_diagnostics.selection->candidates.size() == 4);
    CHECK(result.best_diagnostics.bic == Approx(npreg_bic).epsilon(1e-9));
    REQUIRE(result.best_diagnostics.fit_history);
    CHECK(result.best_diagnostics.fit_history->restarts.count == 10);
    // Each candidate's criteria are those of its own numbers.
    for (const auto& c : result.table.candidates) {
        INFO("K = " << c.n_experts);
        CHECK(c.bic ==
              Approx(-2 * c.log_likelihood + c.n_parameters * std::log(200.0)).epsilon(1e-12));
        CHECK(c.aic == Approx(-2 * c.log_likelihood + 2 * c.n_parameters).epsilon(1e-12));
        CHECK(c.icl >= c.bic);
        CHECK(c.restarts == 10);
    }
}

TEST_CASE(
    "select_model: spurious maxima are flagged and not selected, min_share 0 turns the rule off",
    "[select]") {
    // Among more starts some K >= 3 fits find a spurious maximum: an expert on a handful of
    // samples with a tiny variance, whose BIC beats K = 2. flexmix drops such components
    // (minprior 0.05); select_model flags them.
    moekit::SelectionGrid grid;
    grid.n_experts = {1, 2, 3, 4};
    const auto with_rule =
        moekit::select_model(npreg(), npreg_options(), grid, moekit::Criterion::Bic);
    REQUIRE(with_rule.found);
    CHECK(with_rule.best.model.n_experts() == 2);
    for (const auto& c : with_rule.table.candidates)
        if (c.spurious) CHECK(c.min_share < 0.05);

    grid.min_share = 0.0;
    const auto without =
        moekit::select_model(npreg(), npreg_options(), grid, moekit::Criterion::Bic);
    REQUIRE(without.found);
    require_ranked(without.table);
    double lowest = std::numeric_limits<double>::infinity();
    for (const auto& c : without.table.candidates) {
        CHECK_FALSE(c.spurious);
        lowest = std::min(lowest, c.bic);
    }
    // Without the rule the selected candidate is simply the lowest BIC, spurious or not.
    CHECK(without.table.candidates.front().bic == lowest);
    CHECK(without.best.bic == Approx(lowest).epsilon(1e-12));

    grid.min_share = 1.0;
    CHECK_THROWS_AS(moekit::select_model(npreg(), npreg_options(), grid, moekit::Criterion::Bic),
                    moekit::InvalidArgument);
}

TEST_CASE("select_model: ICL and AIC rank by their own column", "[select]") {
    moekit::SelectionGrid grid;
    grid.n_experts = {1, 2, 3};
    moekit::FitOptions options = npreg_options();
    options.restarts = 4;
    for (auto criterion : {moekit::Criterion::Icl, moekit::Criterion::Aic}) {
        const auto result = moekit::select_model(npreg(), options, grid, criterion);
        CHECK(result.table.criterion == criterion);
        require_ranked(result.table);
        REQUIRE(result.found);
        const auto& best = result.table.candidates.front();
        CHECK(result.best.model.n_experts() == best.n_experts);
        CHECK(moekit::criterion_value(best, criterion) == Approx(criterion == moekit::Criterion::Icl
                                                                     ? result.best_diagnostics.icl
                                                                     : result.best_diagnostics.aic)
                                                              .epsilon(1e-12));
    }
}

TEST_CASE("select_model: a candidate that cannot be fitted is recorded, not fatal", "[select]") {
    // Four distinct values: K = 5 is more experts than distinct rows and refused by fit.
    const moekit::Dataset data =
        moekit::make_dataset((Matrix(6, 1) << 1, 1, 4, 4, 9, 9.5).finished());
    moekit::SelectionGrid grid;
    grid.n_experts = moekit::parse_expert_range("1:5");
    grid.min_share = 0.0;
    moekit::FitOptions options;
    options.restarts = 2;
    int seen = 0;
    const auto result = moekit::select_model(
        data, options, grid, moekit::Criterion::Bic, [&seen](const moekit::SelectionCandidate&) {
            ++seen;
        });
    CHECK(seen == 5);
    REQUIRE(result.table.candidates.size() == 5);
    REQUIRE(result.found);
    require_ranked(result.table);
    int failed = 0;
    for (const auto& c : result.table.candidates) {
        if (c.ok) continue;
        ++failed;
        CHECK(c.n_experts == 5);
        CHECK(c.error.find("n_experts") != std::string::npos);
    }
    CHECK(failed == 1);
    CHECK_FALSE(result.table.candidates.back().ok);
}

TEST_CASE("select_model: constant-gate candidates ignore the gate inputs, grids are checked",
          "[select]") {
    moekit::SelectionGrid grid;
    grid.n_experts = {2};
    grid.gates = {moekit::GateKind::Constant, moekit::GateKind::Softmax};
    moekit::FitOptions options = npreg_options();
    options.restarts = 3;
    const auto result = moekit::select_model(npreg(true), options, grid, moekit::Criterion::Bic);
    REQUIRE(result.table.candidates.size() == 2);
    for (const auto& c : result.table.candidates) {
        CHECK(c.ok);
        CHECK(c.n_parameters == (c.gate == moekit::GateKind::Constant ? 9 : 10));
    }
    if (moekit::gate_kind(result.best.model.gate) == moekit::GateKind::Constant)
        CHECK(result.best.model.gate_input_names.empty());
    else
        CHECK(result.best.model.gate_input_names == std::vector<std::string>{"x"});

    moekit::SelectionGrid empty;
    empty.n_experts.clear();
    CHECK_THROWS_AS(moekit::select_model(npreg(), options, empty, moekit::Criterion::Bic),
                    moekit::InvalidArgument);
    moekit::SelectionGrid tree;
    tree.gates = {moekit::GateKind::Tree};
    CHECK_THROWS_AS(moekit::select_model(npreg(true), options, tree, moekit::Criterion::Bic),
                    moekit::InvalidArgument);
}

#ifdef MOEKIT_CLI

namespace {

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
        lines.push_back(line);
    return lines;
}

std::vector<std::string> fields(const std::string& line) {
    std::vector<std::string> out;
    std::string field;
    std::istringstream in(line);
    while (std::getline(in, field, ','))
        out.push_back(field);
    if (!line.empty() && line.back() == ',') out.emplace_back();
    return out;
}

} // namespace

TEST_CASE("cli: select on NPreg prints the table, writes the CSV and saves the two-expert model",
          "[select][cli]") {
    moekit_test::TempDir dir;
    const auto result = moekit_test::run_cli(dir,
                                             {"select",
                                              data_dir + "/NPreg.csv",
                                              "-y",
                                              "yn",
                                              "-x",
                                              "x,x2",
                                              "--expert",
                                              "linear",
                                              "--experts",
                                              "1:4",
                                              "--restarts",
                                              "10",
                                              "--seed",
                                              "1",
                                              "--table",
                                              "table.csv",
                                              "-o",
                                              "best.json"});
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.rfind("criterion: BIC (lower is better); 4 of 4 candidates fitted", 0) == 0);
    CHECK(
        result.out.find(
            "selected: 2 linear-regression experts on x, x2 (full covariance), constant gate (BIC "
            "1332.748884)") != std::string::npos);
    // The selected row is marked and ranked first.
    bool marked = false;
    for (const auto& line : lines_of(result.out))
        if (line.rfind("  *1        2  full", 0) == 0) marked = true;
    CHECK(marked);

    const auto csv = lines_of(moekit_test::read_text(dir.file("table.csv")));
    REQUIRE(csv.size() == 5);
    CHECK(csv[0] ==
          "rank,n_experts,covariance,gate,ok,spurious,log_likelihood,n_parameters,aic,bic,icl,"
          "normalized_entropy,min_share,converged,restarts,reached_best,interventions,error");
    const auto best = fields(csv[1]);
    REQUIRE(best.size() == 18);
    CHECK(best[0] == "1");
    CHECK(best[1] == "2");
    CHECK(std::stod(best[6]) == Approx(npreg_log_likelihood).epsilon(1e-9));
    CHECK(std::stod(best[9]) == Approx(npreg_bic).epsilon(1e-9));

    const moekit::ModelFile file = moekit::load_model(dir.file("best.json"));
    CHECK(file.model.n_experts() == 2);
    REQUIRE(file.fit);
    CHECK(file.fit->log_likelihood == Approx(npreg_log_likelihood).epsilon(1e-9));
    REQUIRE(file.diagnostics);
    REQUIRE(file.diagnostics->selection);
    CHECK(file.diagnostics->selection->candidates.size() == 4);
    CHECK(file.diagnostics->selection->criterion == moekit::Criterion::Bic);
}

TEST_CASE("cli: select lists candidates that fail and still selects", "[select][cli]") {
    moekit_test::TempDir dir;
    moekit_test::write_text(dir.file("tiny.csv"), "a,b\n1,2\n3,4\n5,7\n");
    const auto result = moekit_test::run_cli(
        dir, {"select", "tiny.csv", "-y", "a,b", "-k", "1:5", "--restarts", "2"});
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.find("failed:\n") != std::string::npos);
    CHECK(result.out.find("  K=4 full constant: ") != std::string::npos);
    CHECK(result.out.find("  K=5 full constant: ") != std::string::npos);
    CHECK(result.out.find("selected: ") != std::string::npos);

    // When every candidate fails there is nothing to select: exit 1, the table still shown.
    const auto none =
        moekit_test::run_cli(dir, {"select", "tiny.csv", "-y", "a,b", "-k", "4:5", "-o", "m.json"});
    CHECK(none.exit_code == 1);
    CHECK(none.out.find("failed:") != std::string::npos);
    CHECK(none.err.find("moekit select: every candidate is failed or spurious") !=
          std::string::npos);
    CHECK_FALSE(moekit_test::fs::exists(dir.file("m.json")));
}

TEST_CASE("cli: select rejects bad ranges, tree gates and model files in --init", "[select][cli]") {
    moekit_test::TempDir dir;
    const std::string faithful = data_dir + "/faithful.csv";
    auto rejected = [&](std::vector<std::string> extra, const std::string& fragment) {
        std::vector<std::string> args{"select", faithful, "-y", "eruptions,waiting"};
        args.insert(args.end(), extra.begin(), extra.end());
        const auto result = moekit_test::run_cli(dir, args);
        INFO(fragment << "\n" << result.err);
        CHECK(result.exit_code == 1);
        CHECK(result.out.empty());
        CHECK(result.err.find(fragment) != std::string::npos);
    };
    rejected({"-k", "0:3"}, "--experts");
    rejected({"-k", "3:1"}, "lo <= hi");
    rejected({"-k", "1:3", "--gate", "tree"}, "'tree'");
    rejected({"-k", "1:3", "--covariance", "full,round"}, "round");
    rejected({"-k", "1:3", "--criterion", "dic"}, "--criterion");
    rejected({"-k", "1:3", "--init", "model.json"}, "--init");
    rejected({"-k", "1:3", "--min-share", "1.5"}, "min_share");
    rejected({"-k", "1:3", "--gate", "softmax"}, "--gate-inputs");
    rejected({"-k", "1:3", "--table", "no_such_dir/t.csv"}, "no_such_dir");
    const auto missing = moekit_test::run_cli(dir, {"select", faithful, "-y", "eruptions"});
    CHECK(missing.exit_code == 1);
}

TEST_CASE("cli: select and report appear in the root help, with examples on the bundled data",
          "[select][cli]") {
    moekit_test::TempDir dir;
    const auto root = moekit_test::run_cli(dir, {"--help"});
    CHECK(root.exit_code == 0);
    CHECK(root.out.find("\n  select ") != std::string::npos);
    CHECK(root.out.find("\n  report ") != std::string::npos);
    for (const std::string command : {"select", "report"}) {
        const auto help = moekit_test::run_cli(dir, {command, "--help"});
        CHECK(help.exit_code == 0);
        const auto lines = lines_of(help.out);
        REQUIRE_FALSE(lines.empty());
        CHECK(lines.back().rfind("  moekit " + command + " ", 0) == 0);
        CHECK(help.out.find("data/") != std::string::npos);
    }
}

#endif
