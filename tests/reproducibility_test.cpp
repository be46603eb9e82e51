// Reproducibility: the same data, options and seed give a bit-identical model file (and
// responsibilities file), run after run, for every model family: Gaussian experts with the four
// covariance structures, linear experts with constant, softmax and tree gates, and a softmax
// gate over Gaussian experts. Truth: byte equality of files written by separate processes. The
// data read from standard input gives the same bytes as from the file, and so does a run with
// another OpenMP thread count.

#include "support/cli_runner.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#ifdef MOEKIT_CLI

namespace {

using moekit_test::read_text;
using moekit_test::run_cli;
using moekit_test::shell_quote;
using moekit_test::TempDir;

const std::string faithful = std::string(MOEKIT_DATA_DIR) + "/faithful.csv";
const std::string npreg = std::string(MOEKIT_DATA_DIR) + "/NPreg.csv";

struct Family {
    std::string name;
    std::vector<std::string> args; ///< everything after "fit"
};

std::vector<Family> families() {
    const std::vector<std::string> faithful_y{faithful, "-y", "eruptions,waiting"};
    auto with = [](std::vector<std::string> base, std::initializer_list<std::string> more) {
        base.insert(base.end(), more);
        return base;
    };
    return {
        {"gaussian full", with(faithful_y, {"-k", "3", "--restarts", "4", "--seed", "5"})},
        {"gaussian tied",
         with(faithful_y, {"-k", "2", "--covariance", "tied", "--restarts", "3", "--seed", "6"})},
        {"gaussian diag random init",
         with(faithful_y,
              {"-k",
               "3",
               "--covariance",
               "diag",
               "--init",
               "random",
               "--restarts",
               "3",
               "--seed",
               "7"})},
        {"gaussian spherical",
         with(faithful_y, {"-k", "2", "--covariance", "spherical", "--seed", "8"})},
        {"linear constant gate",
         {npreg,
          "-y",
          "yn",
          "-x",
          "x,x2",
          "--expert",
          "linear",
          "-k",
          "2",
          "--restarts",
          "3",
          "--seed",
          "9"}},
        {"linear softmax gate",
         {npreg,
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
          "--restarts",
          "3",
          "--seed",
          "10"}},
        {"linear tree gate",
         {npreg,
          "-y",
          "yn",
          "-x",
          "x",
          "--expert",
          "linear",
          "--tree",
          "2x2",
          "--restarts",
          "2",
          "--seed",
          "11"}},
        {"gaussian softmax gate",
         {faithful,
          "-y",
          "eruptions",
          "--gate-inputs",
          "waiting",
          "--gate",
          "softmax",
          "-k",
          "2",
          "--restarts",
          "3",
          "--seed",
          "12"}},
    };
}

/// Runs `fit <args> -q -o <model> --responsibilities <resp>` and returns both files' bytes.
std::pair<std::string, std::string> fit_files(const TempDir& dir,
                                              std::vector<std::string> args,
                                              const std::string& tag,
                                              const std::string& stdin_pipe = {},
                                              const std::string& environment = {}) {
    args.insert(args.begin(), "fit");
    for (const std::string& extra :
         std::vector<std::string>{"-q", "-o", tag + ".json", "--responsibilities", tag + ".csv"})
        args.push_back(extra);
    const auto result = run_cli(dir, args, stdin_pipe, environment);
    INFO("moekit " << args[1] << " ...: " << result.err);
    REQUIRE(result.exit_code == 0);
    return {read_text(dir.file(tag + ".json")), read_text(dir.file(tag + ".csv"))};
}

} // namespace

TEST_CASE("reproducibility: every model family gives byte-identical files run after run",
          "[reproducibility][cli]") {
    TempDir dir;
    for (const Family& family : families()) {
        INFO("family: " << family.name);
        const auto first = fit_files(dir, family.args, "first");
        const auto second = fit_files(dir, family.args, "second");
        const auto third = fit_files(dir, family.args, "third");
        REQUIRE(first.first.size() > 100);
        REQUIRE(first.second.size() > 100);
        CHECK(first.first == second.first);
        CHECK(first.first == third.first);
        CHECK(first.second == second.second);
        CHECK(first.second == third.second);
    }
}

TEST_CASE("reproducibility: data from standard input and another thread count give the same bytes",
          "[reproducibility][cli]") {
    TempDir dir;
    for (const Family& family : {families()[0], families()[5]}) {
        INFO("family: " << family.name);
        const auto from_file = fit_files(dir, family.args, "file");
        std::vector<std::string> args = family.args;
        args[0] = "-";
        const auto from_stdin = fit_files(dir, args, "stdin", "cat " + shell_quote(family.args[0]));
        CHECK(from_file.first == from_stdin.first);
        CHECK(from_file.second == from_stdin.second);
        const auto one_thread = fit_files(dir, family.args, "one", {}, "OMP_NUM_THREADS=1");
        const auto two_threads = fit_files(dir, family.args, "two", {}, "OMP_NUM_THREADS=2");
        CHECK(from_file.first == one_thread.first);
        CHECK(from_file.first == two_threads.first);
    }
}

#endif // MOEKIT_CLI
