/// @file fuzz_model_file.cpp
/// Fuzz target of the model loader (moekit::model_from_json on the input bytes).
///
/// Contract checked: model_from_json either throws moekit::DataError with a one-line message
/// naming the source (anything else escaping is a finding), or returns a model that
///  - passes moekit::validate,
///  - serialises again (model_to_json does not refuse what the loader accepted), and that text
///    loads and serialises to the very same bytes (a fixed point: save ∘ load is the identity
///    on files moekit writes),
///  - can be applied: the gate probabilities, predictions, per-sample log-likelihoods, hard
///    routing and a simulation run on a small data set of the model's shape (sanitizers check
///    the memory accesses; the gate probabilities must be a distribution where finite).

#include "fuzz_check.hpp"

#include "moekit/errors.hpp"
#include "moekit/gates.hpp"
#include "moekit/model.hpp"
#include "moekit/model_io.hpp"
#include "moekit/simulate.hpp"

#include <cmath>
#include <string>
#include <variant>

namespace {

const std::string source = "fuzz.json";

/// A 3-row data set with the model's numbers of targets, inputs and gate inputs (and, for a
/// hash gate, three routing keys).
moekit::Dataset small_data(const moekit::Model& model) {
    const auto q = static_cast<moekit::Index>(model.target_names.size());
    const auto d = static_cast<moekit::Index>(model.input_names.size());
    const auto g = static_cast<moekit::Index>(model.gate_input_names.size());
    auto filled = [](moekit::Index cols, double offset) {
        moekit::Matrix m(3, cols);
        for (moekit::Index i = 0; i < m.rows(); ++i)
            for (moekit::Index j = 0; j < m.cols(); ++j)
                m(i, j) = offset + static_cast<double>(i) - 0.5 * static_cast<double>(j);
        return m;
    };
    moekit::Dataset data = moekit::make_dataset(filled(q, 0.25), filled(d, -1.0), filled(g, 2.0));
    data.target_names = model.target_names;
    data.input_names = model.input_names;
    data.gate_input_names = model.gate_input_names;
    if (const auto* hash = std::get_if<moekit::HashGate>(&model.gate)) {
        data.keys = {moekit::hash_key("1"), moekit::hash_key("-7"), moekit::hash_key("user 3")};
        data.key_name = hash->column;
    }
    return data;
}

void apply(const moekit::Model& model) {
    // Keep the work per input small: the loader is what is being fuzzed.
    if (model.target_names.size() > 16 || model.input_names.size() > 16 ||
        model.gate_input_names.size() > 16 || model.n_experts() > 64)
        return;
    const moekit::Dataset data = small_data(model);
    const moekit::Matrix gate = moekit::gate_probabilities(model, data);
    FUZZ_CHECK(gate.rows() == 3 && gate.cols() == model.n_experts());
    for (moekit::Index i = 0; i < gate.rows(); ++i) {
        if (!gate.row(i).allFinite()) continue;
        FUZZ_CHECK((gate.row(i).array() >= 0.0).all());
        FUZZ_CHECK(std::abs(gate.row(i).sum() - 1.0) < 1e-9);
    }
    FUZZ_CHECK(moekit::predict_mean(model, data).rows() == 3);
    FUZZ_CHECK(moekit::log_likelihood_samples(model, data).size() == 3);
    const Eigen::VectorXi hard = moekit::route_hard(model.gate, data);
    for (Eigen::Index i = 0; i < hard.size(); ++i)
        FUZZ_CHECK(hard(i) >= 0 && hard(i) < model.n_experts());
    FUZZ_CHECK(moekit::predict_mean_hard(model, data).rows() == 3);
    FUZZ_CHECK(moekit::log_likelihood_samples_hard(model, data).size() == 3);
    moekit::Rng rng(1);
    const moekit::Simulation simulation = moekit::simulate(model, data, rng);
    for (Eigen::Index i = 0; i < simulation.expert.size(); ++i)
        FUZZ_CHECK(simulation.expert(i) >= 0 && simulation.expert(i) < model.n_experts());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    moekit::ModelFile file;
    try {
        file = moekit::model_from_json(text, source);
    } catch (const moekit::DataError& e) {
        const std::string message = e.what();
        FUZZ_CHECK(message.rfind(source + ":", 0) == 0);
        FUZZ_CHECK(message.find('\n') == std::string::npos);
        return 0;
    }
    moekit::validate(file.model, "fuzz_model_file");

    const std::string saved = moekit::model_to_json(file.model, file.fit ? &*file.fit : nullptr);
    const moekit::ModelFile again = moekit::model_from_json(saved, source);
    FUZZ_CHECK(again.fit.has_value() == file.fit.has_value());
    FUZZ_CHECK(moekit::model_to_json(again.model, again.fit ? &*again.fit : nullptr) == saved);

    apply(file.model);
    return 0;
}
