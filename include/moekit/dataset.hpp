#pragma once
/// @file dataset.hpp
/// The data a model is fitted on or applied to.

#include "moekit/types.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace moekit {

/// Samples in rows. All matrices have the same number of rows n.
struct Dataset {
    Matrix y;        ///< n×q targets (q may be 0 when only predicting)
    Matrix x;        ///< n×d expert inputs (d may be 0)
    Matrix z;        ///< n×g gate inputs (g may be 0)
    Vector weights;  ///< n sample weights (frequency weights, > 0); all ones when none given
    std::vector<std::string> target_names;     ///< q names
    std::vector<std::string> input_names;      ///< d names
    std::vector<std::string> gate_input_names; ///< g names
    /// n routing keys of a hash gate (hash_key of each cell of the key column), or empty.
    std::vector<std::uint64_t> keys;
    std::string key_name; ///< name of the key column ("" when keys is empty)
    std::vector<long> line_numbers; ///< n source line numbers (1-based, header = 1); may be empty

    Index n_samples() const { return y.rows() > 0 ? y.rows() : (x.rows() > 0 ? x.rows() : z.rows()); }
    Index n_outputs() const { return y.cols(); }
    Index n_inputs() const { return x.cols(); }
    Index n_gate_inputs() const { return z.cols(); }
    /// Σ weights: the effective sample size used by information criteria.
    double total_weight() const { return weights.sum(); }
};

/// Builds a dataset from matrices with unit weights and generated names (y1.., x1.., z1..).
/// Empty matrices get n rows and zero columns. The matrices are taken by value: pass them with
/// std::move to build the dataset without a copy of the data.
Dataset make_dataset(Matrix y, Matrix x = Matrix(), Matrix z = Matrix());

/// Checks shapes agree, all values finite, weights > 0 and names match column counts.
/// @throws InvalidArgument naming `function` and the offending argument.
void validate(const Dataset& data, const char* function);

} // namespace moekit
