#pragma once
/// @file log_sum_exp.hpp
/// The one audited log-sum-exp of moekit (Stan's contract):
/// \f$\log \sum_j e^{a_j} = m + \log \sum_j e^{a_j - m}\f$ with \f$m = \max_j a_j\f$.
/// - empty input gives −∞;
/// - if m is not finite (all entries −∞, or any +∞) the result is m, so a row of −∞ gives −∞
///   instead of NaN (mlpack's guard), and +∞ propagates;
/// - NaN propagates.

#include "moekit/types.hpp"

namespace moekit {

/// log(exp(a) + exp(b)) without overflow or underflow.
double log_add_exp(double a, double b);

/// log Σ_j exp(v_j) of a vector; −∞ for an empty vector.
double log_sum_exp(const ConstVectorRef& v);

/// Row-wise log-sum-exp of an n×K matrix; returns n values.
Vector log_sum_exp_rows(const ConstMatrixRef& a);

/// Row-wise log-softmax in place: each row r becomes r − log_sum_exp(r). A row that is all −∞
/// is left as it is. Returns the row normalisers (the log_sum_exp of each row).
Vector log_softmax_rows_in_place(Matrix& a);

/// Element-wise exp of log-probabilities with exp(−∞) = 0 exactly: values below −708 (results
/// below the smallest normal double) are flushed to 0. (Eigen's vectorised exp clamps its
/// argument near −709.8 and returns about 5.6e-309 for −∞, so the experts that sparse or hash
/// routing excludes would keep a tiny non-zero weight.)
Matrix exp_of_log(const ConstMatrixRef& a);

} // namespace moekit
