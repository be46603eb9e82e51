#pragma once
/// @file commands.hpp
/// The subcommands of the `moekit` tool (CLI11's multi-file pattern, STYLE.md rule 14): for each
/// subcommand an options struct, `setup_<name>(CLI::App&)`, which registers the subcommand and
/// binds its flags to a shared options struct, and `run_<name>(const Options&)`, which does the
/// work through the library. Errors are thrown (moekit::InvalidArgument, DataError,
/// NumericalError) and mapped to exit codes in main.cpp; nothing here computes statistics.

#include "cli_common.hpp"

#include "moekit/moekit.hpp"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace moekit::cli {

/// `moekit fit`: fit a mixture of experts to a CSV file.
struct FitCommandOptions {
    std::string data;                     ///< CSV path, "-" for standard input
    std::vector<std::string> targets;     ///< y columns (--target/-y)
    std::vector<std::string> inputs;      ///< expert inputs x (--inputs/-x)
    std::vector<std::string> gate_inputs; ///< gate inputs z (--gate-inputs)
    std::string weights;                  ///< sample-weight column (--weights)
    CsvOptions csv;                       ///< --delimiter, --missing
    moekit::FitOptions fit;               ///< every fit option, defaults from the library
    std::string init;                     ///< "kmeans++", "random" or a model file (warm start)
    std::string output;                   ///< model file (--output/-o), empty: not saved
    std::string responsibilities;         ///< responsibilities CSV, empty: not written
    bool quiet = false;                   ///< no summary on standard output
};

/// Registers `fit` on `app`.
void setup_fit(CLI::App& app);
/// Reads the data, fits, writes the outputs and prints the summary.
void run_fit(const FitCommandOptions& options);

/// `moekit predict`: apply a model to new data.
struct PredictCommandOptions {
    std::string model;        ///< model file
    std::string data;         ///< CSV path, "-" for standard input
    std::string output = "-"; ///< predictions CSV, "-" for standard output
    CsvOptions csv;           ///< --delimiter, --missing
};

/// Registers `predict` on `app`.
void setup_predict(CLI::App& app);
/// Writes predictions, gate probabilities and (with targets) responsibilities.
void run_predict(const PredictCommandOptions& options);

/// `moekit score`: log-likelihood of a model on data.
struct ScoreCommandOptions {
    std::string model; ///< model file
    std::string data;  ///< CSV path, "-" for standard input
    CsvOptions csv;    ///< --delimiter, --missing
};

/// Registers `score` on `app`.
void setup_score(CLI::App& app);
/// Prints the total and mean log-likelihood and the number of samples.
void run_score(const ScoreCommandOptions& options);

/// `moekit simulate`: draw samples from a model.
struct SimulateCommandOptions {
    std::string model;           ///< model file
    moekit::Index n_samples = 0; ///< -n, for models without inputs
    std::string inputs;          ///< CSV of inputs (one sample per row), for models with inputs
    std::uint64_t seed = 0;      ///< seed of the std::mt19937_64 stream
    std::string output = "-";    ///< CSV path, "-" for standard output
    CsvOptions csv;              ///< --delimiter, --missing (of the inputs file)
};

/// Registers `simulate` on `app`.
void setup_simulate(CLI::App& app);
/// Draws the samples and writes them.
void run_simulate(const SimulateCommandOptions& options);

} // namespace moekit::cli
