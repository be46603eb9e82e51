#include "moekit/simulate.hpp"

#include "moekit/errors.hpp"

namespace moekit {

Simulation simulate(const Model& model, const Dataset& inputs, Rng& rng) {
    check_compatible(model, inputs, false, "simulate");
    const Index n = inputs.n_samples();
    const Index q = model.experts.n_outputs();
    const Index K = model.n_experts();
    Simulation sim;
    sim.data = inputs;
    sim.data.y.resize(n, q);
    sim.data.target_names = model.target_names;
    if (sim.data.weights.size() != n) sim.data.weights = Vector::Ones(n);
    sim.expert.resize(n);
    const Matrix g = gate_probabilities(model, inputs);
    std::vector<Matrix> means;
    for (Index k = 0; k < K; ++k) means.push_back(expert_mean(model.experts, inputs, k));
    Vector eps(q);
    for (Index i = 0; i < n; ++i) {
        // Expert k ~ Categorical(g(z_i)) by inversion; the last expert absorbs round-off.
        double u = uniform01(rng);
        Index k = 0;
        while (k < K - 1 && (u -= g(i, k)) >= 0.0) ++k;
        for (Index j = 0; j < q; ++j) eps(j) = standard_normal(rng);
        const auto uk = static_cast<std::size_t>(k);
        sim.data.y.row(i) = means[uk].row(i) + (model.experts.covariances[uk].lower * eps).transpose();
        sim.expert(i) = static_cast<int>(k);
    }
    return sim;
}

Simulation simulate(const Model& model, Index n_samples, Rng& rng) {
    if (model.experts.n_inputs() > 0 || !std::holds_alternative<ConstantGate>(model.gate))
        throw_invalid_argument("simulate", "inputs", "missing",
                               "this model depends on inputs", "Give the inputs to draw y for (--inputs X.csv).");
    if (n_samples < 1) throw_invalid_argument("simulate", "n_samples", std::to_string(n_samples), "must be >= 1");
    Dataset inputs;
    inputs.x.resize(n_samples, 0);
    inputs.z.resize(n_samples, 0);
    inputs.y.resize(n_samples, 0);
    inputs.weights = Vector::Ones(n_samples);
    return simulate(model, inputs, rng);
}

} // namespace moekit
