#pragma once
/// @file types.hpp
/// Matrix aliases and the orientation convention used everywhere in moekit.
///
/// Rows are samples. Shape letters used in comments and docs:
///  - n: number of samples (`n_samples`)
///  - q: number of targets, the dimension of y (`n_outputs`)
///  - d: number of expert inputs x (`n_inputs`); linear experts use x̃ = (1, x), d + 1 columns
///  - g: number of gate inputs z; softmax gates use z̃ = (1, z), g + 1 columns
///  - K: number of experts (`n_experts`)

#include <Eigen/Dense>

namespace moekit {

using Index = Eigen::Index;
using Matrix = Eigen::MatrixXd;       ///< column-major; rows are samples
using Vector = Eigen::VectorXd;       ///< column vector
using RowVector = Eigen::RowVectorXd; ///< one sample
using ConstMatrixRef = Eigen::Ref<const Matrix>;
using ConstVectorRef = Eigen::Ref<const Vector>;

} // namespace moekit
