/// @file cmd_score.cpp
/// `moekit score`: model + CSV with targets → total and mean log-likelihood.

#include "commands.hpp"

#include <iostream>
#include <memory>

namespace moekit::cli {

void setup_score(CLI::App& app) {
    auto opt = std::make_shared<ScoreCommandOptions>();
    CLI::App* sub = app.add_subcommand(
        "score", "Log-likelihood of a model on the rows of a CSV file (targets required)");
    sub->add_option("model", opt->model, "Model file written by 'moekit fit'")->required();
    sub->add_option("data",
                    opt->data,
                    "CSV file with the model's target and input columns ('-' reads standard "
                    "input)")
        ->required();
    add_csv_options(*sub, opt->csv);
    sub->footer(std::string("Prints 'log_likelihood: <total>', 'mean_log_likelihood: <mean>', "
                            "'n_samples: <n>', and what hard routing (every sample to its top-1 "
                            "expert; for trees the most probable child at each node) costs: "
                            "'hard_routing_log_likelihood', 'hard_routing_log_likelihood_cost' (soft minus "
                            "hard), 'mse' and 'hard_routing_mse' (mean squared error of E[y|x] per target).\n"
                            "Example:\n") +
                faithful_fit_example + "  moekit score faithful.json data/faithful.csv");
    sub->callback([opt]() { run_score(*opt); });
}

void run_score(const ScoreCommandOptions& o) {
    const moekit::Model model = load_model_file(o.model);
    // No weights column is read, so every row of the file counts once.
    const moekit::Dataset data = read_data(o.data, model_csv_spec(model, o.csv, false));
    moekit::check_compatible(model, data, true, "moekit score");
    const double total = moekit::log_likelihood(model, data);
    const moekit::Index n = data.n_samples();
    const double nd = static_cast<double>(n);
    // What hard routing (top-1 expert; for trees the most probable child at each node) costs.
    const double hard = moekit::log_likelihood_samples_hard(model, data).sum();
    const double soft_mse = (moekit::predict_mean(model, data) - data.y).squaredNorm() / (nd * static_cast<double>(data.n_outputs()));
    const double hard_mse = (moekit::predict_mean_hard(model, data) - data.y).squaredNorm() / (nd * static_cast<double>(data.n_outputs()));
    std::cout << "log_likelihood: " << moekit::format_double(total) << '\n'
              << "mean_log_likelihood: " << moekit::format_double(total / nd) << '\n'
              << "n_samples: " << n << '\n'
              << "hard_routing_log_likelihood: " << moekit::format_double(hard) << '\n'
              << "hard_routing_log_likelihood_cost: " << moekit::format_double(total - hard) << '\n'
              << "mse: " << moekit::format_double(soft_mse) << '\n'
              << "hard_routing_mse: " << moekit::format_double(hard_mse) << '\n';
}

} // namespace moekit::cli
