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
    sub->add_option("--responsibilities",
                    opt->responsibilities,
                    "Also write the responsibilities CSV of 'moekit fit --responsibilities' "
                    "(row, resp_k, gate_k, expert, log_lik; needs the targets) to this file");
    add_csv_options(*sub, opt->csv);
    sub->footer(
        std::string(
            "Output columns: row, pred_<target>..., gate_1..gate_K, expert, and with targets "
            "resp_1..resp_K, log_lik; for tree gates also hard_pred_<target>..., hard_expert "
            "(hard routing).\n"
            "Example:\n") +
        faithful_fit_example +
        "  moekit predict faithful.json data/faithful.csv -o faithful_pred.csv");
    sub->callback([opt]() { run_predict(*opt); });
}

void run_predict(const PredictCommandOptions& o) {
    check_output_path("moekit predict", "--output", o.output);
    check_output_path("moekit predict", "--responsibilities", o.responsibilities);
    const moekit::Model model = load_model_file(o.model);
    // A model without inputs (Gaussian experts, constant gate) can only be applied to its
    // targets; a file without them would silently give the same prediction on every row. A
    // hash gate's key column counts as an input.
    const bool needs_inputs = model_needs_inputs(model);
    const moekit::Dataset data = read_data(o.data, model_csv_spec(model, o.csv, needs_inputs));
    const bool has_targets = data.n_outputs() > 0;
    if (!o.responsibilities.empty() && !has_targets)
        moekit::throw_invalid_argument("moekit predict",
                                       "--responsibilities",
                                       "'" + o.responsibilities + "'",
                                       "responsibilities need the targets " +
                                           join(model.target_names, ", ") + " in the data",
                                       "Add the target columns to the data file, or drop "
                                       "--responsibilities.");
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
        table.middleCols(2 + q + k, k) = moekit::responsibility_matrix(resp);
        table.col(2 + q + 2 * k) = resp.log_norm;
    }
    if (moekit::gate_kind(model.gate) == moekit::GateKind::Tree) {
        // Both routes of a hierarchical model: the soft mixture above and hard routing, which
        // follows the most probable child at each node (depth-many gates per sample).
        const moekit::Matrix hard_mean = moekit::predict_mean_hard(model, data);
        const Eigen::VectorXi hard = moekit::route_hard(model.gate, data);
        for (const auto& target : model.target_names)
            header.push_back("hard_pred_" + target);
        header.push_back("hard_expert");
        moekit::Matrix extended(n, table.cols() + q + 1);
        extended.leftCols(table.cols()) = table;
        extended.middleCols(table.cols(), q) = hard_mean;
        extended.col(table.cols() + q) = (hard.array() + 1).cast<double>().matrix();
        table = std::move(extended);
    }
    moekit::write_csv(o.output, header, table);
    if (!o.responsibilities.empty())
        write_responsibilities(o.responsibilities, model, data, moekit::e_step(model, data));
}

} // namespace moekit::cli
