/// @file cmd_simulate.cpp
/// `moekit simulate`: draw samples from a model, for given inputs or (models without inputs)
/// n of them.

#include "commands.hpp"

#include <algorithm>
#include <memory>
#include <variant>

namespace moekit::cli {
namespace {

/// The input columns of a model, then its gate-input columns not among them: the numeric
/// columns an inputs file must provide, in the order the output CSV shows them.
std::vector<std::string> model_input_columns(const moekit::Model& model) {
    std::vector<std::string> columns = model.input_names;
    for (const auto& name : model.gate_input_names)
        if (std::find(columns.begin(), columns.end(), name) == columns.end())
            columns.push_back(name);
    return columns;
}

/// The columns an inputs file must provide: the numeric ones and a hash gate's key column.
std::vector<std::string> required_columns(const moekit::Model& model) {
    std::vector<std::string> columns = model_input_columns(model);
    if (const auto* hash = std::get_if<moekit::HashGate>(&model.gate))
        if (std::find(columns.begin(), columns.end(), hash->column) == columns.end())
            columns.push_back(hash->column);
    return columns;
}

} // namespace

void setup_simulate(CLI::App& app) {
    auto opt = std::make_shared<SimulateCommandOptions>();
    CLI::App* sub = app.add_subcommand(
        "simulate",
        "Draw samples from a model: one per row of --inputs (models with inputs) or -n of them");
    sub->add_option("model", opt->model, "Model file written by 'moekit fit'")->required();
    CLI::Option* n = sub->add_option("-n,--n-samples",
                                     opt->n_samples,
                                     "Number of samples (models without inputs only)")
                         ->check(CLI::PositiveNumber);
    CLI::Option* inputs = sub->add_option("--inputs",
                                          opt->inputs,
                                          "CSV file with the model's input and gate-input "
                                          "columns: one sample per row (models with inputs "
                                          "only; '-' reads standard input)");
    n->excludes(inputs);
    sub->add_option("--seed", opt->seed, "Seed of the random stream (std::mt19937_64)")->required();
    sub->add_option("-o,--output", opt->output, "Output CSV file ('-': standard output)")
        ->capture_default_str();
    add_csv_options(*sub, opt->csv);
    sub->footer(
        std::string("Output columns: the input columns, the gate-input columns not among them, the "
                    "targets, expert (1-based); a hash gate's key column (text) is read to route "
                    "but not copied.\n"
                    "Example:\n") +
        faithful_fit_example +
        "  moekit simulate faithful.json -n 100 --seed 7 -o faithful_sim.csv");
    sub->callback([opt]() { run_simulate(*opt); });
}

void run_simulate(const SimulateCommandOptions& o) {
    check_output_path("moekit simulate", "--output", o.output);
    const moekit::Model model = load_model_file(o.model);
    const bool needs_inputs = model_needs_inputs(model);
    if (needs_inputs && o.inputs.empty())
        moekit::throw_invalid_argument(
            "moekit simulate",
            "--inputs",
            "missing",
            "the model needs its input columns (" + join(required_columns(model), ", ") + ")",
            "Give --inputs X.csv with those columns; one sample is drawn per row.");
    if (!needs_inputs && !o.inputs.empty())
        moekit::throw_invalid_argument("moekit simulate",
                                       "--inputs",
                                       "'" + o.inputs + "'",
                                       "the model uses no inputs",
                                       "Use -n N to choose the number of samples.");
    if (!needs_inputs && o.n_samples < 1)
        moekit::throw_invalid_argument("moekit simulate",
                                       "-n",
                                       "missing",
                                       "a model without inputs needs the number of samples",
                                       "Give -n N.");

    moekit::Rng rng(o.seed);
    moekit::Simulation simulation;
    if (needs_inputs) {
        moekit::CsvSpec spec = model_csv_spec(model, o.csv, true);
        spec.targets.clear();
        const moekit::Dataset given = read_data(o.inputs, spec);
        moekit::check_compatible(model, given, false, "moekit simulate");
        simulation = moekit::simulate(model, given, rng);
    } else {
        simulation = moekit::simulate(model, o.n_samples, rng);
    }

    const moekit::Dataset& data = simulation.data;
    const moekit::Index n = static_cast<moekit::Index>(simulation.expert.size());
    std::vector<std::string> header = model_input_columns(model);
    std::vector<moekit::Index> gate_columns; // positions in z of the gate-only columns
    for (std::size_t j = 0; j < model.gate_input_names.size(); ++j)
        if (std::find(model.input_names.begin(),
                      model.input_names.end(),
                      model.gate_input_names[j]) == model.input_names.end())
            gate_columns.push_back(static_cast<moekit::Index>(j));
    for (const auto& target : model.target_names)
        header.push_back(target);
    header.push_back("expert");

    const moekit::Index d = static_cast<moekit::Index>(model.input_names.size());
    const moekit::Index g = static_cast<moekit::Index>(gate_columns.size());
    const moekit::Index q = static_cast<moekit::Index>(model.target_names.size());
    moekit::Matrix table(n, d + g + q + 1);
    if (d > 0) table.leftCols(d) = data.x;
    for (moekit::Index j = 0; j < g; ++j)
        table.col(d + j) = data.z.col(gate_columns[static_cast<std::size_t>(j)]);
    table.middleCols(d + g, q) = data.y;
    table.col(d + g + q) = (simulation.expert.array() + 1).cast<double>().matrix();
    moekit::write_csv(o.output, header, table);
}

} // namespace moekit::cli
