// End-to-end tests of the `moekit` command-line tool: each test runs the built binary
// (MOEKIT_CLI) in a fresh temporary directory with std::system, capturing standard output,
// standard error and the exit code through files. Truths: the peer reference fit of
// tests/reference/faithful_K2_full.json (log-likelihood -1130.26396), invariants that hold for
// any correct output (responsibility rows sum to 1, the per-row log-likelihoods sum to the
// total), and, for every bad input, the exit code, the message naming the file / line /
// column / offending text, and an output file that must survive untouched.

#include "support/cli_runner.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#ifdef MOEKIT_CLI

namespace {

namespace fs = std::filesystem;

const std::string data_dir = MOEKIT_DATA_DIR;
const std::string faithful = data_dir + "/faithful.csv";
const std::string npreg = data_dir + "/NPreg.csv";
const std::string sentinel = "pre-existing content\n";

using moekit_test::read_text;
using moekit_test::RunResult;
using moekit_test::shell_quote;
using moekit_test::TempDir;
using moekit_test::write_text;

/// Runs `moekit args...` in `dir` (tests/support/cli_runner.hpp).
RunResult
run(const TempDir& dir, const std::vector<std::string>& args, const std::string& stdin_pipe = {}) {
    return moekit_test::run_cli(dir, args, stdin_pipe);
}

std::vector<std::string> split(const std::string& text, char separator) {
    std::vector<std::string> parts;
    std::string part;
    std::istringstream in(text);
    while (std::getline(in, part, separator))
        parts.push_back(part);
    if (!text.empty() && text.back() == separator) parts.emplace_back();
    return parts;
}

/// A CSV file as header + rows of numbers.
struct Csv {
    std::vector<std::string> header;
    std::vector<std::vector<double>> rows;
};

Csv read_csv_file(const std::string& path) {
    std::istringstream in(read_text(path));
    Csv csv;
    std::string line;
    std::getline(in, line);
    csv.header = split(line, ',');
    while (std::getline(in, line)) {
        std::vector<double> row;
        for (const auto& cell : split(line, ','))
            row.push_back(std::strtod(cell.c_str(), nullptr)); // stod throws on subnormals
        csv.rows.push_back(std::move(row));
    }
    return csv;
}

/// The value after "<key>: " on its own line of `text`.
double value_after(const std::string& text, const std::string& key) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key + ": ", 0) == 0) return std::stod(line.substr(key.size() + 2));
    FAIL("no line '" << key << ": ' in:\n" << text);
    return 0.0;
}

/// Fits the two-expert Gaussian mixture of the reference case into `dir`/model.json.
RunResult fit_faithful(const TempDir& dir, const std::string& output = "model.json") {
    return run(dir,
               {"fit",
                faithful,
                "-y",
                "eruptions,waiting",
                "-k",
                "2",
                "--restarts",
                "5",
                "--seed",
                "1",
                "-o",
                output});
}

/// The common checks of a rejected input: exit code 1, one "moekit: error: " line on stderr
/// containing every fragment, nothing on stdout, and the guarded output file untouched.
void require_rejected(const RunResult& result,
                      std::initializer_list<std::string> fragments,
                      const std::string& guarded) {
    INFO("stderr: " << result.err);
    CHECK(result.exit_code == 1);
    CHECK(result.out.empty());
    CHECK(result.err.rfind("moekit: error: ", 0) == 0);
    CHECK(std::count(result.err.begin(), result.err.end(), '\n') == 1);
    for (const auto& fragment : fragments)
        CHECK(result.err.find(fragment) != std::string::npos);
    CHECK(read_text(guarded) == sentinel);
}

/// Writes `content` as bad.csv and a sentinel model.json, runs `fit bad.csv -y eruptions,waiting
/// -k 2 -o model.json` and checks the rejection.
void require_fit_rejects(const std::string& content, std::initializer_list<std::string> fragments) {
    TempDir dir;
    write_text(dir.file("bad.csv"), content);
    write_text(dir.file("model.json"), sentinel);
    const RunResult result =
        run(dir, {"fit", "bad.csv", "-y", "eruptions,waiting", "-k", "2", "-o", "model.json"});
    require_rejected(result, fragments, dir.file("model.json"));
}

} // namespace

TEST_CASE("cli: --version prints the version and exits 0", "[cli]") {
    TempDir dir;
    const RunResult result = run(dir, {"--version"});
    CHECK(result.exit_code == 0);
    CHECK(result.out.rfind("moekit ", 0) == 0);
    CHECK(result.out.find_first_of("0123456789") != std::string::npos);
    CHECK(result.err.empty());
}

TEST_CASE("cli: --help of every subcommand ends with an example on the bundled data", "[cli]") {
    TempDir dir;
    for (const std::string command : {"fit", "predict", "score", "simulate", "select", "report"}) {
        INFO("subcommand " << command);
        const RunResult result = run(dir, {command, "--help"});
        CHECK(result.exit_code == 0);
        CHECK(result.out.find("Usage:") != std::string::npos);
        // The help ends with an "Example:" block of moekit invocations, the last one of this
        // subcommand, on a data file that exists in the repository.
        std::vector<std::string> lines = split(result.out, '\n');
        while (!lines.empty() && lines.back().empty())
            lines.pop_back();
        const auto example = std::find(lines.begin(), lines.end(), "Example:");
        REQUIRE(example != lines.end());
        REQUIRE(example + 1 != lines.end());
        CHECK(lines.back().rfind("  moekit " + command + " ", 0) == 0);
        bool names_bundled_data = false;
        for (auto line = example + 1; line != lines.end(); ++line) {
            CHECK(line->rfind("  moekit ", 0) == 0);
            const auto data_pos = line->find("data/");
            if (data_pos == std::string::npos) continue;
            const std::string file = line->substr(data_pos, line->find(' ', data_pos) - data_pos);
            CHECK(fs::exists(fs::path(MOEKIT_SOURCE_DIR) / file));
            names_bundled_data = true;
        }
        CHECK(names_bundled_data);
    }
}

TEST_CASE("cli: the root help lists the six subcommands", "[cli]") {
    TempDir dir;
    const RunResult result = run(dir, {"--help"});
    CHECK(result.exit_code == 0);
    for (const std::string command : {"fit", "predict", "score", "simulate", "select", "report"})
        CHECK(result.out.find("\n  " + command + " ") != std::string::npos);
}

TEST_CASE("cli: no subcommand or an unknown one is a usage error", "[cli]") {
    TempDir dir;
    CHECK(run(dir, {}).exit_code == 1);
    const RunResult unknown = run(dir, {"select", faithful});
    CHECK(unknown.exit_code == 1);
    CHECK_FALSE(unknown.err.empty());
}

TEST_CASE("cli: fit on faithful reproduces the reference log-likelihood", "[cli]") {
    TempDir dir;
    const RunResult result = fit_faithful(dir);
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.find("log-likelihood") != std::string::npos);
    CHECK(result.out.find("272 samples") != std::string::npos);
    CHECK(result.out.find("expert 1:") != std::string::npos);
    CHECK(result.out.find("expert 2:") != std::string::npos);
    CHECK(result.out.find("converged: yes") != std::string::npos);
    CHECK(value_after(result.out, "n_parameters") == 11);
    CHECK(value_after(result.out, "log-likelihood") == Approx(-1130.26396).margin(1e-5));

    REQUIRE(fs::exists(dir.file("model.json")));
    const auto model = nlohmann::json::parse(read_text(dir.file("model.json")));
    CHECK(model.at("fit").at("log_likelihood").get<double>() == Approx(-1130.26396).margin(1e-5));
}

TEST_CASE("cli: fit writes responsibilities that sum to 1 and add up to the log-likelihood",
          "[cli]") {
    TempDir dir;
    const RunResult result = run(dir,
                                 {"fit",
                                  faithful,
                                  "-y",
                                  "eruptions,waiting",
                                  "-k",
                                  "2",
                                  "--seed",
                                  "1",
                                  "--restarts",
                                  "5",
                                  "-q",
                                  "--responsibilities",
                                  "resp.csv"});
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.empty()); // --quiet
    const Csv resp = read_csv_file(dir.file("resp.csv"));
    CHECK(resp.header == std::vector<std::string>{
                             "row", "resp_1", "resp_2", "gate_1", "gate_2", "expert", "log_lik"});
    REQUIRE(resp.rows.size() == 272);
    double total = 0.0;
    for (std::size_t i = 0; i < resp.rows.size(); ++i) {
        const auto& row = resp.rows[i];
        CHECK(row[0] == static_cast<double>(i + 2)); // CSV line numbers: the header is line 1
        CHECK(row[1] + row[2] == Approx(1.0).margin(1e-12));
        CHECK(row[3] + row[4] == Approx(1.0).margin(1e-12));
        CHECK(row[5] == (row[1] >= row[2] ? 1.0 : 2.0));
        total += row[6];
    }
    CHECK(total == Approx(-1130.26396).margin(1e-5));
}

TEST_CASE("cli: the same seed gives byte-identical model files", "[cli]") {
    TempDir dir;
    REQUIRE(fit_faithful(dir, "first.json").exit_code == 0);
    REQUIRE(fit_faithful(dir, "second.json").exit_code == 0);
    const std::string first = read_text(dir.file("first.json"));
    CHECK_FALSE(first.empty());
    CHECK(first == read_text(dir.file("second.json")));
}

TEST_CASE("cli: fit reads standard input when the data file is '-'", "[cli]") {
    TempDir dir;
    const RunResult result = run(dir,
                                 {"fit",
                                  "-",
                                  "-y",
                                  "eruptions,waiting",
                                  "-k",
                                  "2",
                                  "--restarts",
                                  "5",
                                  "--seed",
                                  "1",
                                  "-o",
                                  "model.json"},
                                 "cat " + shell_quote(faithful));
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.find("<stdin>") != std::string::npos);
    const auto model = nlohmann::json::parse(read_text(dir.file("model.json")));
    CHECK(model.at("fit").at("log_likelihood").get<double>() == Approx(-1130.26396).margin(1e-5));
}

TEST_CASE("cli: predict writes one row per data row with the documented columns", "[cli]") {
    TempDir dir;
    REQUIRE(fit_faithful(dir).exit_code == 0);
    const RunResult result = run(dir, {"predict", "model.json", faithful, "-o", "pred.csv"});
    REQUIRE(result.exit_code == 0);
    const Csv pred = read_csv_file(dir.file("pred.csv"));
    CHECK(pred.header == std::vector<std::string>{"row",
                                                  "pred_eruptions",
                                                  "pred_waiting",
                                                  "gate_1",
                                                  "gate_2",
                                                  "expert",
                                                  "resp_1",
                                                  "resp_2",
                                                  "log_lik"});
    REQUIRE(pred.rows.size() == 272);
    double total = 0.0;
    for (const auto& row : pred.rows) {
        CHECK(row[3] + row[4] == Approx(1.0).margin(1e-12));
        CHECK(row[6] + row[7] == Approx(1.0).margin(1e-12));
        total += row[8];
    }
    CHECK(total == Approx(-1130.26396).margin(1e-5));

    // Without --output the CSV goes to standard output, identical to the file.
    const RunResult to_stdout = run(dir, {"predict", "model.json", faithful});
    REQUIRE(to_stdout.exit_code == 0);
    CHECK(to_stdout.out == read_text(dir.file("pred.csv")));
}

TEST_CASE("cli: score prints the fit's log-likelihood", "[cli]") {
    TempDir dir;
    REQUIRE(fit_faithful(dir).exit_code == 0);
    const auto model = nlohmann::json::parse(read_text(dir.file("model.json")));
    const double fitted = model.at("fit").at("log_likelihood").get<double>();

    const RunResult result = run(dir, {"score", "model.json", faithful});
    REQUIRE(result.exit_code == 0);
    const double total = value_after(result.out, "log_likelihood");
    CHECK(total == Approx(fitted).epsilon(1e-12));
    CHECK(value_after(result.out, "mean_log_likelihood") == Approx(total / 272).epsilon(1e-12));
    CHECK(value_after(result.out, "n_samples") == 272);
}

TEST_CASE("cli: simulate -n draws that many rows", "[cli]") {
    TempDir dir;
    REQUIRE(fit_faithful(dir).exit_code == 0);
    const RunResult result =
        run(dir, {"simulate", "model.json", "-n", "100", "--seed", "3", "-o", "sim.csv"});
    REQUIRE(result.exit_code == 0);
    const Csv sim = read_csv_file(dir.file("sim.csv"));
    CHECK(sim.header == std::vector<std::string>{"eruptions", "waiting", "expert"});
    REQUIRE(sim.rows.size() == 100);
    for (const auto& row : sim.rows)
        CHECK((row[2] == 1.0 || row[2] == 2.0));

    // Same seed, same draws.
    REQUIRE(run(dir, {"simulate", "model.json", "-n", "100", "--seed", "3", "-o", "again.csv"})
                .exit_code == 0);
    CHECK(read_text(dir.file("again.csv")) == read_text(dir.file("sim.csv")));
}

TEST_CASE("cli: a softmax-gated mixture of regressions: fit, predict without targets, simulate",
          "[cli]") {
    TempDir dir;
    const RunResult fit = run(dir,
                              {"fit",
                               npreg,
                               "-y",
                               "yn",
                               "-x",
                               "x",
                               "--expert",
                               "linear",
                               "--gate",
                               "softmax",
                               "-k",
                               "2",
                               "--seed",
                               "1",
                               "--restarts",
                               "3",
                               "-o",
                               "moe.json"});
    REQUIRE(fit.exit_code == 0);
    CHECK(fit.out.find("softmax gate on x") != std::string::npos);
    CHECK(fit.out.find("softmax gate coefficients") != std::string::npos);
    CHECK(fit.out.find("sigma") != std::string::npos);

    // Inputs only: no responsibilities.
    write_text(dir.file("x.csv"), "x\n1\n2.5\n4\n");
    const RunResult predict = run(dir, {"predict", "moe.json", "x.csv", "-o", "pred.csv"});
    REQUIRE(predict.exit_code == 0);
    const Csv pred = read_csv_file(dir.file("pred.csv"));
    CHECK(pred.header == std::vector<std::string>{"row", "pred_yn", "gate_1", "gate_2", "expert"});
    CHECK(pred.rows.size() == 3);

    // A model with inputs draws one sample per row of --inputs; -n is not accepted with it.
    const RunResult sim =
        run(dir, {"simulate", "moe.json", "--inputs", npreg, "--seed", "5", "-o", "sim.csv"});
    REQUIRE(sim.exit_code == 0);
    const Csv simulated = read_csv_file(dir.file("sim.csv"));
    CHECK(simulated.header == std::vector<std::string>{"x", "yn", "expert"});
    CHECK(simulated.rows.size() == 200);
    CHECK(run(dir, {"simulate", "moe.json", "--seed", "5"}).exit_code == 1);
    CHECK(run(dir, {"simulate", "moe.json", "--inputs", npreg, "-n", "10", "--seed", "5"})
              .exit_code == 1);
}

TEST_CASE("cli: --init MODEL.json warm-starts from a model file", "[cli]") {
    TempDir dir;
    REQUIRE(fit_faithful(dir).exit_code == 0);
    const RunResult warm = run(dir,
                               {"fit",
                                faithful,
                                "-y",
                                "eruptions,waiting",
                                "-k",
                                "2",
                                "--init",
                                "model.json",
                                "-o",
                                "warm.json"});
    REQUIRE(warm.exit_code == 0);
    CHECK(value_after(warm.out, "log-likelihood") == Approx(-1130.26396).margin(1e-5));

    write_text(dir.file("out.json"), sentinel);
    const RunResult mismatch = run(dir,
                                   {"fit",
                                    faithful,
                                    "-y",
                                    "eruptions,waiting",
                                    "-k",
                                    "3",
                                    "--init",
                                    "model.json",
                                    "-o",
                                    "out.json"});
    require_rejected(mismatch, {"model.json", "--experts"}, dir.file("out.json"));
}

TEST_CASE("cli: --missing drop reports how many rows it dropped", "[cli]") {
    TempDir dir;
    std::string text = read_text(faithful);
    // Blank out two cells: line 3 gets NA, line 5 an empty cell.
    std::vector<std::string> lines = split(text, '\n');
    lines[2] = "NA,54";
    lines[4] = "1.5,";
    std::string edited;
    for (const auto& line : lines)
        edited += line + "\n";
    write_text(dir.file("holes.csv"), edited);

    const RunResult result = run(dir,
                                 {"fit",
                                  "holes.csv",
                                  "-y",
                                  "eruptions,waiting",
                                  "-k",
                                  "2",
                                  "--missing",
                                  "drop",
                                  "-o",
                                  "model.json"});
    REQUIRE(result.exit_code == 0);
    CHECK(result.err.find("dropped 2 rows with missing values") != std::string::npos);
    CHECK(result.out.find("270 samples") != std::string::npos);
}

// ----- bad input: one test per case -----------------------------------------------------------

TEST_CASE("cli: an unknown column is rejected", "[cli]") {
    require_fit_rejects("eruptions,wait\n3.6,79\n1.8,54\n", {"bad.csv", ":1", "waiting"});
}

TEST_CASE("cli: a duplicate column in the header is rejected", "[cli]") {
    require_fit_rejects("eruptions,waiting,eruptions\n3.6,79,1\n1.8,54,2\n",
                        {"bad.csv", ":1", "'eruptions'", "duplicate"});
}

TEST_CASE("cli: a ragged row is rejected", "[cli]") {
    require_fit_rejects("eruptions,waiting\n3.6,79\n1.8,54\n3.3\n2.2,60\n", {"bad.csv:4"});
}

TEST_CASE("cli: a non-numeric cell is rejected", "[cli]") {
    require_fit_rejects("eruptions,waiting\n3.6,79\n1.8,abc\n3.3,74\n",
                        {"bad.csv:3", "'waiting'", "'abc'"});
}

TEST_CASE("cli: an empty cell is rejected", "[cli]") {
    require_fit_rejects("eruptions,waiting\n3.6,79\n,54\n3.3,74\n", {"bad.csv:3", "'eruptions'"});
}

TEST_CASE("cli: an NA cell is rejected", "[cli]") {
    require_fit_rejects("eruptions,waiting\n3.6,79\n1.8,54\n3.3,NA\n",
                        {"bad.csv:4", "'waiting'", "NA"});
}

TEST_CASE("cli: inf and nan cells are rejected", "[cli]") {
    require_fit_rejects("eruptions,waiting\n3.6,79\ninf,54\n3.3,74\n",
                        {"bad.csv:3", "'eruptions'", "inf"});
    require_fit_rejects("eruptions,waiting\n3.6,79\n1.8,54\n3.3,nan\n",
                        {"bad.csv:4", "'waiting'", "nan"});
}

TEST_CASE("cli: an empty file is rejected", "[cli]") {
    require_fit_rejects("", {"bad.csv", "empty"});
}

TEST_CASE("cli: a file with only a header is rejected", "[cli]") {
    require_fit_rejects("eruptions,waiting\n", {"bad.csv", "header"});
}

TEST_CASE("cli: more experts than data is rejected", "[cli]") {
    TempDir dir;
    write_text(dir.file("model.json"), sentinel);
    const RunResult result =
        run(dir, {"fit", faithful, "-y", "eruptions,waiting", "-k", "500", "-o", "model.json"});
    require_rejected(result, {"--experts", "500", "272"}, dir.file("model.json"));
}

TEST_CASE("cli: fewer than one expert is rejected", "[cli]") {
    TempDir dir;
    write_text(dir.file("model.json"), sentinel);
    const RunResult result =
        run(dir, {"fit", faithful, "-y", "eruptions,waiting", "-k", "0", "-o", "model.json"});
    require_rejected(result, {"--experts", "0", ">= 1"}, dir.file("model.json"));
}

TEST_CASE("cli: a bad enum value is a usage error", "[cli]") {
    TempDir dir;
    write_text(dir.file("model.json"), sentinel);
    const RunResult result = run(dir,
                                 {"fit",
                                  faithful,
                                  "-y",
                                  "eruptions,waiting",
                                  "-k",
                                  "2",
                                  "--covariance",
                                  "banana",
                                  "-o",
                                  "model.json"});
    CHECK(result.exit_code == 1);
    CHECK(result.err.find("--covariance") != std::string::npos);
    CHECK(result.err.find("banana") != std::string::npos);
    CHECK(result.err.find("spherical") != std::string::npos);
    CHECK(read_text(dir.file("model.json")) == sentinel);
}

TEST_CASE("cli: a missing required option is a usage error", "[cli]") {
    TempDir dir;
    write_text(dir.file("model.json"), sentinel);
    const RunResult result = run(dir, {"fit", faithful, "-k", "2", "-o", "model.json"});
    CHECK(result.exit_code == 1);
    CHECK(result.err.find("--target") != std::string::npos);
    CHECK(read_text(dir.file("model.json")) == sentinel);
}

TEST_CASE("cli: a nonexistent data file is rejected", "[cli]") {
    TempDir dir;
    write_text(dir.file("model.json"), sentinel);
    const RunResult result =
        run(dir, {"fit", "nope.csv", "-y", "eruptions,waiting", "-k", "2", "-o", "model.json"});
    require_rejected(result, {"nope.csv"}, dir.file("model.json"));
}

TEST_CASE("cli: an output file in a missing directory is refused before fitting", "[cli]") {
    TempDir dir;
    write_text(dir.file("model.json"), sentinel);
    const RunResult result = run(dir,
                                 {"fit",
                                  faithful,
                                  "-y",
                                  "eruptions,waiting",
                                  "-k",
                                  "2",
                                  "-o",
                                  "model.json",
                                  "--responsibilities",
                                  "no_such_dir/resp.csv"});
    require_rejected(result, {"--responsibilities", "no_such_dir"}, dir.file("model.json"));
}

TEST_CASE("cli: predict rejects a corrupt model file", "[cli]") {
    TempDir dir;
    write_text(dir.file("corrupt.json"), "{\"format\": \"moekit-model\", \"version\": 1,");
    write_text(dir.file("pred.csv"), sentinel);
    const RunResult result = run(dir, {"predict", "corrupt.json", faithful, "-o", "pred.csv"});
    require_rejected(result, {"corrupt.json"}, dir.file("pred.csv"));
}

TEST_CASE("cli: predict rejects data without the model's columns", "[cli]") {
    TempDir dir;
    REQUIRE(run(dir,
                {"fit",
                 npreg,
                 "-y",
                 "yn",
                 "-x",
                 "x",
                 "--expert",
                 "linear",
                 "-k",
                 "2",
                 "--seed",
                 "1",
                 "-o",
                 "linear.json"})
                .exit_code == 0);
    write_text(dir.file("pred.csv"), sentinel);
    const RunResult result = run(dir, {"predict", "linear.json", faithful, "-o", "pred.csv"});
    require_rejected(result, {"faithful.csv", "'x'"}, dir.file("pred.csv"));
}

#endif // MOEKIT_CLI

TEST_CASE("cli: a hierarchical mixture of experts (--tree) fits, predicts both routes and scores hard routing",
          "[cli][tree]") {
    TempDir dir;
    const RunResult fitted = run(dir,
                                 {"fit", npreg, "-y", "yn", "-x", "x", "--gate-inputs", "x", "--expert",
                                  "linear", "--tree", "2x2", "--restarts", "2", "--seed", "3", "-o", "tree.json"});
    INFO("stderr: " << fitted.err);
    REQUIRE(fitted.exit_code == 0);
    CHECK(fitted.out.find("tree gate 2x2 on x") != std::string::npos);
    CHECK(fitted.out.find("tree node 3 (depth 1)") != std::string::npos);
    const auto model = nlohmann::json::parse(read_text(dir.file("tree.json")));
    CHECK(model["gate"] == "tree");
    CHECK(model["n_experts"] == 4);
    CHECK(model["gate_parameters"]["branching"] == nlohmann::json::array({2, 2}));

    const RunResult predicted = run(dir, {"predict", "tree.json", npreg, "-o", "pred.csv"});
    REQUIRE(predicted.exit_code == 0);
    const Csv pred = read_csv_file(dir.file("pred.csv"));
    CHECK(pred.rows.size() == 200);
    CHECK(std::find(pred.header.begin(), pred.header.end(), "hard_pred_yn") != pred.header.end());
    CHECK(pred.header.back() == "hard_expert");

    const RunResult scored = run(dir, {"score", "tree.json", npreg});
    REQUIRE(scored.exit_code == 0);
    const double soft = value_after(scored.out, "log_likelihood");
    const double hard = value_after(scored.out, "hard_routing_log_likelihood");
    CHECK(value_after(scored.out, "hard_routing_log_likelihood_cost") == Approx(soft - hard));
    CHECK(value_after(scored.out, "hard_routing_mse") >= 0.0);
    CHECK(soft == Approx(model["fit"]["log_likelihood"].get<double>()).epsilon(1e-12));
}

TEST_CASE("cli: malformed or inconsistent --tree options are usage errors", "[cli][tree]") {
    TempDir dir;
    write_text(dir.file("model.json"), sentinel);
    const std::vector<std::string> base{"fit", npreg, "-y", "yn", "-x", "x", "--expert", "linear", "-o", "model.json"};
    auto with = [&](std::initializer_list<std::string> extra) {
        std::vector<std::string> args = base;
        args.insert(args.end(), extra);
        return run(dir, args);
    };
    require_rejected(with({"--tree", "2x1"}), {"--tree", "'2x1'", "at least 2 children"}, dir.file("model.json"));
    require_rejected(with({"--tree", "2xa"}), {"--tree", "whole numbers"}, dir.file("model.json"));
    require_rejected(with({"--gate", "softmax", "--tree", "2x2"}), {"--tree", "--gate tree"}, dir.file("model.json"));
    require_rejected(with({"--gate", "tree", "-k", "4"}), {"--tree", "missing"}, dir.file("model.json"));
    require_rejected(with({"--tree", "2x2", "-k", "3"}), {"--experts", "3", "leaves"}, dir.file("model.json"));
    require_rejected(with({}), {"--experts", "missing"}, dir.file("model.json"));
}
