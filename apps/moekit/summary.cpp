/// @file summary.cpp
/// Formatting of the `moekit fit` summary.

#include "summary.hpp"

#include "cli_common.hpp"

#include <cstdio>
#include <ostream>
#include <variant>

namespace moekit::cli {
namespace {

/// Log-likelihoods and information criteria: fixed, 6 decimals.
std::string fixed_number(double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.6f", value);
    return buffer;
}

/// The rows that describe expert k: its coefficients (Gaussian: the mean; linear: intercept
/// and slopes), then its covariance (full/tied: q rows; diag/spherical: the variances; q = 1:
/// sigma). Columns are the targets.
void print_expert_table(std::ostream& out, const moekit::Model& model, moekit::Index k) {
    const moekit::Experts& experts = model.experts;
    const moekit::Matrix& coefficients = experts.coefficients[static_cast<std::size_t>(k)];
    const moekit::Matrix& covariance = experts.covariances[static_cast<std::size_t>(k)].covariance;
    const moekit::Index q = coefficients.cols();

    std::vector<std::string> labels;
    if (experts.kind == moekit::ExpertKind::Gaussian) {
        labels.push_back("mean");
    } else {
        labels.push_back("intercept");
        for (const auto& name : model.input_names)
            labels.push_back(name);
    }

    moekit::Matrix noise;
    if (q == 1) {
        labels.push_back("sigma");
        noise = covariance.cwiseSqrt();
    } else if (experts.covariance_type == moekit::CovarianceType::Full ||
               experts.covariance_type == moekit::CovarianceType::Tied) {
        for (const auto& name : model.target_names)
            labels.push_back("cov[" + name + "]");
        noise = covariance;
    } else {
        labels.push_back("variance");
        noise = covariance.diagonal().transpose();
    }

    moekit::Matrix table(coefficients.rows() + noise.rows(), q);
    table << coefficients, noise;
    print_table(out, "  ", labels, model.target_names, table);
}

} // namespace

std::string describe_model(const moekit::Model& model) {
    const moekit::Index k = model.n_experts();
    std::string text = std::to_string(k);
    if (model.experts.kind == moekit::ExpertKind::Gaussian)
        text += k == 1 ? " Gaussian expert" : " Gaussian experts";
    else
        text += (k == 1 ? " linear-regression expert on " : " linear-regression experts on ") +
                join(model.input_names, ", ");
    text += " (" + std::string(moekit::to_string(model.experts.covariance_type)) + " covariance)";
    switch (moekit::gate_kind(model.gate)) {
    case moekit::GateKind::Constant:
        text += ", constant gate";
        break;
    case moekit::GateKind::Softmax:
        text += ", softmax gate on " + join(model.gate_input_names, ", ");
        break;
    case moekit::GateKind::Tree:
        text += ", tree gate " +
                moekit::format_tree_shape(std::get<moekit::TreeGate>(model.gate).branching) +
                " on " + join(model.gate_input_names, ", ");
        break;
    }
    return text;
}

void print_fit_summary(std::ostream& out,
                       const std::string& data_name,
                       const moekit::Dataset& data,
                       const moekit::FitOptions& options,
                       const moekit::FitResult& result) {
    const moekit::Model& model = result.model;
    const moekit::Index n_experts = model.n_experts();

    out << "model: " << describe_model(model) << '\n';
    out << "targets: " << join(model.target_names, ", ") << '\n';
    out << "data: " << data_name << ", " << data.n_samples() << " samples";
    if (result.n_samples != static_cast<double>(data.n_samples()))
        out << " (total weight " << short_number(result.n_samples) << ")";
    out << '\n';
    out << "log-likelihood: " << fixed_number(result.log_likelihood) << '\n';
    out << "n_parameters: " << result.n_parameters << '\n';
    out << "AIC: " << fixed_number(result.aic) << '\n';
    out << "BIC: " << fixed_number(result.bic) << '\n';
    out << "iterations: " << result.iterations << '\n';
    out << "converged: " << (result.converged ? "yes" : "no") << '\n';
    out << "restarts: " << options.restarts << " (best: " << result.best_restart + 1
        << ", seed: " << options.seed << ")\n";
    out << "restart log-likelihoods:";
    for (double value : result.restart_log_likelihoods)
        out << ' ' << fixed_number(value);
    out << '\n';

    // Effective expert sizes Σ_i w_i h_ik from the final E-step.
    const moekit::Matrix resp = result.responsibilities.log_resp.array().exp().matrix();
    const moekit::Vector sizes = resp.transpose() * data.weights;
    const auto* constant = std::get_if<moekit::ConstantGate>(&model.gate);
    for (moekit::Index k = 0; k < n_experts; ++k) {
        out << "\nexpert " << k + 1 << ":";
        if (constant != nullptr)
            out << " gate weight " << short_number(constant->weights(k)) << ",";
        out << " size " << short_number(sizes(k)) << '\n';
        print_expert_table(out, model, k);
    }

    if (const auto* softmax = std::get_if<moekit::SoftmaxGate>(&model.gate)) {
        out << "\nsoftmax gate coefficients (expert 1 is the reference):\n";
        std::vector<std::string> labels{"intercept"};
        for (const auto& name : model.gate_input_names)
            labels.push_back(name);
        print_table(out, "  ", labels, numbered("expert ", n_experts), softmax->coefficients);
    }
}

} // namespace moekit::cli
