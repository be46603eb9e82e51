#pragma once
/// @file errors.hpp
/// The exception hierarchy and the Stan-style argument checks.
///
/// - `InvalidArgument`: the caller misused the API or the command line (bad option value,
///   shapes that disagree). Exit code 1 in the CLI.
/// - `DataError`: an input file or its values are unusable (ragged CSV, NaN, unknown column,
///   corrupt model file). The message names file, line, column and the offending text. Exit 1.
/// - `NumericalError`: the numbers themselves failed (a covariance that is not positive
///   definite even after regularisation, a non-finite log-likelihood). Exit 2.
/// Data-dependent trouble that a fit can survive (a collapsing expert, non-convergence) is not
/// an exception: it is recorded in `FitResult`.

#include <stdexcept>
#include <string>
#include <string_view>

namespace moekit {

/// Base of every exception moekit throws.
class Error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

/// API or command-line misuse.
class InvalidArgument : public Error {
  public:
    using Error::Error;
};

/// Unusable input data or file.
class DataError : public Error {
  public:
    using Error::Error;
};

/// Numerical failure that cannot be recovered from.
class NumericalError : public Error {
  public:
    using Error::Error;
};

/// Throws `InvalidArgument` with the message
/// "<function>: <argument> is <value>, but <requirement>. <remedy>".
[[noreturn]] void throw_invalid_argument(std::string_view function,
                                         std::string_view argument,
                                         std::string_view value,
                                         std::string_view requirement,
                                         std::string_view remedy = {});

/// Throws `DataError` with the message "<file>:<line>: column '<column>': <problem> '<text>'".
/// `line` is 1-based (the header is line 1); `line` <= 0 omits the line, an empty `column`
/// omits the column, an empty `text` omits the quoted text.
[[noreturn]] void throw_data_error(std::string_view file,
                                   long line,
                                   std::string_view column,
                                   std::string_view problem,
                                   std::string_view text = {});

/// Formats a double for messages (shortest representation that round-trips).
std::string format_number(double value);

} // namespace moekit
