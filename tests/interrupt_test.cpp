// Interrupting `moekit fit`: SIGINT (Ctrl-C) or SIGTERM during a long fit stops
// it after the current EM iteration, saves the best model so far marked
// "converged": false, and exits with 130. The fit is started in the background
// on a generated 50,000-row data set with --tol 0 and
// --max-iter 100000 (it would run for many minutes); the signal is sent once
// the process has installed its handler (read from /proc/<pid>/status, so no
// sleeps decide the outcome), and the process is killed if it has not exited
// after 120 s. Truths: the exit status, and the model file read back with the
// library (valid, converged false, fewer iterations than --max-iter).

#include "moekit/model_io.hpp"
#include "moekit/rng.hpp"
#include "support/cli_runner.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

#ifdef MOEKIT_CLI

namespace {

using moekit_test::read_text;
using moekit_test::TempDir;

/// n rows of (a, b) from five well separated Gaussian clusters, fixed seed.
void write_clusters(const std::string& path, int n) {
    moekit::Rng rng(42);
    std::string text = "a,b\n";
    char line[64];
    for (int i = 0; i < n; ++i) {
        const double centre = 6.0 * static_cast<double>(i % 5);
        std::snprintf(line,
                      sizeof line,
                      "%.6f,%.6f\n",
                      centre + moekit::standard_normal(rng),
                      -centre + moekit::standard_normal(rng));
        text += line;
    }
    moekit_test::write_text(path, text);
}

/// True once the process has a handler for `signal` (bit signal−1 of SigCgt in
/// /proc/<pid>/status), or false if the process is gone.
bool catches(pid_t pid, int signal) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("SigCgt:", 0) != 0) continue;
        const unsigned long long mask = std::stoull(line.substr(7), nullptr, 16);
        return ((mask >> (signal - 1)) & 1ULL) != 0;
    }
    return false;
}

/// Whether the process has exited (reaped into `status`).
bool exited(pid_t pid, int& status) {
    return waitpid(pid, &status, WNOHANG) == pid;
}

struct Interrupted {
    int status = 0;
    bool timed_out = false;
    std::string err;
};

/// Starts `moekit args...` in `dir`, waits until it catches `signal`, sends it,
/// and waits for the exit (at most 120 s from the start, then SIGKILL).
Interrupted
run_and_interrupt(const TempDir& dir, const std::vector<std::string>& args, int signal) {
    std::vector<std::string> argv_text{MOEKIT_CLI};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& arg : argv_text)
        argv.push_back(arg.data());
    argv.push_back(nullptr);

    const std::string out_path = dir.file("_stdout.txt");
    const std::string err_path = dir.file("_stderr.txt");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(
        &actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(
        &actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    // The child starts in the test's directory; paths in `args` are absolute.
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(spawned == 0);

    Interrupted result;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    bool sent = false;
    bool done = false;
    while (!done && std::chrono::steady_clock::now() < deadline) {
        if (exited(pid, result.status)) {
            done = true;
            break;
        }
        if (!sent && catches(pid, signal)) {
            REQUIRE(kill(pid, signal) == 0);
            sent = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &result.status, 0);
        result.timed_out = true;
    }
    result.err = read_text(err_path);
    CHECK(sent);
    return result;
}

} // namespace

TEST_CASE("interrupt: SIGINT stops a long fit, saves the best model so far and "
          "exits 130",
          "[interrupt][cli]") {
    TempDir dir;
    const std::string data = dir.file("clusters.csv");
    const std::string model = dir.file("model.json");
    write_clusters(data, 50000);
    const Interrupted run = run_and_interrupt(dir,
                                              {"fit",
                                               data,
                                               "-y",
                                               "a,b",
                                               "-k",
                                               "5",
                                               "--tol",
                                               "0",
                                               "--max-iter",
                                               "100000",
                                               "--seed",
                                               "1",
                                               "-o",
                                               model},
                                              SIGINT);
    INFO("stderr: " << run.err);
    REQUIRE_FALSE(run.timed_out);
    REQUIRE(WIFEXITED(run.status));
    CHECK(WEXITSTATUS(run.status) == 130);
    CHECK(run.err.find("moekit: interrupted by SIGINT: saved the best model so far to " + model +
                       " (converged: false)") != std::string::npos);

    const moekit::ModelFile file = moekit::load_model(model); // validates the whole file
    REQUIRE(file.fit.has_value());
    CHECK_FALSE(file.fit->converged);
    CHECK(file.fit->iterations >= 1);
    CHECK(file.fit->iterations < 100000);
    CHECK(file.model.n_experts() == 5);
    CHECK(std::isfinite(file.fit->log_likelihood));
}

TEST_CASE("interrupt: SIGTERM does the same and writes the responsibilities", "[interrupt][cli]") {
    TempDir dir;
    const std::string data = dir.file("clusters.csv");
    const std::string model = dir.file("model.json");
    const std::string resp = dir.file("resp.csv");
    write_clusters(data, 50000);
    moekit_test::write_text(model, "old model\n");
    const Interrupted run = run_and_interrupt(dir,
                                              {"fit",
                                               data,
                                               "-y",
                                               "a,b",
                                               "-k",
                                               "5",
                                               "--tol",
                                               "0",
                                               "--max-iter",
                                               "100000",
                                               "--restarts",
                                               "3",
                                               "--seed",
                                               "2",
                                               "-q",
                                               "-o",
                                               model,
                                               "--responsibilities",
                                               resp},
                                              SIGTERM);
    INFO("stderr: " << run.err);
    REQUIRE_FALSE(run.timed_out);
    REQUIRE(WIFEXITED(run.status));
    CHECK(WEXITSTATUS(run.status) == 130);
    CHECK(run.err.find("interrupted by SIGTERM") != std::string::npos);
    const moekit::ModelFile file = moekit::load_model(model);
    REQUIRE(file.fit.has_value());
    CHECK_FALSE(file.fit->converged);
    // One line per row plus the header.
    const std::string responsibilities = read_text(resp);
    CHECK(std::count(responsibilities.begin(), responsibilities.end(), '\n') == 50001);
}

TEST_CASE("interrupt: without --output the fit still stops and says nothing "
          "was saved",
          "[interrupt][cli]") {
    TempDir dir;
    const std::string data = dir.file("clusters.csv");
    write_clusters(data, 50000);
    const Interrupted run = run_and_interrupt(
        dir,
        {"fit", data, "-y", "a,b", "-k", "5", "--tol", "0", "--max-iter", "100000", "-q"},
        SIGINT);
    INFO("stderr: " << run.err);
    REQUIRE_FALSE(run.timed_out);
    REQUIRE(WIFEXITED(run.status));
    CHECK(WEXITSTATUS(run.status) == 130);
    CHECK(run.err.find("the best model so far is not saved (no --output)") != std::string::npos);
}

#endif // MOEKIT_CLI
