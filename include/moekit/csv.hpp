#pragma once
/// @file csv.hpp
/// Reading numeric columns from CSV files and writing CSV output atomically.
///
/// The reader reads blocks of whole lines and parses them in parallel (OpenMP threads; the
/// result and the error reported do not depend on their number; docs/csv.md). Rules:
///  - the first line is a header naming the columns; a UTF-8 byte-order mark is skipped;
///  - `delimiter` separates fields (comma by default); a field may be quoted with `"`, and `""`
///    inside quotes is a literal quote; a quoted field cannot span lines;
///  - CRLF and LF line ends are both accepted; a final line without a newline is read; blank
///    lines (after the header) are skipped;
///  - only the requested columns are parsed, as numbers, exactly as std::from_chars does (exact
///    and locale-independent); other columns may hold anything;
///  - every failure throws `DataError` with one line "<file>:<line>: column '<name>': <problem>
///    '<text>'": unknown or duplicate column name, ragged row, non-numeric cell, empty cell or
///    NA, inf or nan, empty file, header only (no data rows);
///  - `path == "-"` reads standard input (named `<stdin>` in messages).

#include "moekit/dataset.hpp"

#include <string>
#include <vector>

namespace moekit {

/// What to do with a row whose requested cell is empty or NA (or NaN / inf).
enum class MissingPolicy {
    Error, ///< throw DataError naming the cell (default)
    Drop   ///< drop the whole row and count it
};

/// Which columns to read and how.
struct CsvSpec {
    char delimiter = ',';
    std::vector<std::string> targets;     ///< y columns
    std::vector<std::string> inputs;      ///< x columns (expert inputs)
    std::vector<std::string> gate_inputs; ///< z columns (gate inputs)
    std::string weights;                  ///< sample-weight column, empty for unit weights
    /// Routing-key column of a hash gate, read as text (any content; an empty cell or NA is
    /// missing) into Dataset::keys with hash_key; empty for none.
    std::string key;
    MissingPolicy missing = MissingPolicy::Error;
    /// When true and none of the target columns is in the file, the dataset gets q = 0 targets
    /// instead of an error (prediction on new inputs). If some but not all are present, the
    /// missing ones are still an error.
    bool targets_optional = false;
};

/// What the reader did, for messages.
struct CsvReport {
    long rows_read = 0;    ///< data rows in the file (blank lines excluded)
    long rows_dropped = 0; ///< rows dropped under MissingPolicy::Drop
};

/// Reads the requested columns of a CSV file into a Dataset (names filled in, line numbers
/// recorded, unit weights unless `spec.weights` names a column; weights must be finite and > 0).
/// A column may appear in more than one role (inputs and gate inputs often coincide), but a
/// name may not be listed twice within one role.
/// @throws DataError for any problem with the file or its values (see the file comment).
/// @throws InvalidArgument if no column at all is requested.
Dataset read_csv(const std::string& path, const CsvSpec& spec, CsvReport* report = nullptr);

/// Reads just the header line of a CSV file: the column names (BOM stripped, quotes removed).
/// @throws DataError for an empty or unreadable file.
std::vector<std::string> read_csv_header(const std::string& path, char delimiter = ',');

/// Formats a double for CSV/JSON output: shortest representation that round-trips.
std::string format_double(double value);

/// Writes `content` to `path` atomically: the text goes to a temporary file in the same
/// directory, which is flushed and then renamed over `path`. On any failure the temporary is
/// removed and `path` is untouched. `path == "-"` writes to standard output.
/// @throws DataError if the file cannot be written.
void write_file_atomic(const std::string& path, const std::string& content);

/// Writes a header and a numeric matrix (one row per sample) as CSV, atomically.
/// @pre header.size() == values.cols()
void write_csv(const std::string& path, const std::vector<std::string>& header, const ConstMatrixRef& values);

} // namespace moekit
