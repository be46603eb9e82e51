/// @file cli_common.cpp
/// Shared CLI helpers: CSV flags, data reading, messages and tables.

#include "cli_common.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <variant>

namespace moekit::cli {

std::string join(const std::vector<std::string>& items, const std::string& separator) {
    std::string out;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += separator;
        out += items[i];
    }
    return out;
}

void add_csv_options(CLI::App& app, CsvOptions& options) {
    app.add_option_function<std::string>(
           "--delimiter",
           [&options](const std::string& text) {
               options.delimiter = (text == "tab" || text == "\\t") ? '\t' : text.front();
           },
           "Field separator of the input CSV: one character, or 'tab'")
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
                if (text.size() == 1 || text == "tab" || text == "\\t") return {};
                return "'" + text + "' is not a single character (or 'tab')";
            },
            "",
            "delimiter"))
        ->type_name("CHAR")
        ->default_str(std::string(1, options.delimiter));
    add_enum_option(
        app,
        "--missing",
        options.missing,
        {{"error", moekit::MissingPolicy::Error}, {"drop", moekit::MissingPolicy::Drop}},
        "Rows with an empty, NA, NaN or infinite cell in a used column: 'error' stops "
        "with the cell's position, 'drop' skips the row and reports the count");
}

moekit::CsvSpec make_csv_spec(const CsvOptions& options) {
    moekit::CsvSpec spec;
    spec.delimiter = options.delimiter;
    spec.missing = options.missing;
    return spec;
}

moekit::Dataset read_data(const std::string& path, const moekit::CsvSpec& spec) {
    moekit::CsvReport report;
    moekit::Dataset data = moekit::read_csv(path, spec, &report);
    if (report.rows_dropped > 0) {
        const std::string name = path == "-" ? std::string("<stdin>") : path;
        print_note("dropped " + std::to_string(report.rows_dropped) + " row" +
                   (report.rows_dropped == 1 ? "" : "s") + " with missing values (" + name + ", " +
                   std::to_string(report.rows_read - report.rows_dropped) + " of " +
                   std::to_string(report.rows_read) + " rows kept)");
    }
    return data;
}

moekit::CsvSpec
model_csv_spec(const moekit::Model& model, const CsvOptions& options, bool targets_optional) {
    moekit::CsvSpec spec = make_csv_spec(options);
    spec.targets = model.target_names;
    spec.inputs = model.input_names;
    spec.gate_inputs = model.gate_input_names;
    // A hash gate routes by its key column, read as text.
    if (const auto* hash = std::get_if<moekit::HashGate>(&model.gate)) spec.key = hash->column;
    spec.targets_optional = targets_optional;
    return spec;
}

bool model_needs_inputs(const moekit::Model& model) {
    return !model.input_names.empty() || !model.gate_input_names.empty() ||
           std::holds_alternative<moekit::HashGate>(model.gate);
}

moekit::Model load_model_file(const std::string& path) {
    return moekit::load_model(path).model;
}

void check_output_path(const std::string& command,
                       const std::string& flag,
                       const std::string& path) {
    if (path.empty() || path == "-") return;
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    if (!parent.empty() && !std::filesystem::is_directory(parent))
        moekit::throw_invalid_argument(command,
                                       flag,
                                       "'" + path + "'",
                                       "its directory '" + parent.string() + "' does not exist",
                                       "Create the directory or choose another path.");
}

void print_warning(const std::string& message) {
    std::cerr << "moekit: warning: " << message << '\n';
}

void print_note(const std::string& message) {
    std::cerr << "moekit: " << message << '\n';
}

std::vector<std::string> numbered(const std::string& prefix, moekit::Index count) {
    std::vector<std::string> names;
    for (moekit::Index k = 0; k < count; ++k)
        names.push_back(prefix + std::to_string(k + 1));
    return names;
}

std::vector<long> sample_rows(const moekit::Dataset& data) {
    const auto n = static_cast<std::size_t>(data.n_samples());
    if (data.line_numbers.size() == n) return data.line_numbers;
    std::vector<long> rows(n);
    for (std::size_t i = 0; i < n; ++i)
        rows[i] = static_cast<long>(i) + 1;
    return rows;
}

std::string short_number(double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.6g", value);
    return buffer;
}

void write_responsibilities(const std::string& path,
                            const moekit::Model& model,
                            const moekit::Dataset& data,
                            const moekit::Responsibilities& resp) {
    const moekit::Index n = data.n_samples();
    const moekit::Index k = model.n_experts();
    const moekit::Matrix h = moekit::responsibility_matrix(resp);
    const moekit::Matrix gate = moekit::gate_probabilities(model, data);
    const Eigen::VectorXi hard = moekit::hard_assignments(resp);
    const std::vector<long> rows = sample_rows(data);

    moekit::Matrix table(n, 2 * k + 3);
    for (moekit::Index i = 0; i < n; ++i) {
        table(i, 0) = static_cast<double>(rows[static_cast<std::size_t>(i)]);
        table.block(i, 1, 1, k) = h.row(i);
        table.block(i, 1 + k, 1, k) = gate.row(i);
        table(i, 2 * k + 1) = static_cast<double>(hard(i) + 1);
        table(i, 2 * k + 2) = resp.log_norm(i);
    }
    std::vector<std::string> header{"row"};
    for (const auto& name : numbered("resp_", k))
        header.push_back(name);
    for (const auto& name : numbered("gate_", k))
        header.push_back(name);
    header.push_back("expert");
    header.push_back("log_lik");
    moekit::write_csv(path, header, table);
}

void print_table(std::ostream& out,
                 const std::string& indent,
                 const std::vector<std::string>& row_labels,
                 const std::vector<std::string>& column_labels,
                 const moekit::ConstMatrixRef& values) {
    // cells[r][c]: row 0 is the header, column 0 the row labels.
    std::vector<std::vector<std::string>> cells;
    cells.emplace_back();
    cells[0].emplace_back();
    for (const auto& label : column_labels)
        cells[0].push_back(label);
    for (moekit::Index r = 0; r < values.rows(); ++r) {
        std::vector<std::string> row;
        row.push_back(row_labels[static_cast<std::size_t>(r)]);
        for (moekit::Index c = 0; c < values.cols(); ++c)
            row.push_back(short_number(values(r, c)));
        cells.push_back(std::move(row));
    }
    std::vector<std::size_t> width(column_labels.size() + 1, 0);
    for (const auto& row : cells)
        for (std::size_t c = 0; c < row.size(); ++c)
            width[c] = std::max(width[c], row[c].size());
    for (const auto& row : cells) {
        std::string line = indent;
        for (std::size_t c = 0; c < row.size(); ++c) {
            if (c > 0) line += "  ";
            // Labels left-aligned, numbers right-aligned.
            const std::string pad(width[c] - row[c].size(), ' ');
            line += c == 0 ? row[c] + pad : pad + row[c];
        }
        while (!line.empty() && line.back() == ' ')
            line.pop_back();
        out << line << '\n';
    }
}

} // namespace moekit::cli
