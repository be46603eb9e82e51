/// @file cmd_predict.cpp
/// `moekit predict`: model + CSV → E[y|x], gate probabilities, most probable expert and, when
/// the targets are in the file, responsibilities and per-row log-likelihoods.

#include "commands.hpp"

#include <memory>

namespace moekit::cli {

void setup_predict(CLI::App& app) {
    auto opt = std::make_shared<PredictCommandOptions>();
    CLI::App* sub = app.add_subcommand("predict",
                                       "Apply a model to the rows of a CSV file: E[y|x], gate "
                                       "probabilities, expert and (with targets) responsibilities");
    sub->add_option("model", opt->model, "Model file written by 'moekit fit'")->required();
    sub->add_option(
           "data", opt->data, "CSV file with the model's input columns ('-' reads standard input)")
        ->required();
    sub->add_option("-o,--output", opt->output, "Output CSV file ('-': standard output)")
        ->capture_default_str();
    add_csv_options(*sub, opt->csv);
    sub->footer(
        std::string(
            "Output columns: row, pred_<target>..., gate_1..gate_K, expert, and with targets "
            "resp_1..resp_K, log_lik.\n"
            "Example:\n") +
        faithful_fit_example +
        "  moekit predict faithful.json data/faithful.csv -o faithful_pred.csv");
    sub->callback([opt]() { run_predict(*opt); });
}

void run_predict(const PredictCommandOptions& o) {
    check_output_path("moekit predict", "--output", o.output);
    const moekit::Model model = load_model_file(o.model);
    // A model without inputs (Gaussian experts, constant gate) can only be applied to its
    // targets; a file without them would silently give the same prediction on every row.
    const bool needs_inputs = !model.input_names.empty() || !model.gate_input_names.empty();
    const moekit::Dataset data = read_data(o.data, model_csv_spec(model, o.csv, needs_inputs));
    const bool has_targets = data.n_outputs() > 0;
    moekit::check_compatible(model, data, has_targets, "moekit predict");

    const moekit::Index n = data.n_samples();
    const moekit::Index k = model.n_experts();
    const moekit::Index q = static_cast<moekit::Index>(model.target_names.size());
    const moekit::Matrix mean = moekit::predict_mean(model, data);
    const moekit::Matrix gate = moekit::gate_probabilities(model, data);
    const Eigen::VectorXi expert = moekit::predict_expert(model, data);
    const std::vector<long> rows = sample_rows(data);

    std::vector<std::string> header{"row"};
    for (const auto& target : model.target_names)
        header.push_back("pred_" + target);
    for (const auto& name : numbered("gate_", k))
        header.push_back(name);
    header.push_back("expert");

    const moekit::Index columns = 1 + q + k + 1 + (has_targets ? k + 1 : 0);
    moekit::Matrix table(n, columns);
    for (moekit::Index i = 0; i < n; ++i)
        table(i, 0) = static_cast<double>(rows[static_cast<std::size_t>(i)]);
    table.middleCols(1, q) = mean;
    table.middleCols(1 + q, k) = gate;
    table.col(1 + q + k) = (expert.array() + 1).cast<double>().matrix();
    if (has_targets) {
        const moekit::Responsibilities resp = moekit::e_step(model, data);
        for (const auto& name : numbered("resp_", k))
            header.push_back(name);
        header.push_back("log_lik");
        table.middleCols(2 + q + k, k) = resp.log_resp.array().exp().matrix();
        table.col(2 + q + 2 * k) = resp.log_norm;
    }
    moekit::write_csv(o.output, header, table);
}

} // namespace moekit::cli
