#pragma once
/// @file cli_common.hpp
/// Pieces shared by the subcommands: enum flags, the CSV flags, reading data with the
/// "dropped rows" note, messages on standard error and plain-text tables. Formatting only: every
/// number shown is computed by the library.

#include "moekit/moekit.hpp"

#include <CLI/CLI.hpp>

#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

namespace moekit::cli {

/// The example fit every subcommand's help shows (it writes the model the other examples use),
/// indented and ending with a newline.
inline constexpr const char* faithful_fit_example =
    "  moekit fit data/faithful.csv -y eruptions,waiting -k 2 --restarts 5 --seed 1 -o "
    "faithful.json\n";

/// The CSV flags every subcommand that reads data shares.
struct CsvOptions {
    char delimiter = ',';                                         ///< --delimiter
    moekit::MissingPolicy missing = moekit::MissingPolicy::Error; ///< --missing
};

/// Joins `items` with `separator`.
std::string join(const std::vector<std::string>& items, const std::string& separator);

/// Adds an enum flag: `choices` maps each accepted word (matched case-insensitively) to its value;
/// the help shows the words and the field's current value as the default. A word not in
/// `choices` is a CLI11 validation error (exit 1) naming the flag and the accepted words.
template <typename Enum>
CLI::Option* add_enum_option(CLI::App& app,
                             const std::string& name,
                             Enum& field,
                             const std::vector<std::pair<std::string, Enum>>& choices,
                             const std::string& help) {
    std::vector<std::string> words;
    std::string default_word;
    for (const auto& [word, value] : choices) {
        words.push_back(word);
        if (value == field) default_word = word;
    }
    auto find = [choices](const std::string& text) -> const std::pair<std::string, Enum>* {
        const std::string lower = CLI::detail::to_lower(text);
        for (const auto& choice : choices)
            if (CLI::detail::to_lower(choice.first) == lower) return &choice;
        return nullptr;
    };
    CLI::Option* option = app.add_option_function<std::string>(
        name,
        [&field, find](const std::string& text) {
            if (const auto* choice = find(text)) field = choice->second;
        },
        help);
    option->check(CLI::Validator(
        [find, words](std::string& text) -> std::string {
            if (find(text) != nullptr) return {};
            return "'" + text + "' is not one of " + join(words, ", ");
        },
        "{" + join(words, ",") + "}",
        "choice"));
    option->type_name("WORD");
    option->default_str(default_word);
    return option;
}

/// Adds --delimiter (one character, or "tab") and --missing (error|drop) bound to `options`.
void add_csv_options(CLI::App& app, CsvOptions& options);

/// The CsvSpec of `options` (delimiter and missing policy), columns left empty.
moekit::CsvSpec make_csv_spec(const CsvOptions& options);

/// Reads `path` with `spec` (moekit::read_csv) and, when rows were dropped under
/// `--missing drop`, notes "moekit: dropped N rows with missing values (<path>)" on stderr.
moekit::Dataset read_data(const std::string& path, const moekit::CsvSpec& spec);

/// The CsvSpec that reads the columns `model` names (targets optional if `targets_optional`),
/// with the key column of a hash gate.
moekit::CsvSpec
model_csv_spec(const moekit::Model& model, const CsvOptions& options, bool targets_optional);

/// Whether applying `model` needs columns besides its targets: expert inputs, gate inputs or
/// the key column of a hash gate.
bool model_needs_inputs(const moekit::Model& model);

/// Loads a model file (moekit::load_model) and returns the model.
moekit::Model load_model_file(const std::string& path);

/// Checks, before any work, that an output file can be created: `path` is "-" (standard
/// output) or its directory exists. @throws InvalidArgument naming `command` and `flag`.
void check_output_path(const std::string& command,
                       const std::string& flag,
                       const std::string& path);

/// Writes "moekit: warning: <message>" on standard error.
void print_warning(const std::string& message);

/// Writes "moekit: <message>" on standard error.
void print_note(const std::string& message);

/// "prefix1", ..., "prefixK".
std::vector<std::string> numbered(const std::string& prefix, moekit::Index count);

/// Source line numbers of the samples (Dataset::line_numbers), or 1..n if none were recorded.
std::vector<long> sample_rows(const moekit::Dataset& data);

/// A number for humans: 6 significant digits (%.6g).
std::string short_number(double value);

/// Writes the responsibilities CSV of `fit --responsibilities` and `predict --responsibilities`:
/// one row per sample with row (the CSV line), resp_1..K, gate_1..K, expert (the 1-based hard
/// expert argmax_k h_ik) and log_lik (log p(y_i | x_i)). `resp` is the E-step of `model` on
/// `data`.
void write_responsibilities(const std::string& path,
                            const moekit::Model& model,
                            const moekit::Dataset& data,
                            const moekit::Responsibilities& resp);

/// Writes a table: a header row of `column_labels`, then one row per `row_labels` entry with
/// the values of `values` (rows × columns), every line prefixed by `indent`, columns aligned.
void print_table(std::ostream& out,
                 const std::string& indent,
                 const std::vector<std::string>& row_labels,
                 const std::vector<std::string>& column_labels,
                 const moekit::ConstMatrixRef& values);

} // namespace moekit::cli
