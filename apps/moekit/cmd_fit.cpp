/// @file cmd_fit.cpp
/// `moekit fit`: CSV → moekit::fit → model file, summary and (optionally) responsibilities.

#include "commands.hpp"
#include "interrupt.hpp"
#include "progress.hpp"
#include "summary.hpp"

#include <algorithm>
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
                                                   moekit::InitMethod::RandomLines,
                                                   moekit::InitMethod::Upcycle};

std::string init_method_words(const std::string& separator) {
    std::vector<std::string> words;
    for (moekit::InitMethod method : init_methods)
        words.emplace_back(moekit::to_string(method));
    return join(words, separator);
}

} // namespace

std::optional<moekit::Model> resolve_init(const std::string& command,
                                          const std::string& text,
                                          moekit::FitOptions& options,
                                          bool allow_model) {
    try {
        options.init = moekit::parse_init_method(text);
        return std::nullopt;
    } catch (const moekit::InvalidArgument&) {
        // Not a method word: a model file, if it looks like one.
    }
    if (!allow_model)
        moekit::throw_invalid_argument(command,
                                       "--init",
                                       "'" + text + "'",
                                       "must be one of " + init_method_words(", "),
                                       "Check the spelling (a model file cannot start candidates "
                                       "with different numbers of experts).");
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

namespace {

/// Columns in roles that must stay apart, checked before any data is read: a name listed twice
/// in one flag, a target that is also an expert or gate input (y would explain itself), and a
/// weights column that is also a target or an input.
void check_roles(const std::string& command, const moekit::CsvSpec& spec) {
    auto contains = [](const std::vector<std::string>& names, const std::string& name) {
        return std::find(names.begin(), names.end(), name) != names.end();
    };
    const std::pair<const std::vector<std::string>*, const char*> roles[] = {
        {&spec.targets, "--target"}, {&spec.inputs, "--inputs"}, {&spec.gate_inputs, "--gate-inputs"}};
    for (const auto& [names, flag] : roles)
        for (std::size_t i = 0; i < names->size(); ++i)
            if (std::find(names->begin(), names->begin() + static_cast<std::ptrdiff_t>(i), (*names)[i]) !=
                names->begin() + static_cast<std::ptrdiff_t>(i))
                moekit::throw_invalid_argument(command,
                                               flag,
                                               quoted_list(*names),
                                               "it lists '" + (*names)[i] + "' twice",
                                               "Name each column once.");
    for (const std::string& target : spec.targets) {
        if (contains(spec.inputs, target))
            moekit::throw_invalid_argument(command,
                                           "--inputs",
                                           quoted_list(spec.inputs),
                                           "the target '" + target +
                                               "' cannot also be an expert input (y would be "
                                               "predicted from itself)",
                                           "Remove '" + target + "' from --inputs or from --target.");
        if (contains(spec.gate_inputs, target))
            moekit::throw_invalid_argument(command,
                                           "--gate-inputs",
                                           quoted_list(spec.gate_inputs),
                                           "the target '" + target +
                                               "' cannot also be a gate input (the gate would "
                                               "see y)",
                                           "Remove '" + target + "' from --gate-inputs or from --target.");
    }
    if (!spec.key.empty() && contains(spec.targets, spec.key))
        moekit::throw_invalid_argument(command,
                                       "--hash-column",
                                       "'" + spec.key + "'",
                                       "the target '" + spec.key +
                                           "' cannot also be the routing key (the gate would see y)",
                                       "Route by a column that is not a target.");
    if (!spec.weights.empty() &&
        (contains(spec.targets, spec.weights) || contains(spec.inputs, spec.weights) ||
         contains(spec.gate_inputs, spec.weights)))
        moekit::throw_invalid_argument(command,
                                       "--weights",
                                       "'" + spec.weights + "'",
                                       "the weights column cannot also be a target or an input",
                                       "Give the sample weights in a column of their own.");
}

} // namespace

moekit::CsvSpec fit_column_spec(const std::string& command,
                                const FitInputOptions& o,
                                const moekit::FitOptions& options) {
    moekit::CsvSpec spec = make_csv_spec(o.csv);
    spec.targets = o.targets;
    spec.inputs = o.inputs;
    spec.gate_inputs = o.gate_inputs;
    spec.weights = o.weights;

    // A hash gate routes by its key column (read as text) and has no gate inputs.
    const bool hash = options.gate == moekit::GateKind::Hash;
    if (hash && o.hash_column.empty())
        moekit::throw_invalid_argument(command,
                                       "--hash-column",
                                       "missing",
                                       "a hash gate routes by the hash of a key column",
                                       "Name the key column with --hash-column COL.");
    if (!hash && !o.hash_column.empty())
        moekit::throw_invalid_argument(command,
                                       "--hash-column",
                                       "'" + o.hash_column + "'",
                                       "is only used with --gate hash (the gate is " +
                                           std::string(moekit::to_string(options.gate)) + ")",
                                       "Use --gate hash (or drop --gate) with --hash-column.");
    if (hash && !spec.gate_inputs.empty())
        moekit::throw_invalid_argument(command,
                                       "--gate-inputs",
                                       quoted_list(spec.gate_inputs),
                                       "a hash gate uses no gate inputs (it routes by the "
                                       "--hash-column key)",
                                       "Drop --gate-inputs, or use --gate softmax.");
    spec.key = o.hash_column;

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
    const bool gate_has_inputs = options.gate != moekit::GateKind::Constant && !hash;
    if (gate_has_inputs && spec.gate_inputs.empty())
        spec.gate_inputs = spec.inputs;
    if (gate_has_inputs && spec.gate_inputs.empty())
        moekit::throw_invalid_argument(command,
                                       "--gate-inputs",
                                       "empty",
                                       "a softmax or tree gate needs at least one input",
                                       "Name the gate's columns with --gate-inputs (or --inputs "
                                       "with --expert linear).");
    if (options.gate == moekit::GateKind::Constant && !spec.gate_inputs.empty())
        moekit::throw_invalid_argument(command,
                                       "--gate-inputs",
                                       quoted_list(spec.gate_inputs),
                                       "a constant gate uses no inputs",
                                       "Use --gate softmax for a gate that depends on inputs.");
    check_roles(command, spec);
    return spec;
}

namespace {

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
    if (const auto* hash = std::get_if<moekit::HashGate>(&model.gate); hash && hash->column != spec.key)
        mismatch("hash column", "'" + hash->column + "'", "--hash-column", "'" + spec.key + "'");
    if (const auto* tree = std::get_if<moekit::TreeGate>(&model.gate); tree && tree->branching != options.tree)
        mismatch("tree shape",
                 moekit::format_tree_shape(tree->branching),
                 "--tree",
                 moekit::format_tree_shape(options.tree));
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

} // namespace

void add_data_options(CLI::App& sub_app, FitInputOptions& o) {
    CLI::App* sub = &sub_app;
    sub->add_option("data", o.data, "CSV file with a header line ('-' reads standard input)")
        ->required();
    sub->add_option("-y,--target", o.targets, "Target columns y (comma-separated)")
        ->required()
        ->delimiter(',')
        ->allow_extra_args(false);
    sub->add_option("-x,--inputs",
                    o.inputs,
                    "Expert input columns x (comma-separated; needed by --expert linear)")
        ->delimiter(',')
        ->allow_extra_args(false);
    sub->add_option("--gate-inputs",
                    o.gate_inputs,
                    "Gate input columns z (comma-separated; --gate softmax only; default: the "
                    "expert inputs)")
        ->delimiter(',')
        ->allow_extra_args(false);
    sub->add_option("--weights",
                    o.weights,
                    "Column of sample (frequency) weights, finite and > 0; default: all 1");
    add_csv_options(*sub, o.csv);
}

void add_estimation_options(CLI::App& sub_app, FitInputOptions& o, bool allow_model) {
    CLI::App* sub = &sub_app;
    o.init = std::string(moekit::to_string(o.fit.init));
    add_enum_option(*sub,
                    "--expert",
                    o.fit.expert,
                    choices_of({moekit::ExpertKind::Gaussian, moekit::ExpertKind::Linear}),
                    "Expert family: 'gaussian' N(y; mu_k, Sigma_k) or 'linear' regression "
                    "N(y; W_k'(1,x), Sigma_k)");
    sub->add_option("--seed",
                    o.fit.seed,
                    "Base seed of the random initialisation (restart r uses its own stream)")
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
                // CLI11 would wrap "-1" around to 2^64 - 1.
                if (!text.empty() && text.front() == '-')
                    return "'" + text + "' is negative; the seed is a whole number >= 0";
                return {};
            },
            "",
            "seed"))
        ->capture_default_str();
    sub->add_option(
           "--restarts", o.fit.restarts, "Independent starts; the best log-likelihood wins")
        ->capture_default_str();
    sub->add_option("--max-iter", o.fit.max_iter, "EM iterations per start")->capture_default_str();
    sub->add_option("--tol",
                    o.fit.tol,
                    "Stop when the mean per-sample log-likelihood changes by less than this")
        ->capture_default_str();
    sub->add_option("--reg-covar",
                    o.fit.regularization.reg_covar,
                    "Ridge added to every covariance estimate, relative to each target's "
                    "variance")
        ->capture_default_str();
    sub->add_option("--min-expert-size",
                    o.fit.regularization.min_expert_size,
                    "An expert whose size sum_i w_i h_ik falls below this keeps its previous "
                    "parameters; <= 0: automatic (coefficients per target + 1)")
        ->capture_default_str();
    sub->add_option("--gate-l2",
                    o.fit.gate_options.gate_l2,
                    "L2 penalty on the softmax gate's coefficients (intercepts excluded)")
        ->capture_default_str();
    sub->add_option("--newton-steps",
                    o.fit.gate_options.newton_steps,
                    "Newton (IRLS) steps of the softmax gate per EM iteration")
        ->capture_default_str();
    sub->add_option("--init",
                    o.init,
                    "Initialisation: " + init_method_words(", ") +
                        " (auto: kmeans++ for Gaussian experts, lines for linear experts)" +
                        (allow_model ? ", or MODEL.json to start the first restart from that "
                                       "model (warm start; it must match the options)"
                                     : ""))
        ->type_name(allow_model ? "METHOD|MODEL" : "METHOD")
        ->capture_default_str();
    sub->add_option("--kmeans-iter", o.fit.kmeans_iter, "Lloyd iterations after k-means++ seeding")
        ->capture_default_str();
}

void setup_fit(CLI::App& app) {
    auto opt = std::make_shared<FitCommandOptions>();
    moekit::FitOptions& fit = opt->fit;

    CLI::App* sub = app.add_subcommand("fit",
                                       "Fit a mixture of experts p(y|x) = sum_k g_k(z) p_k(y|x) to "
                                       "a CSV file by EM or gradient ascent; print a summary and "
                                       "save the model");

    add_data_options(*sub, *opt);

    CLI::Option* experts = sub->add_option(
        "-k,--experts", fit.n_experts, "Number of experts K (>= 1); with --tree, the number of leaves (may be omitted)");
    add_enum_option(*sub,
                    "--gate",
                    fit.gate,
                    choices_of({moekit::GateKind::Constant,
                                moekit::GateKind::Softmax,
                                moekit::GateKind::Tree,
                                moekit::GateKind::Hash}),
                    "Gate: 'constant' mixing weights, 'softmax' (multinomial logit on z), 'tree' "
                    "(hierarchical mixture of experts: a tree of softmax gates, see --tree) or "
                    "'hash' (a fixed hash of a key column picks the expert, see --hash-column)");
    sub->add_option("--hash-column",
                    opt->hash_column,
                    "Key column of a hash gate, read as text (integers by value, other text by "
                    "its exact characters); implies --gate hash")
        ->type_name("COL");
    CLI::Option* tree = sub->add_option("--tree",
                    opt->tree,
                    "Shape of a tree gate: children per level from the root, e.g. 2x3 (2 children, "
                    "each with 3 experts: 6 experts); implies --gate tree")
        ->type_name("BxBx..");
    add_enum_option(*sub,
                    "--covariance",
                    fit.covariance,
                    choices_of({moekit::CovarianceType::Full,
                                moekit::CovarianceType::Tied,
                                moekit::CovarianceType::Diag,
                                moekit::CovarianceType::Spherical}),
                    "Structure of the experts' covariances");
    add_estimation_options(*sub, *opt, true);
    add_enum_option(*sub,
                    "--method",
                    fit.method,
                    choices_of({moekit::FitMethod::Auto, moekit::FitMethod::EM, moekit::FitMethod::Gradient}),
                    "Fitting method: 'em', 'gradient' (L-BFGS on the log-likelihood, or on the "
                    "squared error for meta-pi) or 'auto' (gradient for meta-pi and --top-k, "
                    "else EM)");
    add_enum_option(*sub,
                    "--variant",
                    fit.variant,
                    choices_of({moekit::Variant::Standard, moekit::Variant::MetaPi, moekit::Variant::Hard}),
                    "Model variant: 'standard' (maximum likelihood), 'meta-pi' (gate-weighted "
                    "mean trained on the squared error) or 'hard' (classification EM; prediction "
                    "from the top-1 expert; needs a softmax or tree gate)");
    sub->add_option("--top-k",
                    fit.top_k,
                    "Sparse gating: keep each sample's K most probable experts (1: Switch-style "
                    "routing; 0: dense); softmax gate, gradient method")
        ->type_name("K")
        ->capture_default_str();
    CLI::Option* balance_loss = add_enum_option(*sub,
                    "--balance-loss",
                    fit.balance_loss,
                    choices_of({moekit::BalanceLoss::Switch, moekit::BalanceLoss::Importance, moekit::BalanceLoss::Load}),
                    "Load-balancing loss of --top-k: 'switch' (K sum_k f_k P_k), 'importance' "
                    "(squared coefficient of variation of the gate mass) or 'load' (that of the "
                    "smooth load of noisy gating; needs --gate-noise)");
    sub->add_option("--balance-weight",
                    fit.balance_weight,
                    "Weight alpha of the load-balancing loss (--top-k only; 0: none)")
        ->capture_default_str();
    sub->add_option("--capacity-factor",
                    fit.capacity_factor,
                    "With --top-k, each expert takes at most C*n/K samples per pass, the overflow "
                    "is dropped and counted (0: no limit)")
        ->capture_default_str();
    sub->add_flag("--gate-noise",
                  fit.gate_noise,
                  "With --top-k, noisy gating (Shazeer et al.): learnt softplus noise on the gate "
                  "scores during training only; trains for exactly --max-iter passes");
    CLI::Option* upcycle_noise = sub->add_option("--upcycle-noise",
                    fit.upcycle_noise,
                    "--init upcycle: scale of the perturbation of each copy of the single "
                    "expert, in residual standard deviations")
        ->capture_default_str();
    sub->add_option("-o,--output", opt->output, "Write the model (JSON) to this file");
    sub->add_option("--responsibilities",
                    opt->responsibilities,
                    "Write per-row responsibilities, gate probabilities, expert and "
                    "log-likelihood to this CSV file");
    sub->add_flag("--json",
                  opt->json,
                  "Print the model file (with its fit and diagnostics objects) as JSON on standard "
                  "output instead of the summary");
    sub->add_flag("-q,--quiet",
                  opt->quiet,
                  "Print no summary and no progress (warnings still go to stderr)");
    sub->add_flag("-v,--verbose",
                  opt->verbose,
                  "Print one progress line per EM iteration on standard error, even when it is "
                  "not a terminal");

    sub->footer(std::string("Example:\n") + faithful_fit_example);
    sub->callback([opt, experts, tree, balance_loss, upcycle_noise]() {
        opt->experts_given = experts->count() > 0;
        opt->tree_given = tree->count() > 0;
        opt->balance_loss_given = balance_loss->count() > 0;
        opt->upcycle_noise_given = upcycle_noise->count() > 0;
        run_fit(*opt);
    });
}

void run_fit(const FitCommandOptions& o) {
    moekit::FitOptions options = o.fit;
    if (!o.hash_column.empty() && options.gate == moekit::GateKind::Constant)
        options.gate = moekit::GateKind::Hash; // --hash-column implies --gate hash
    if (o.tree_given || !o.tree.empty()) {
        if (options.gate == moekit::GateKind::Constant || options.gate == moekit::GateKind::Tree)
            options.gate = moekit::GateKind::Tree;
        else
            moekit::throw_invalid_argument(command, "--tree", "'" + o.tree + "'", "is only used with --gate tree",
                                           "Use --gate tree (or drop --gate) with --tree.");
        options.tree = moekit::parse_tree_shape(o.tree);
        if (!o.experts_given) {
            options.n_experts = 1;
            for (moekit::Index b : options.tree) options.n_experts *= b;
        }
    } else if (options.gate == moekit::GateKind::Tree) {
        moekit::throw_invalid_argument(command, "--tree", "missing", "--gate tree needs the tree's shape",
                                       "Add e.g. --tree 2x2.");
    }
    if (!o.experts_given && !o.tree_given && o.tree.empty())
        moekit::throw_invalid_argument(command, "--experts", "missing", "the number of experts is required",
                                       "Add -k K (or --tree for a tree gate).");
    const std::optional<moekit::Model> warm_start = resolve_init(command, o.init, options, true);
    // Flags that only mean something with another one (the library's own rules cover
    // --balance-weight and --capacity-factor, whose defaults are "off").
    if (o.balance_loss_given && options.top_k == 0)
        moekit::throw_invalid_argument(command, "--balance-loss", "'" + std::string(moekit::to_string(options.balance_loss)) + "'",
                                       "load balancing applies to sparse top-k gating", "Add --top-k.");
    if (o.upcycle_noise_given && options.init != moekit::InitMethod::Upcycle)
        moekit::throw_invalid_argument(command, "--upcycle-noise", moekit::format_number(options.upcycle_noise),
                                       "is only used with --init upcycle", "Add --init upcycle, or drop --upcycle-noise.");
    const moekit::CsvSpec spec = fit_column_spec(command, o, options);
    moekit::validate(options, command);
    check_output_path(command, "--output", o.output);
    check_output_path(command, "--responsibilities", o.responsibilities);
    if (warm_start) check_warm_start(*warm_start, o.init, options, spec);

    const moekit::Dataset data = read_data(o.data, spec);

    // SIGINT / SIGTERM from here on stop the fit after the current EM iteration; the best model
    // so far is saved (converged: false) and main() exits with interrupted_exit_code.
    // Progress on stderr (progress.hpp) shares the per-iteration hook.
    const InterruptGuard interrupt_guard;
    ProgressDisplay progress(verbosity_of(o.quiet, o.verbose), std::cerr, stderr_is_terminal());
    options.on_iteration = [&progress](const moekit::FitProgress& p) {
        progress.update(p);
        return interrupt_signal() == 0;
    };
    const moekit::FitResult result =
        moekit::fit(data, options, warm_start ? &*warm_start : nullptr);
    progress.clear();
    options.on_iteration = nullptr;
    const moekit::Diagnostics diagnostics = moekit::diagnose(result.model, data, &result);
    const moekit::FitRecord record = moekit::make_fit_record(result, options);

    // Outputs only after everything succeeded; each write is atomic.
    if (!o.output.empty()) moekit::save_model(o.output, result.model, &record, &diagnostics);
    if (!o.responsibilities.empty())
        write_responsibilities(o.responsibilities, result.model, data, result.responsibilities);

    if (o.json) {
        std::cout << moekit::model_to_json(result.model, &record, &diagnostics) << std::flush;
    } else if (!o.quiet) {
        print_fit_summary(std::cout, o.data == "-" ? "<stdin>" : o.data, data, options, result);
        print_diagnostics(std::cout, diagnostics);
    }
    for (const auto& warning : result.warnings)
        print_warning(warning);
    if (result.interrupted)
        print_note(std::string("interrupted by ") + signal_name(interrupt_signal()) +
                   (o.output.empty() ? std::string(": the best model so far is not saved (no --output)")
                                     : ": saved the best model so far to " + o.output +
                                           " (converged: false)"));
    else if (interrupt_signal() != 0) // after the last EM iteration: nothing was cut short
        print_note(std::string("interrupted by ") + signal_name(interrupt_signal()) +
                   " after the fit had finished: the outputs are complete");
}

} // namespace moekit::cli
