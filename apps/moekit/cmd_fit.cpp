/// @file cmd_fit.cpp
/// `moekit fit`: CSV → moekit::fit → model file, summary and (optionally) responsibilities.

#include "commands.hpp"
#include "summary.hpp"

#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

namespace moekit::cli {
namespace {

constexpr const char* command = "moekit fit";

/// The accepted words of a library enum, spelled by the library's to_string.
template <typename Enum>
std::vector<std::pair<std::string, Enum>> choices_of(std::initializer_list<Enum> values) {
    std::vector<std::pair<std::string, Enum>> choices;
    for (Enum value : values)
        choices.emplace_back(std::string(moekit::to_string(value)), value);
    return choices;
}

std::string quoted_list(const std::vector<std::string>& names) {
    return names.empty() ? std::string("(none)") : "'" + join(names, ",") + "'";
}

/// The initialisation methods --init accepts by name (the library spells them).
const std::vector<moekit::InitMethod> init_methods{moekit::InitMethod::Auto,
                                                   moekit::InitMethod::KMeansPlusPlus,
                                                   moekit::InitMethod::Random,
                                                   moekit::InitMethod::RandomLines};

std::string init_method_words(const std::string& separator) {
    std::vector<std::string> words;
    for (moekit::InitMethod method : init_methods)
        words.emplace_back(moekit::to_string(method));
    return join(words, separator);
}

/// --init: a method word, or the path of a model file to start the first restart from.
std::optional<moekit::Model> resolve_init(const std::string& text, moekit::FitOptions& options) {
    try {
        options.init = moekit::parse_init_method(text);
        return std::nullopt;
    } catch (const moekit::InvalidArgument&) {
        // Not a method word: a model file, if it looks like one.
    }
    const std::filesystem::path path(text);
    if (path.extension() != ".json" && !std::filesystem::exists(path))
        moekit::throw_invalid_argument(command,
                                       "--init",
                                       "'" + text + "'",
                                       "must be one of " + init_method_words(", ") +
                                           " or the path of a model file",
                                       "Check the spelling, or give an existing .json model.");
    options.init = moekit::InitMethod::Model;
    return load_model_file(text);
}

/// Which columns play which role, checked against the expert and gate families before any
/// data is read. A softmax gate without --gate-inputs uses the expert inputs.
moekit::CsvSpec column_spec(const FitCommandOptions& o, const moekit::FitOptions& options) {
    moekit::CsvSpec spec = make_csv_spec(o.csv);
    spec.targets = o.targets;
    spec.inputs = o.inputs;
    spec.gate_inputs = o.gate_inputs;
    spec.weights = o.weights;

    if (options.expert == moekit::ExpertKind::Gaussian && !spec.inputs.empty())
        moekit::throw_invalid_argument(command,
                                       "--inputs",
                                       quoted_list(spec.inputs),
                                       "Gaussian experts use no inputs",
                                       "Use --expert linear for regression experts, or "
                                       "--gate-inputs for the inputs of a softmax gate.");
    if (options.expert == moekit::ExpertKind::Linear && spec.inputs.empty())
        moekit::throw_invalid_argument(command,
                                       "--inputs",
                                       "empty",
                                       "linear-regression experts need at least one input",
                                       "Name the regressor columns with --inputs/-x.");
    if (options.gate == moekit::GateKind::Softmax && spec.gate_inputs.empty())
        spec.gate_inputs = spec.inputs;
    if (options.gate == moekit::GateKind::Softmax && spec.gate_inputs.empty())
        moekit::throw_invalid_argument(command,
                                       "--gate-inputs",
                                       "empty",
                                       "a softmax gate needs at least one input",
                                       "Name the gate's columns with --gate-inputs (or --inputs "
                                       "with --expert linear).");
    if (options.gate == moekit::GateKind::Constant && !spec.gate_inputs.empty())
        moekit::throw_invalid_argument(command,
                                       "--gate-inputs",
                                       quoted_list(spec.gate_inputs),
                                       "a constant gate uses no inputs",
                                       "Use --gate softmax for a gate that depends on inputs.");
    return spec;
}

/// The warm-start model must be the model being fitted: same families, K and columns.
void check_warm_start(const moekit::Model& model,
                      const std::string& path,
                      const moekit::FitOptions& options,
                      const moekit::CsvSpec& spec) {
    const std::string what = "--init " + path;
    auto mismatch = [&](const std::string& property,
                        const std::string& in_model,
                        const std::string& flag,
                        const std::string& requested) {
        moekit::throw_invalid_argument(command,
                                       "the " + property + " of " + what,
                                       in_model,
                                       "must equal " + flag + " " + requested,
                                       "Pass matching options or start from another model.");
    };
    if (model.experts.kind != options.expert)
        mismatch("expert family",
                 std::string(moekit::to_string(model.experts.kind)),
                 "--expert",
                 std::string(moekit::to_string(options.expert)));
    if (model.experts.covariance_type != options.covariance)
        mismatch("covariance type",
                 std::string(moekit::to_string(model.experts.covariance_type)),
                 "--covariance",
                 std::string(moekit::to_string(options.covariance)));
    if (moekit::gate_kind(model.gate) != options.gate)
        mismatch("gate",
                 std::string(moekit::to_string(moekit::gate_kind(model.gate))),
                 "--gate",
                 std::string(moekit::to_string(options.gate)));
    if (model.n_experts() != options.n_experts)
        mismatch("number of experts",
                 std::to_string(model.n_experts()),
                 "--experts",
                 std::to_string(options.n_experts));
    if (model.target_names != spec.targets)
        mismatch("targets", quoted_list(model.target_names), "--target", quoted_list(spec.targets));
    if (model.input_names != spec.inputs)
        mismatch("inputs", quoted_list(model.input_names), "--inputs", quoted_list(spec.inputs));
    if (model.gate_input_names != spec.gate_inputs)
        mismatch("gate inputs",
                 quoted_list(model.gate_input_names),
                 "--gate-inputs",
                 quoted_list(spec.gate_inputs));
}

/// One row per sample: row, resp_1..K, gate_1..K, expert (1-based argmax of the
/// responsibilities), log_lik.
void write_responsibilities(const std::string& path,
                            const moekit::Dataset& data,
                            const moekit::FitResult& result) {
    const moekit::Index n = data.n_samples();
    const moekit::Index k = result.model.n_experts();
    const moekit::Matrix resp = result.responsibilities.log_resp.array().exp().matrix();
    const moekit::Matrix gate = moekit::gate_probabilities(result.model, data);
    const std::vector<long> rows = sample_rows(data);

    moekit::Matrix table(n, 2 * k + 3);
    for (moekit::Index i = 0; i < n; ++i) {
        moekit::Index best = 0;
        resp.row(i).maxCoeff(&best);
        table(i, 0) = static_cast<double>(rows[static_cast<std::size_t>(i)]);
        table.block(i, 1, 1, k) = resp.row(i);
        table.block(i, 1 + k, 1, k) = gate.row(i);
        table(i, 2 * k + 1) = static_cast<double>(best + 1);
        table(i, 2 * k + 2) = result.responsibilities.log_norm(i);
    }
    std::vector<std::string> header{"row"};
    for (const auto& name : numbered("resp_", k))
        header.push_back(name);
    for (const auto& name : numbered("gate_", k))
        header.push_back(name);
    header.push_back("expert");
    header.push_back("log_lik");
    moekit::write_csv(path, header, table);
}

} // namespace

void setup_fit(CLI::App& app) {
    auto opt = std::make_shared<FitCommandOptions>();
    moekit::FitOptions& fit = opt->fit;
    opt->init = std::string(moekit::to_string(fit.init));

    CLI::App* sub = app.add_subcommand("fit",
                                       "Fit a mixture of experts p(y|x) = sum_k g_k(z) p_k(y|x) to "
                                       "a CSV file by EM; print a summary and save the model");

    sub->add_option("data", opt->data, "CSV file with a header line ('-' reads standard input)")
        ->required();
    sub->add_option("-y,--target", opt->targets, "Target columns y (comma-separated)")
        ->required()
        ->delimiter(',')
        ->allow_extra_args(false);
    sub->add_option("-x,--inputs",
                    opt->inputs,
                    "Expert input columns x (comma-separated; needed by --expert linear)")
        ->delimiter(',')
        ->allow_extra_args(false);
    sub->add_option("--gate-inputs",
                    opt->gate_inputs,
                    "Gate input columns z (comma-separated; --gate softmax only; default: the "
                    "expert inputs)")
        ->delimiter(',')
        ->allow_extra_args(false);
    sub->add_option("--weights",
                    opt->weights,
                    "Column of sample (frequency) weights, finite and > 0; default: all 1");
    add_csv_options(*sub, opt->csv);

    sub->add_option("-k,--experts", fit.n_experts, "Number of experts K (>= 1)")->required();
    add_enum_option(*sub,
                    "--expert",
                    fit.expert,
                    choices_of({moekit::ExpertKind::Gaussian, moekit::ExpertKind::Linear}),
                    "Expert family: 'gaussian' N(y; mu_k, Sigma_k) or 'linear' regression "
                    "N(y; W_k'(1,x), Sigma_k)");
    add_enum_option(*sub,
                    "--gate",
                    fit.gate,
                    choices_of({moekit::GateKind::Constant, moekit::GateKind::Softmax}),
                    "Gate: 'constant' mixing weights or 'softmax' (multinomial logit on z)");
    add_enum_option(*sub,
                    "--covariance",
                    fit.covariance,
                    choices_of({moekit::CovarianceType::Full,
                                moekit::CovarianceType::Tied,
                                moekit::CovarianceType::Diag,
                                moekit::CovarianceType::Spherical}),
                    "Structure of the experts' covariances");
    sub->add_option("--seed",
                    fit.seed,
                    "Base seed of the random initialisation (restart r uses its own stream)")
        ->capture_default_str();
    sub->add_option("--restarts", fit.restarts, "Independent starts; the best log-likelihood wins")
        ->capture_default_str();
    sub->add_option("--max-iter", fit.max_iter, "EM iterations per start")->capture_default_str();
    sub->add_option("--tol",
                    fit.tol,
                    "Stop when the mean per-sample log-likelihood changes by less than this")
        ->capture_default_str();
    sub->add_option("--reg-covar",
                    fit.regularization.reg_covar,
                    "Ridge added to every covariance estimate, relative to each target's "
                    "variance")
        ->capture_default_str();
    sub->add_option("--min-expert-size",
                    fit.regularization.min_expert_size,
                    "An expert whose size sum_i w_i h_ik falls below this keeps its previous "
                    "parameters; <= 0: automatic (coefficients per target + 1)")
        ->capture_default_str();
    sub->add_option("--gate-l2",
                    fit.gate_options.gate_l2,
                    "L2 penalty on the softmax gate's coefficients (intercepts excluded)")
        ->capture_default_str();
    sub->add_option("--newton-steps",
                    fit.gate_options.newton_steps,
                    "Newton (IRLS) steps of the softmax gate per EM iteration")
        ->capture_default_str();
    sub->add_option("--init",
                    opt->init,
                    "Initialisation: " + init_method_words(", ") +
                        " (auto: kmeans++ for Gaussian experts, lines for linear experts), or "
                        "MODEL.json to start the first restart from that model (warm start; "
                        "it must match the options)")
        ->type_name("METHOD|MODEL")
        ->capture_default_str();
    sub->add_option("--kmeans-iter", fit.kmeans_iter, "Lloyd iterations after k-means++ seeding")
        ->capture_default_str();
    sub->add_option("-o,--output", opt->output, "Write the model (JSON) to this file");
    sub->add_option("--responsibilities",
                    opt->responsibilities,
                    "Write per-row responsibilities, gate probabilities, expert and "
                    "log-likelihood to this CSV file");
    sub->add_flag("-q,--quiet", opt->quiet, "Print no summary (warnings still go to stderr)");

    sub->footer(std::string("Example:\n") + faithful_fit_example);
    sub->callback([opt]() { run_fit(*opt); });
}

void run_fit(const FitCommandOptions& o) {
    moekit::FitOptions options = o.fit;
    const std::optional<moekit::Model> warm_start = resolve_init(o.init, options);
    const moekit::CsvSpec spec = column_spec(o, options);
    moekit::validate(options, command);
    check_output_path(command, "--output", o.output);
    check_output_path(command, "--responsibilities", o.responsibilities);
    if (warm_start) check_warm_start(*warm_start, o.init, options, spec);

    const moekit::Dataset data = read_data(o.data, spec);
    const moekit::FitResult result =
        moekit::fit(data, options, warm_start ? &*warm_start : nullptr);

    // Outputs only after everything succeeded; each write is atomic.
    if (!o.output.empty()) {
        const moekit::FitRecord record = moekit::make_fit_record(result, options);
        moekit::save_model(o.output, result.model, &record);
    }
    if (!o.responsibilities.empty()) write_responsibilities(o.responsibilities, data, result);

    if (!o.quiet)
        print_fit_summary(std::cout, o.data == "-" ? "<stdin>" : o.data, data, options, result);
    for (const auto& warning : result.warnings)
        print_warning(warning);
}

} // namespace moekit::cli
