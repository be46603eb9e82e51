#pragma once
/// @file cli_runner.hpp
/// Running the built `moekit` binary (MOEKIT_CLI) from tests: a fresh temporary directory per
/// test, and a run that captures standard output, standard error and the exit code through
/// files (std::system with a /bin/sh command line). Used by the robustness tests
/// (cli_errors_test, degenerate_test, reproducibility_test, interrupt_test).

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace moekit_test {

namespace fs = std::filesystem;

/// A fresh directory under the system temporary directory, removed at the end of the test.
class TempDir {
  public:
    TempDir() {
        std::random_device device;
        std::mt19937_64 engine(device());
        for (int attempt = 0; attempt < 100; ++attempt) {
            fs::path candidate =
                fs::temp_directory_path() / ("moekit_robust_test_" + std::to_string(engine()));
            if (fs::create_directory(candidate)) {
                path_ = candidate;
                return;
            }
        }
        FAIL("cannot create a temporary directory");
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    const fs::path& path() const { return path_; }
    std::string file(const std::string& name) const { return (path_ / name).string(); }

  private:
    fs::path path_;
};

/// Exit code and captured streams of one run.
struct RunResult {
    int exit_code = -1; ///< -1 if the process did not exit normally (killed by a signal)
    std::string out;
    std::string err;
};

inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

inline void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

/// Single-quotes a word for /bin/sh.
inline std::string shell_quote(const std::string& word) {
    std::string quoted = "'";
    for (char c : word) {
        if (c == '\'')
            quoted += "'\\''";
        else
            quoted += c;
    }
    return quoted + "'";
}

/// Runs `moekit args...` in `dir` with standard input from /dev/null, or from the output of the
/// shell command `stdin_pipe` when given (e.g. "cat file"); `environment` is prepended to the
/// command (e.g. "OMP_NUM_THREADS=1").
inline RunResult run_cli(const TempDir& dir,
                         const std::vector<std::string>& args,
                         const std::string& stdin_pipe = {},
                         const std::string& environment = {}) {
    const std::string out_file = dir.file("_stdout.txt");
    const std::string err_file = dir.file("_stderr.txt");
    std::string command = "cd " + shell_quote(dir.path().string()) + " && ";
    if (!stdin_pipe.empty()) command += stdin_pipe + " | ";
    if (!environment.empty()) command += environment + " ";
    command += shell_quote(MOEKIT_CLI);
    for (const auto& arg : args)
        command += " " + shell_quote(arg);
    command += " >" + shell_quote(out_file) + " 2>" + shell_quote(err_file);
    if (stdin_pipe.empty()) command += " </dev/null";
    const int status = std::system(command.c_str());
    RunResult result;
    result.exit_code = (status != -1 && WIFEXITED(status)) ? WEXITSTATUS(status) : -1;
    result.out = read_text(out_file);
    result.err = read_text(err_file);
    fs::remove(out_file);
    fs::remove(err_file);
    return result;
}

} // namespace moekit_test
