/// @file summary.cpp
/// Formatting of the `moekit fit` summary.

#include "summary.hpp"

#include "cli_common.hpp"

#include <cmath>
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
    case moekit::GateKind::Hash:
        text += ", hash gate on " + std::get<moekit::HashGate>(model.gate).column;
        break;
    }
    if (model.top_k > 0) text += ", top-" + std::to_string(model.top_k) + " routing";
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
    out << "MSE: " << short_number(result.mse) << '\n';
    out << "method: " << moekit::to_string(result.method) << '\n';
    out << "variant: " << moekit::to_string(options.variant) << '\n';
    if (options.variant == moekit::Variant::Hard || std::isfinite(result.hard_disagreement))
        out << "hard/soft disagreement: " << short_number(100.0 * result.hard_disagreement)
            << "% (top-1 gate expert is not the most responsible expert)\n";
    const moekit::ObjectiveReport& sparse = result.sparse;
    const bool sparse_gating = sparse.load.size() > 0;
    if (sparse_gating) {
        out << "top-k routing: k = " << model.top_k << ", " << moekit::to_string(options.balance_loss)
            << " balance loss weight " << short_number(options.balance_weight) << ", capacity factor "
            << (options.capacity_factor > 0.0 ? short_number(options.capacity_factor) : std::string("none"))
            << (options.gate_noise ? ", noisy gating" : "") << '\n';
        out << "balance losses: switch " << short_number(sparse.switch_loss) << ", importance CV^2 "
            << short_number(sparse.importance_cv2) << ", load CV^2 " << short_number(sparse.load_cv2)
            << '\n';
        out << "dropped: " << sparse.dropped << " routings (" << sparse.dropped_samples
            << " samples with no expert)\n";
    }
    out << "iterations: " << result.iterations << '\n';
    out << "converged: " << (result.converged ? "yes" : "no") << '\n';
    out << "restarts: " << options.restarts << " (best: " << result.best_restart + 1
        << ", seed: " << options.seed << ")\n";
    out << "restart log-likelihoods:";
    for (double value : result.restart_log_likelihoods)
        out << ' ' << fixed_number(value);
    out << '\n';

    // Effective expert sizes Σ_i w_i h_ik from the final E-step.
    const moekit::Vector sizes = moekit::expert_sizes(result.responsibilities, data);
    const auto* constant = std::get_if<moekit::ConstantGate>(&model.gate);
    for (moekit::Index k = 0; k < n_experts; ++k) {
        out << "\nexpert " << k + 1 << ":";
        if (constant != nullptr)
            out << " gate weight " << short_number(constant->weights(k)) << ",";
        out << " size " << short_number(sizes(k));
        if (sparse_gating && k < sparse.load.size()) out << ", load " << short_number(sparse.load(k));
        out << '\n';
        print_expert_table(out, model, k);
    }

    if (const auto* softmax = std::get_if<moekit::SoftmaxGate>(&model.gate)) {
        out << "\nsoftmax gate coefficients (expert 1 is the reference):\n";
        std::vector<std::string> labels{"intercept"};
        for (const auto& name : model.gate_input_names)
            labels.push_back(name);
        print_table(out, "  ", labels, numbered("expert ", n_experts), softmax->coefficients);
    }
    if (const auto* tree = std::get_if<moekit::TreeGate>(&model.gate)) {
        std::vector<std::string> labels{"intercept"};
        for (const auto& name : model.gate_input_names)
            labels.push_back(name);
        const auto diagnostics = moekit::tree_diagnostics(
            *tree, data, moekit::responsibility_matrix(result.responsibilities));
        for (const auto& d : diagnostics) {
            const auto j = static_cast<std::size_t>(d.node);
            out << "\ntree node " << d.node + 1 << " (depth " << d.depth << "): responsibility mass "
                << short_number(d.responsibility_mass) << ", gate entropy " << short_number(d.gate_entropy)
                << " nats, hard/soft disagreement " << short_number(100.0 * d.disagreement) << "%\n";
            print_table(out, "  ", labels, numbered("child ", tree->nodes[j].cols()), tree->nodes[j]);
        }
    }
}

void print_diagnostics(std::ostream& out, const moekit::Diagnostics& d) {
    out << "\ndiagnostics:\n";
    out << "  ICL: " << fixed_number(d.icl) << " (BIC + 2 x entropy; MAP version "
        << fixed_number(d.icl_map) << ")\n";
    out << "  entropy: " << short_number(d.entropy) << " nats (normalised "
        << short_number(d.normalized_entropy) << ")\n";
    if (d.fit_history) {
        const moekit::FitHistoryDiagnostics& h = *d.fit_history;
        out << "  log-likelihood trace monotone: " << (h.monotone ? "yes" : "no");
        if (!h.monotone) out << " (largest decrease " << short_number(h.largest_decrease) << ")";
        out << '\n';
        out << "  restarts reaching the best log-likelihood: " << h.restarts.reached_best << " of "
            << h.restarts.count << " (spread " << short_number(h.restarts.spread);
        if (h.restarts.failed > 0) out << ", " << h.restarts.failed << " failed";
        out << ")\n";
        out << "  interventions: " << h.interventions.size() << '\n';
    }
    const auto k = static_cast<moekit::Index>(d.experts.size());
    moekit::Matrix table(k, 6);
    for (moekit::Index j = 0; j < k; ++j) {
        const moekit::ExpertDiagnostics& e = d.experts[static_cast<std::size_t>(j)];
        table.row(j) << e.effective_size, e.gate_mass, e.hard_size, e.average_posterior,
            e.min_eigenvalue, e.condition_number;
    }
    print_table(out,
                "  ",
                numbered("expert ", k),
                {"size", "gate mass", "hard size", "AvePP", "min eigenvalue", "condition"},
                table);
}

} // namespace moekit::cli
