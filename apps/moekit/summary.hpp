#pragma once
/// @file summary.hpp
/// The human-readable summary `moekit fit` prints: formatting of a FitResult only; the numbers
/// come from the library.

#include "moekit/moekit.hpp"

#include <iosfwd>
#include <string>

namespace moekit::cli {

/// One line describing a model, e.g. "2 Gaussian experts (full covariance), constant gate".
std::string describe_model(const moekit::Model& model);

/// Writes the fit summary: model description, data, log-likelihood, number of parameters,
/// AIC, BIC, the training MSE, the method and variant used (with the hard/soft disagreement of
/// the hard variant, and the routing, balance losses and capacity drops of sparse top-k
/// gating), iterations, convergence, restarts, then per expert (numbered 1..K) its gate weight
/// (constant gate), size Σ_i w_i h_ik and load (top-k), its mean or coefficients, its
/// covariance (σ when q = 1), and for a softmax gate the coefficient table.
/// @param data_name how to name the data (a path or "<stdin>").
/// @param data the data the model was fitted on (for the sample weights).
void print_fit_summary(std::ostream& out,
                       const std::string& data_name,
                       const moekit::Dataset& data,
                       const moekit::FitOptions& options,
                       const moekit::FitResult& result);

/// Writes the diagnostics block after the summary: ICL (both conventions), the entropy of the
/// responsibilities, the health of the fit (monotone trace, restarts that reached the best
/// log-likelihood, interventions) and a table with one row per expert: effective size, gate
/// mass, hard size, AvePP, smallest covariance eigenvalue and condition number.
void print_diagnostics(std::ostream& out, const moekit::Diagnostics& diagnostics);

} // namespace moekit::cli
