#pragma once
/// @file simulate.hpp
/// Drawing samples from a model: for each sample an expert k ~ g(z), then
/// y = x̃ W_k + L_k ε with ε ~ N(0, I).

#include "moekit/model.hpp"
#include "moekit/rng.hpp"

namespace moekit {

/// A simulated data set and the expert each sample came from.
struct Simulation {
    Dataset data;             ///< y drawn; x and z as given
    Eigen::VectorXi expert;   ///< n indices in [0, K)
};

/// Draws y for the given inputs (x and z as the model needs; for Gaussian experts with a
/// constant gate, `inputs` may have no columns and only its row count matters: pass
/// `n_samples`).
/// @param inputs dataset whose x and z columns match the model (y ignored).
Simulation simulate(const Model& model, const Dataset& inputs, Rng& rng);

/// Draws n samples from a model that needs no inputs (Gaussian experts, constant gate).
/// @throws InvalidArgument if the model needs inputs.
Simulation simulate(const Model& model, Index n_samples, Rng& rng);

} // namespace moekit
