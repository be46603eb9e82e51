// Fit a mixture of two linear regressions with a softmax gate, then use it.
#include <moekit/moekit.hpp>

#include <iostream>

int main(int argc, char** argv) {
    const std::string csv = argc > 1 ? argv[1] : "data/NPreg.csv";
    moekit::CsvSpec spec;
    spec.targets = {"yn"};
    spec.inputs = {"x", "x2"};
    spec.gate_inputs = {"x"};
    const moekit::Dataset data = moekit::read_csv(csv, spec);

    moekit::FitOptions options;
    options.expert = moekit::ExpertKind::Linear;
    options.gate = moekit::GateKind::Softmax;
    options.n_experts = 2;
    options.restarts = 10;
    options.seed = 42;
    const moekit::FitResult result = moekit::fit(data, options);

    const moekit::Matrix mean = moekit::predict_mean(result.model, data); // E[y | x], n×1
    const moekit::Responsibilities r = moekit::e_step(result.model, data);
    std::cout << "log-likelihood " << result.log_likelihood << ", BIC " << result.bic
              << ", first prediction " << mean(0, 0) << ", P(expert 1 | x1, y1) "
              << std::exp(r.log_resp(0, 0)) << "\n";
    return result.converged ? 0 : 1;
}
