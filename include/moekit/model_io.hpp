#pragma once
/// @file model_io.hpp
/// Model files: versioned JSON (`"format": "moekit-model"`, `"version": 1`), documented in
/// docs/file_formats.md. Doubles are written in their shortest round-trip form, so a save/load
/// round trip is bit-exact. Loading validates everything and rejects corrupt, truncated or
/// future-version files with a clear message.

#include "moekit/diagnostics.hpp"
#include "moekit/fit.hpp"

#include <limits>
#include <optional>
#include <string>

namespace moekit {

/// Current model-file version written by save_model; load_model reads versions <= this.
inline constexpr int model_file_version = 1;

/// The record of how a model was fitted (the file's `fit` object).
struct FitRecord {
    double log_likelihood = 0.0;
    Index n_parameters = 0;
    double n_samples = 0.0;
    double aic = 0.0;
    double bic = 0.0;
    int iterations = 0;
    bool converged = false;
    std::vector<double> trace;
    std::uint64_t seed = 0;
    int best_restart = 0;
    std::vector<double> restart_log_likelihoods;
    std::vector<std::string> warnings;
    /// Gate-weighted-mean squared error on the training data (FitResult::mse); absent in files
    /// written before the key existed (and written as null then).
    std::optional<double> mse;
    /// Hard variant: FitResult::hard_disagreement, in [0, 1]. NaN for the other variants (and
    /// for hard fits in files written before the key existed); written as null then.
    double hard_disagreement = std::numeric_limits<double>::quiet_NaN();
    /// Sparse top-k gating: the balance losses, per-expert load (K values) and capacity drops of
    /// FitResult::sparse. Absent (written as null) when top-k is off or the file predates the
    /// key. Only the fields the file stores are kept: `log_likelihood` and `penalty` are 0.
    std::optional<ObjectiveReport> sparse;
    FitOptions options; ///< the options used
};

/// The record of a fit made with `options`.
FitRecord make_fit_record(const FitResult& result, const FitOptions& options);

/// A model file's content.
struct ModelFile {
    Model model;
    std::optional<FitRecord> fit;
    /// The file's optional `diagnostics` object (files written before it existed have none).
    std::optional<Diagnostics> diagnostics;
};

/// Serialises to the JSON text of a model file (pretty-printed, ends with a newline), with the
/// optional `fit` and `diagnostics` objects. Non-finite diagnostics values (an AvePP of an
/// expert that no sample is assigned to) are written as null.
std::string model_to_json(const Model& model,
                          const FitRecord* fit = nullptr,
                          const Diagnostics* diagnostics = nullptr);

/// Parses and validates model-file text. `source` names the file in messages.
/// @throws DataError for malformed JSON, a wrong format or future version, missing or
/// mistyped keys, inconsistent shapes, non-finite values, covariances that are not symmetric
/// positive definite, or gate weights that do not sum to 1.
ModelFile model_from_json(const std::string& text, const std::string& source);

/// Writes a model file atomically (see write_file_atomic).
void save_model(const std::string& path,
                const Model& model,
                const FitRecord* fit = nullptr,
                const Diagnostics* diagnostics = nullptr);

/// Reads and validates a model file. @throws DataError.
ModelFile load_model(const std::string& path);

} // namespace moekit
