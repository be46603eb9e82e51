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
    sub->footer(std::string("Prints 'log_likelihood: <total>', 'mean_log_likelihood: <mean>' and "
                            "'n_samples: <n>'.\n"
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
    std::cout << "log_likelihood: " << moekit::format_double(total) << '\n'
              << "mean_log_likelihood: " << moekit::format_double(total / static_cast<double>(n))
              << '\n'
              << "n_samples: " << n << '\n';
}

} // namespace moekit::cli
