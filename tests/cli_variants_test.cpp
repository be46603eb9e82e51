// Command-line tests of the issue-5 variants (docs/cli.md: --method, --variant, --top-k and
// load balancing, --gate hash / --hash-column, --init upcycle): each is fitted on a bundled data
// set, its summary shows the variant's lines, its model file loads and `predict`, `score` (and
// for hash gates `simulate` and `report`) run on it; flag combinations the library or the CLI
// refuses exit 1 with one `moekit: error:` line. Truths: the model file's own keys, the
// documented summary lines, `score` against the summary (MSE, log-likelihood), and EM's
// optimum for the gradient method.

#include "support/cli_runner.hpp"

#include "moekit/model_io.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#ifdef MOEKIT_CLI

namespace {

using moekit_test::RunResult;
using moekit_test::TempDir;
using moekit_test::run_cli;

const std::string npreg = std::string(MOEKIT_DATA_DIR) + "/NPreg.csv";

/// `moekit fit NPreg.csv -y yn -x x --expert linear -k K --seed 1 -o model.json` + `extra`.
RunResult fit_npreg(const TempDir& dir, const std::vector<std::string>& extra, const std::string& k = "2") {
    std::vector<std::string> args{
        "fit", npreg, "-y", "yn", "-x", "x", "--expert", "linear", "-k", k, "--seed", "1", "-o", "model.json"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(dir, args);
}

nlohmann::json read_json(const TempDir& dir, const std::string& name) {
    return nlohmann::json::parse(moekit_test::read_text(dir.file(name)));
}

/// The value after "<key>: " on the line of `text` that starts with it.
std::string line_value(const std::string& text, const std::string& key) {
    const std::string prefix = key + ": ";
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
        if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
    FAIL("no line '" << prefix << "' in:\n" << text);
    return {};
}

bool has_line_starting(const std::string& text, const std::string& start) {
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
        if (line.rfind(start, 0) == 0) return true;
    return false;
}

/// The model file loads with the library's validating reader, and `predict` and `score` run on
/// the data it was fitted on; returns score's output.
std::string check_applies(const TempDir& dir, const std::string& data = npreg) {
    CHECK_NOTHROW(moekit::load_model(dir.file("model.json")));
    const RunResult predicted = run_cli(dir, {"predict", "model.json", data, "-o", "pred.csv"});
    INFO(predicted.err);
    CHECK(predicted.exit_code == 0);
    CHECK(predicted.err.empty());
    const RunResult scored = run_cli(dir, {"score", "model.json", data});
    INFO(scored.err);
    CHECK(scored.exit_code == 0);
    CHECK(scored.out.find("log_likelihood: ") == 0);
    return scored.out;
}

/// Rows of a CSV file (header included), split at commas.
std::vector<std::vector<std::string>> read_csv_cells(const std::string& path) {
    std::vector<std::vector<std::string>> rows;
    std::istringstream lines(moekit_test::read_text(path));
    for (std::string line; std::getline(lines, line);) {
        std::vector<std::string> cells;
        std::istringstream fields(line);
        for (std::string cell; std::getline(fields, cell, ',');) cells.push_back(cell);
        rows.push_back(std::move(cells));
    }
    return rows;
}

/// The gate_1..gate_K columns of a predictions file, one vector per row.
std::vector<std::vector<double>> gate_columns(const std::string& path) {
    const auto rows = read_csv_cells(path);
    REQUIRE(!rows.empty());
    std::vector<std::size_t> at;
    for (std::size_t j = 0; j < rows[0].size(); ++j)
        if (rows[0][j].rfind("gate_", 0) == 0) at.push_back(j);
    std::vector<std::vector<double>> out;
    for (std::size_t i = 1; i < rows.size(); ++i) {
        std::vector<double> g;
        // strtod, not stod: stod throws on subnormal values.
        for (std::size_t j : at) g.push_back(std::strtod(rows[i][j].c_str(), nullptr));
        out.push_back(std::move(g));
    }
    return out;
}

/// Entries a sparse gate routes away from: exactly 0 (not exp(-745), the smallest value
/// Eigen's vectorised exp gives for −∞).
bool routed_away(double g) {
    return g == 0.0;
}

} // namespace

TEST_CASE("cli variants: --method gradient reaches EM's optimum, predicts and scores",
          "[cli][variants]") {
    TempDir dir;
    const RunResult em = fit_npreg(dir, {"--method", "em"});
    REQUIRE(em.exit_code == 0);
    CHECK(line_value(em.out, "method") == "em");
    const double em_log_likelihood = std::stod(line_value(em.out, "log-likelihood"));

    const RunResult fitted = fit_npreg(dir, {"--method", "gradient"});
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(line_value(fitted.out, "method") == "gradient");
    CHECK(line_value(fitted.out, "variant") == "standard");
    CHECK(has_line_starting(fitted.out, "MSE: "));
    CHECK_FALSE(has_line_starting(fitted.out, "hard/soft disagreement"));
    CHECK_FALSE(has_line_starting(fitted.out, "top-k routing"));
    const double log_likelihood = std::stod(line_value(fitted.out, "log-likelihood"));
    CHECK(log_likelihood == Approx(em_log_likelihood).epsilon(1e-6));

    const auto model = read_json(dir, "model.json");
    CHECK(model.at("top_k") == 0);
    CHECK(model.at("fit").at("options").at("method") == "gradient");
    const std::string scored = check_applies(dir);
    CHECK(std::stod(line_value(scored, "log_likelihood")) == Approx(log_likelihood).margin(1e-6));

    // Auto is recorded as the method it resolved to.
    REQUIRE(fit_npreg(dir, {}).exit_code == 0);
    CHECK(read_json(dir, "model.json").at("fit").at("options").at("method") == "em");
}

TEST_CASE("cli variants: --variant meta-pi reports its MSE, predicts and scores",
          "[cli][variants]") {
    TempDir dir;
    const RunResult fitted = fit_npreg(dir, {"--variant", "meta-pi", "--gate", "softmax"});
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(line_value(fitted.out, "method") == "gradient");
    CHECK(line_value(fitted.out, "variant") == "meta-pi");
    const double mse = std::stod(line_value(fitted.out, "MSE"));
    CHECK(std::isfinite(mse));
    CHECK(mse > 0.0);

    const auto model = read_json(dir, "model.json");
    CHECK(model.at("fit").at("options").at("variant") == "meta-pi");
    CHECK(model.at("fit").at("options").at("method") == "gradient");
    // The summary's training MSE is score's mse on the same rows (unit weights).
    const std::string scored = check_applies(dir);
    CHECK(std::stod(line_value(scored, "mse")) == Approx(mse).epsilon(1e-5));
}

TEST_CASE("cli variants: --variant hard reports the hard/soft disagreement and routes top-1",
          "[cli][variants]") {
    TempDir dir;
    const RunResult fitted = fit_npreg(dir, {"--variant", "hard", "--gate", "softmax"});
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(line_value(fitted.out, "model").find("top-1 routing") != std::string::npos);
    CHECK(line_value(fitted.out, "method") == "em");
    CHECK(line_value(fitted.out, "variant") == "hard");
    const std::string disagreement = line_value(fitted.out, "hard/soft disagreement");
    const double share = std::stod(disagreement);
    CHECK(share >= 0.0);
    CHECK(share <= 100.0);
    CHECK(disagreement.find('%') != std::string::npos);

    const auto model = read_json(dir, "model.json");
    CHECK(model.at("top_k") == 1);
    CHECK(model.at("fit").at("options").at("variant") == "hard");
    check_applies(dir);
    // Prediction comes from the top-1 expert alone: one gate probability 1 per row.
    for (const auto& g : gate_columns(dir.file("pred.csv"))) {
        REQUIRE(g.size() == 2);
        CHECK(std::count(g.begin(), g.end(), 1.0) == 1);
        CHECK(std::count_if(g.begin(), g.end(), routed_away) == 1);
    }
}

TEST_CASE("cli variants: --top-k with load balancing and a capacity limit", "[cli][variants]") {
    TempDir dir;
    const RunResult fitted = fit_npreg(
        dir,
        {"--gate", "softmax", "--top-k", "2", "--balance-weight", "0.01", "--capacity-factor", "1.5"},
        "3");
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(line_value(fitted.out, "model").find("top-2 routing") != std::string::npos);
    CHECK(line_value(fitted.out, "method") == "gradient");
    CHECK(line_value(fitted.out, "top-k routing") ==
          "k = 2, switch balance loss weight 0.01, capacity factor 1.5");
    const std::string losses = line_value(fitted.out, "balance losses");
    CHECK(losses.rfind("switch ", 0) == 0);
    CHECK(losses.find(", importance CV^2 ") != std::string::npos);
    CHECK(losses.find(", load CV^2 ") != std::string::npos);
    CHECK(line_value(fitted.out, "dropped").find(" routings (") != std::string::npos);
    // Every expert line shows its load; the loads are shares of the samples.
    double total_load = 0.0;
    for (int k = 1; k <= 3; ++k) {
        const std::string line = line_value(fitted.out, "expert " + std::to_string(k));
        const auto at = line.find(", load ");
        REQUIRE(at != std::string::npos);
        total_load += std::stod(line.substr(at + 7));
    }
    CHECK(total_load > 0.0);
    CHECK(total_load <= 2.0 + 1e-5); // k = 2 routings per sample at most

    const auto model = read_json(dir, "model.json");
    CHECK(model.at("top_k") == 2);
    const auto& options = model.at("fit").at("options");
    CHECK(options.at("top_k") == 2);
    CHECK(options.at("balance_loss") == "switch");
    CHECK(options.at("balance_weight") == 0.01);
    CHECK(options.at("capacity_factor") == 1.5);
    CHECK(options.at("method") == "gradient");
    check_applies(dir);
    // At most two experts per row get gate probability.
    for (const auto& g : gate_columns(dir.file("pred.csv"))) {
        REQUIRE(g.size() == 3);
        CHECK(std::count_if(g.begin(), g.end(), routed_away) >= 1);
    }

    // The importance loss is spelled as documented.
    const RunResult importance = fit_npreg(
        dir, {"--gate", "softmax", "--top-k", "1", "--balance-loss", "importance", "--balance-weight", "0.1"});
    INFO(importance.err);
    REQUIRE(importance.exit_code == 0);
    CHECK(line_value(importance.out, "top-k routing") ==
          "k = 1, importance balance loss weight 0.1, capacity factor none");
    CHECK(read_json(dir, "model.json").at("fit").at("options").at("balance_loss") == "importance");
}

TEST_CASE("cli variants: fit --json reports the MSE, hard disagreement and sparse report",
          "[cli][variants]") {
    TempDir dir;
    {
        const RunResult fitted = fit_npreg(
            dir, {"--gate", "softmax", "--top-k", "1", "--capacity-factor", "1.5", "--json"}, "3");
        INFO(fitted.err);
        REQUIRE(fitted.exit_code == 0);
        const auto fit = nlohmann::json::parse(fitted.out).at("fit");
        CHECK(fit.at("mse").is_number());
        CHECK(fit.at("mse").get<double>() > 0.0);
        CHECK(fit.at("hard_disagreement").is_null());
        const auto& sparse = fit.at("sparse");
        REQUIRE(sparse.is_object());
        for (const char* key : {"balance_loss", "switch_loss", "importance_cv2", "load_cv2"})
            CHECK(sparse.at(key).is_number());
        REQUIRE(sparse.at("load").size() == 3);
        double total = 0.0;
        for (const auto& share : sparse.at("load")) total += share.get<double>();
        CHECK(total > 0.0);
        CHECK(total <= 1.0 + 1e-12); // top-1: each sample routed once at most
        CHECK(sparse.at("dropped").is_number_integer());
        CHECK(sparse.at("dropped_samples").is_number_integer());
        // The model file carries the same record.
        CHECK(read_json(dir, "model.json").at("fit") == fit);
    }
    {
        const RunResult fitted = fit_npreg(dir, {"--variant", "hard", "--gate", "softmax", "--json"});
        INFO(fitted.err);
        REQUIRE(fitted.exit_code == 0);
        const auto fit = nlohmann::json::parse(fitted.out).at("fit");
        CHECK(fit.at("mse").is_number());
        REQUIRE(fit.at("hard_disagreement").is_number());
        CHECK(fit.at("hard_disagreement").get<double>() >= 0.0);
        CHECK(fit.at("hard_disagreement").get<double>() <= 1.0);
        CHECK(fit.at("sparse").is_null());
    }
}

TEST_CASE("cli variants: --gate-noise trains noisy top-k gating from the seeded stream",
          "[cli][variants]") {
    TempDir dir;
    const std::vector<std::string> args{
        "--gate", "softmax", "--top-k", "1", "--gate-noise", "--balance-weight", "0.01", "--max-iter", "40"};
    const RunResult fitted = fit_npreg(dir, args, "3");
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(line_value(fitted.out, "top-k routing") ==
          "k = 1, switch balance loss weight 0.01, capacity factor none, noisy gating");
    const auto options = read_json(dir, "model.json").at("fit").at("options");
    CHECK(options.at("gate_noise") == true);
    check_applies(dir);
    // The noise is drawn from the seeded stream: the same seed gives the same model.
    const std::string first = moekit_test::read_text(dir.file("model.json"));
    REQUIRE(fit_npreg(dir, args, "3").exit_code == 0);
    CHECK(moekit_test::read_text(dir.file("model.json")) == first);
}

TEST_CASE("cli variants: --balance-loss load balances the smooth load of noisy gating",
          "[cli][variants]") {
    TempDir dir;
    const RunResult fitted = fit_npreg(dir,
                                       {"--gate", "softmax", "--top-k", "1", "--gate-noise", "--balance-loss",
                                        "load", "--balance-weight", "0.01", "--max-iter", "40"},
                                       "3");
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(line_value(fitted.out, "top-k routing") ==
          "k = 1, load balance loss weight 0.01, capacity factor none, noisy gating");
    CHECK(read_json(dir, "model.json").at("fit").at("options").at("balance_loss") == "load");
    check_applies(dir);
}

TEST_CASE("cli variants: --hash-column routes by a key column that predict, score, simulate and "
          "report read",
          "[cli][variants]") {
    TempDir dir;
    const RunResult fitted = fit_npreg(dir, {"--hash-column", "class"});
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(line_value(fitted.out, "model") ==
          "2 linear-regression experts on x (full covariance), hash gate on class");
    CHECK(line_value(fitted.out, "method") == "em");

    const auto model = read_json(dir, "model.json");
    CHECK(model.at("gate") == "hash");
    CHECK(model.at("n_gate_inputs") == 0);
    CHECK(model.at("gate_parameters") ==
          nlohmann::json({{"column", "class"}, {"n_experts", 2}, {"hash", "moekit-key-v1"}}));
    CHECK(model.at("fit").at("options").at("gate") == "hash");
    check_applies(dir);
    // Each sample goes to exactly one expert.
    for (const auto& g : gate_columns(dir.file("pred.csv"))) {
        REQUIRE(g.size() == 2);
        CHECK(std::count(g.begin(), g.end(), 1.0) == 1);
    }

    // --gate hash --hash-column is the same fit.
    const std::string first = moekit_test::read_text(dir.file("model.json"));
    REQUIRE(fit_npreg(dir, {"--gate", "hash", "--hash-column", "class"}).exit_code == 0);
    CHECK(moekit_test::read_text(dir.file("model.json")) == first);

    // The key column is needed to apply the model.
    moekit_test::write_text(dir.file("no_key.csv"), "x,yn\n1.5,3.0\n2.5,4.0\n");
    const RunResult missing = run_cli(dir, {"predict", "model.json", "no_key.csv"});
    CHECK(missing.exit_code == 1);
    CHECK(missing.err.find("column 'class'") != std::string::npos);

    // simulate draws one sample per row of the inputs, routed by their keys; report renders.
    const RunResult simulated =
        run_cli(dir, {"simulate", "model.json", "--inputs", npreg, "--seed", "7", "-o", "sim.csv"});
    INFO(simulated.err);
    CHECK(simulated.exit_code == 0);
    CHECK(read_csv_cells(dir.file("sim.csv")).size() == 201);
    const RunResult reported = run_cli(dir, {"report", "model.json", npreg, "-o", "report.html"});
    INFO(reported.err);
    CHECK(reported.exit_code == 0);
    CHECK(moekit_test::read_text(dir.file("report.html")).find("hash gate on class") !=
          std::string::npos);
}

TEST_CASE("cli variants: a hash model of Gaussian experts predicts from the key alone",
          "[cli][variants]") {
    TempDir dir;
    const RunResult fitted = run_cli(
        dir, {"fit", npreg, "-y", "yn", "--hash-column", "class", "-k", "2", "-o", "model.json"});
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    check_applies(dir);
    // Keys are text: integers by value ("02" is 2), other text by its characters.
    moekit_test::write_text(dir.file("keys.csv"), "class\n1\n2\n02\n\"1\"\n");
    const RunResult predicted = run_cli(dir, {"predict", "model.json", "keys.csv", "-o", "p.csv"});
    INFO(predicted.err);
    REQUIRE(predicted.exit_code == 0);
    const auto rows = read_csv_cells(dir.file("p.csv"));
    REQUIRE(rows.size() == 5);
    CHECK(rows[0] == std::vector<std::string>{"row", "pred_yn", "gate_1", "gate_2", "expert"});
    CHECK(rows[2][1] == rows[3][1]); // "2" and "02"
    CHECK(rows[1][1] == rows[4][1]); // 1 and "1" (quotes are not part of the text)
    // Simulation without --inputs is refused: the key decides the expert.
    const RunResult simulated = run_cli(dir, {"simulate", "model.json", "-n", "5", "--seed", "1"});
    CHECK(simulated.exit_code == 1);
    CHECK(simulated.err.find("class") != std::string::npos);
}

TEST_CASE("cli variants: --init upcycle starts from copies of one expert", "[cli][variants]") {
    TempDir dir;
    const RunResult fitted =
        fit_npreg(dir, {"--init", "upcycle", "--upcycle-noise", "0.2", "--gate", "softmax"});
    INFO(fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(has_line_starting(fitted.out, "iterations: "));
    const auto options = read_json(dir, "model.json").at("fit").at("options");
    CHECK(options.at("init") == "upcycle");
    CHECK(options.at("upcycle_noise") == 0.2);
    check_applies(dir);
    // The same seed gives the same model.
    const std::string first = moekit_test::read_text(dir.file("model.json"));
    REQUIRE(fit_npreg(dir, {"--init", "upcycle", "--upcycle-noise", "0.2", "--gate", "softmax"})
                .exit_code == 0);
    CHECK(moekit_test::read_text(dir.file("model.json")) == first);
}

TEST_CASE("cli variants: inconsistent flags exit 1 with a one-line message", "[cli][variants]") {
    TempDir dir;
    struct Case {
        std::vector<std::string> args;
        std::string message; ///< a fragment of the one error line
    };
    const std::vector<Case> cases = {
        {{"--top-k", "1"}, "sparse top-k gating needs a softmax gate"},
        {{"--gate", "softmax", "--top-k", "3"}, "must be between 0 (dense) and the number of experts (2)"},
        {{"--gate", "softmax", "--top-k", "-1"}, "top_k (--top-k) is -1"},
        {{"--gate", "softmax", "--top-k", "1", "--method", "em"}, "trained by gradient ascent"},
        {{"--balance-weight", "0.1"}, "--balance-weight"},
        {{"--capacity-factor", "2"}, "--capacity-factor"},
        {{"--balance-loss", "importance"}, "--balance-loss is 'importance', but load balancing"},
        {{"--gate", "softmax", "--top-k", "1", "--balance-weight", "-1"}, "--balance-weight"},
        {{"--variant", "meta-pi", "--method", "em"}, "meta-pi is trained by gradient descent"},
        {{"--variant", "hard", "--gate", "softmax", "--method", "gradient"}, "classification EM"},
        {{"--variant", "hard"}, "needs a softmax or tree gate"},
        {{"--gate", "softmax", "--variant", "hard", "--top-k", "1"}, "--top-k"},
        {{"--gate", "hash"}, "--hash-column is missing"},
        {{"--hash-column", "class", "--gate", "softmax"}, "is only used with --gate hash"},
        {{"--hash-column", "class", "--gate-inputs", "x"}, "a hash gate uses no gate inputs"},
        {{"--hash-column", "yn"}, "cannot also be the routing key"},
        {{"--hash-column", "nowhere"}, "column 'nowhere'"},
        {{"--hash-column", "class", "--variant", "hard"}, "needs a softmax or tree gate"},
        {{"--hash-column", "class", "--tree", "2"}, "--tree"},
        {{"--upcycle-noise", "0.5"}, "is only used with --init upcycle"},
        {{"--gate-noise"}, "noisy gating is part of sparse top-k gating"},
        {{"--gate", "softmax", "--top-k", "1", "--balance-loss", "load", "--balance-weight", "0.1"},
         "the smooth load loss is defined through the gate noise"},
        {{"--init", "upcycle", "--upcycle-noise", "-1"}, "--upcycle-noise"},
    };
    for (const Case& c : cases) {
        std::string shown;
        for (const auto& a : c.args) shown += " " + a;
        INFO("fit ..." << shown);
        const RunResult result = fit_npreg(dir, c.args);
        INFO(result.err);
        CHECK(result.exit_code == 1);
        CHECK(result.out.empty());
        CHECK(result.err.rfind("moekit: error: ", 0) == 0);
        CHECK(std::count(result.err.begin(), result.err.end(), '\n') == 1);
        CHECK(result.err.find(c.message) != std::string::npos);
        CHECK_FALSE(moekit_test::fs::exists(dir.file("model.json")));
    }
    // Unknown words are CLI11 usage errors naming the accepted words.
    for (const auto& [flag, word, accepted] :
         {std::tuple{"--method", "newton", "auto, em, gradient"},
          std::tuple{"--variant", "soft", "standard, meta-pi, hard"},
          std::tuple{"--balance-loss", "l2", "switch, importance, load"},
          std::tuple{"--gate", "hashed", "constant, softmax, tree, hash"}}) {
        INFO(flag << ' ' << word);
        const RunResult result = fit_npreg(dir, {flag, word});
        CHECK(result.exit_code == 1);
        CHECK(result.err.find(accepted) != std::string::npos);
    }
    // select compares constant and softmax gates only.
    const RunResult select =
        run_cli(dir, {"select", npreg, "-y", "yn", "-k", "1:2", "--gate", "constant,hash"});
    CHECK(select.exit_code == 1);
    CHECK(select.err.find("'hash'") != std::string::npos);
}

#endif // MOEKIT_CLI
