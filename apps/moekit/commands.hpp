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
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moekit::cli {

/// The root `moekit` app: version flag, footer and the subcommands below, each running
/// its command from its CLI11 callback during parse() (app.cpp).
std::unique_ptr<CLI::App> make_app();

/// The data and estimation options `fit` and `select` share (cmd_fit.cpp binds them).
struct FitInputOptions {
    std::string data;                     ///< CSV path, "-" for standard input
    std::vector<std::string> targets;     ///< y columns (--target/-y)
    std::vector<std::string> inputs;      ///< expert inputs x (--inputs/-x)
    std::vector<std::string> gate_inputs; ///< gate inputs z (--gate-inputs)
    std::string weights;                  ///< sample-weight column (--weights)
    /// Key column of a hash gate (--hash-column, `fit` only): read as text, hashed to route.
    std::string hash_column;
    CsvOptions csv;                       ///< --delimiter, --missing
    moekit::FitOptions fit;               ///< every fit option, defaults from the library
    std::string init;                     ///< "kmeans++", "random" or a model file (warm start)
};

/// Binds the data positional, --target, --inputs, --gate-inputs, --weights and the CSV flags.
void add_data_options(CLI::App& sub, FitInputOptions& options);
/// Binds --expert, --seed, --restarts, --max-iter, --tol, --reg-covar, --min-expert-size,
/// --gate-l2, --newton-steps, --init and --kmeans-iter (help for a model file in --init only
/// when `allow_model`).
void add_estimation_options(CLI::App& sub, FitInputOptions& options, bool allow_model);
/// Resolves --init: a method word sets options.init; otherwise, when `allow_model`, the path of
/// a model file to warm-start from (returned). @throws InvalidArgument naming `command`.
std::optional<moekit::Model> resolve_init(const std::string& command,
                                          const std::string& text,
                                          moekit::FitOptions& options,
                                          bool allow_model);
/// Which columns play which role, checked against options.expert and options.gate before any
/// data is read (a softmax or tree gate without --gate-inputs uses the expert inputs; a hash
/// gate reads its key column, input.hash_column, and no gate inputs).
/// @throws InvalidArgument naming `command`.
moekit::CsvSpec fit_column_spec(const std::string& command,
                                const FitInputOptions& input,
                                const moekit::FitOptions& options);

/// `moekit fit`: fit a mixture of experts to a CSV file.
struct FitCommandOptions : FitInputOptions {
    std::string tree;             ///< tree shape for --gate tree, e.g. "2x3"
    bool experts_given = false;   ///< -k/--experts was on the command line
    bool tree_given = false;      ///< --tree was on the command line (even with an empty shape)
    bool balance_loss_given = false;  ///< --balance-loss was on the command line
    bool upcycle_noise_given = false; ///< --upcycle-noise was on the command line
    std::string output;           ///< model file (--output/-o), empty: not saved
    std::string responsibilities; ///< responsibilities CSV, empty: not written
    bool json = false;            ///< print the model file as JSON instead of the summary
    bool quiet = false;           ///< no summary on standard output, no progress
    bool verbose = false;         ///< a progress line per EM iteration on standard error
};

/// Registers `fit` on `app`.
void setup_fit(CLI::App& app);
/// Reads the data, fits, writes the outputs and prints the summary.
void run_fit(const FitCommandOptions& options);

/// `moekit select`: fit a grid of candidate models and keep the best by a criterion.
struct SelectCommandOptions : FitInputOptions {
    std::string experts;                  ///< --experts, e.g. "1:6" or "1,2,4"
    std::vector<std::string> covariances{"full"}; ///< --covariance list
    std::vector<std::string> gates{"constant"};   ///< --gate list
    moekit::Criterion criterion = moekit::Criterion::Bic; ///< --criterion
    double min_share = 0.05; ///< --min-share (SelectionGrid::min_share)
    std::string table;  ///< CSV of the selection table (--table), empty: not written
    std::string output; ///< best model file (--output/-o), empty: not saved
    bool quiet = false;   ///< no table on standard output, no progress
    bool verbose = false; ///< a progress line per EM iteration on standard error
};

/// Registers `select` on `app`.
void setup_select(CLI::App& app);
/// Fits every candidate, prints and writes the table, saves the best model.
void run_select(const SelectCommandOptions& options);

/// `moekit report`: a self-contained HTML report of a model on data.
struct ReportCommandOptions {
    std::string model;  ///< model file
    std::string data;   ///< CSV path with the model's columns, "-" for standard input
    std::string output; ///< HTML file (--output/-o), "-" for standard output
    std::string title;  ///< --title, default: the model file's name
    CsvOptions csv;     ///< --delimiter, --missing
};

/// Registers `report` on `app`.
void setup_report(CLI::App& app);
/// Computes the diagnostics and writes the HTML report.
void run_report(const ReportCommandOptions& options);

/// `moekit predict`: apply a model to new data.
struct PredictCommandOptions {
    std::string model;        ///< model file
    std::string data;         ///< CSV path, "-" for standard input
    std::string output = "-"; ///< predictions CSV, "-" for standard output
    std::string responsibilities; ///< --responsibilities CSV (as `fit` writes it), empty: none
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
