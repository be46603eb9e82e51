/// @file cmd_select.cpp
/// `moekit select`: CSV → moekit::select_model over a grid of candidates → a table sorted by
/// the criterion (standard output and --table CSV) and the selected model (--output).

#include "commands.hpp"
#include "interrupt.hpp"
#include "progress.hpp"
#include "summary.hpp"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>

namespace moekit::cli {
namespace {

constexpr const char* command = "moekit select";

/// "K=3 full constant": how a candidate is named in progress lines and messages.
std::string
candidate_name(moekit::Index k, moekit::CovarianceType covariance, moekit::GateKind gate) {
    return "K=" + std::to_string(k) + " " + std::string(moekit::to_string(covariance)) + " " +
           std::string(moekit::to_string(gate));
}

/// "BIC", "ICL" or "AIC".
std::string criterion_label(moekit::Criterion criterion) {
    std::string text(moekit::to_string(criterion));
    for (char& c : text)
        c = static_cast<char>(c - 'a' + 'A');
    return text;
}

std::string fixed(double value, int decimals) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
    return buffer;
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
std::string csv_field(const std::string& text) {
    if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
    std::string out = "\"";
    for (char c : text) {
        if (c == '"') out += '"';
        out += (c == '\r' || c == '\n') ? ' ' : c;
    }
    return out + "\"";
}

/// The --table CSV: one row per candidate in table order; spurious and failed candidates have an
/// empty rank, failed ones empty numbers too.
std::string table_csv(const moekit::SelectionTable& table) {
    std::ostringstream out;
    out << "rank,n_experts,covariance,gate,ok,spurious,log_likelihood,n_parameters,aic,bic,icl,"
           "normalized_entropy,min_share,converged,restarts,reached_best,interventions,error\n";
    int rank = 0;
    for (const auto& c : table.candidates) {
        auto number = [&c](double value) {
            return c.ok ? moekit::format_double(value) : std::string();
        };
        const bool ranked = c.ok && !c.spurious;
        out << (ranked ? std::to_string(++rank) : std::string()) << ',' << c.n_experts << ','
            << moekit::to_string(c.covariance) << ',' << moekit::to_string(c.gate) << ','
            << (c.ok ? "true" : "false") << ',' << (c.spurious ? "true" : "false") << ','
            << number(c.log_likelihood) << ','
            << (c.ok ? std::to_string(c.n_parameters) : std::string()) << ',' << number(c.aic)
            << ',' << number(c.bic) << ',' << number(c.icl) << ',' << number(c.normalized_entropy)
            << ',' << number(c.min_share) << ',' << (c.ok ? (c.converged ? "true" : "false") : "")
            << ',' << (c.ok ? std::to_string(c.restarts) : std::string()) << ','
            << (c.ok ? std::to_string(c.reached_best) : std::string()) << ','
            << (c.ok ? std::to_string(c.interventions) : std::string()) << ',' << csv_field(c.error)
            << '\n';
    }
    return out.str();
}

/// The table for humans: aligned columns, the selected row marked with '*', spurious candidates
/// after the ranked ones (rank '-'), failed candidates listed with their reason.
void print_selection(std::ostream& out, const moekit::SelectionTable& table) {
    const std::string criterion_name = criterion_label(table.criterion);
    std::vector<std::vector<std::string>> cells;
    cells.push_back({"rank",
                     "experts",
                     "covariance",
                     "gate",
                     "log-likelihood",
                     "n_parameters",
                     "BIC",
                     "ICL",
                     "AIC",
                     "entropy",
                     "min share",
                     "converged",
                     "at best"});
    int rank = 0;
    int n_spurious = 0;
    std::vector<const moekit::SelectionCandidate*> failed;
    for (const auto& c : table.candidates) {
        if (!c.ok) {
            failed.push_back(&c);
            continue;
        }
        std::string rank_text = "-";
        if (c.spurious) {
            ++n_spurious;
        } else {
            ++rank;
            rank_text = (rank == 1 ? "*" : " ") + std::to_string(rank);
        }
        cells.push_back({rank_text,
                         std::to_string(c.n_experts),
                         std::string(moekit::to_string(c.covariance)),
                         std::string(moekit::to_string(c.gate)),
                         fixed(c.log_likelihood, 4),
                         std::to_string(c.n_parameters),
                         fixed(c.bic, 4),
                         fixed(c.icl, 4),
                         fixed(c.aic, 4),
                         fixed(c.normalized_entropy, 4),
                         fixed(c.min_share, 4),
                         c.converged ? "yes" : "no",
                         std::to_string(c.reached_best) + "/" + std::to_string(c.restarts)});
    }
    out << "criterion: " << criterion_name << " (lower is better); " << rank + n_spurious << " of "
        << table.candidates.size() << " candidates fitted";
    if (n_spurious > 0)
        out << ", " << n_spurious << " spurious (an expert with less than "
            << fixed(100 * table.min_share, 1) << "% of the data; not selected)";
    out << '\n';
    std::vector<std::size_t> width(cells[0].size(), 0);
    for (const auto& row : cells)
        for (std::size_t c = 0; c < row.size(); ++c)
            width[c] = std::max(width[c], row[c].size());
    for (const auto& row : cells) {
        std::string line;
        for (std::size_t c = 0; c < row.size(); ++c) {
            if (c > 0) line += "  ";
            const std::string pad(width[c] - row[c].size(), ' ');
            // Words left-aligned, numbers right-aligned.
            const bool left = c == 2 || c == 3;
            line += left ? row[c] + pad : pad + row[c];
        }
        while (!line.empty() && line.back() == ' ')
            line.pop_back();
        out << line << '\n';
    }
    if (!failed.empty()) {
        out << "failed:\n";
        for (const auto* c : failed)
            out << "  " << candidate_name(c->n_experts, c->covariance, c->gate) << ": " << c->error
                << '\n';
    }
}

} // namespace

void setup_select(CLI::App& app) {
    auto opt = std::make_shared<SelectCommandOptions>();
    // Comparing maxima needs more than one start per candidate.
    opt->fit.restarts = 5;

    CLI::App* sub = app.add_subcommand(
        "select",
        "Fit every candidate (numbers of experts x covariance structures x gates) with restarts, "
        "rank them by BIC, ICL or AIC, and save the best model");
    add_data_options(*sub, *opt);
    sub->add_option("-k,--experts",
                    opt->experts,
                    "Numbers of experts to try: a range such as 1:6, one number, or a list such as "
                    "1,2,4")
        ->required()
        ->type_name("RANGE");
    sub->add_option("--covariance",
                    opt->covariances,
                    "Covariance structures to try, comma-separated (full, tied, diag, spherical)")
        ->delimiter(',')
        ->allow_extra_args(false)
        ->capture_default_str();
    sub->add_option("--gate",
                    opt->gates,
                    "Gates to try, comma-separated (constant, softmax); softmax uses --gate-inputs "
                    "(default: the expert inputs)")
        ->delimiter(',')
        ->allow_extra_args(false)
        ->capture_default_str();
    add_enum_option(*sub,
                    "--criterion",
                    opt->criterion,
                    {{"bic", moekit::Criterion::Bic},
                     {"icl", moekit::Criterion::Icl},
                     {"aic", moekit::Criterion::Aic}},
                    "Criterion to minimise: bic (-2L + p log n), icl (BIC + 2 x entropy of the "
                    "responsibilities) or aic (-2L + 2p)");
    sub->add_option("--min-share",
                    opt->min_share,
                    "A candidate whose best fit gives an expert less than this share of the data "
                    "is flagged spurious and not selected (flexmix's minprior); 0 disables")
        ->capture_default_str();
    add_estimation_options(*sub, *opt, false);
    sub->add_option("--table", opt->table, "Write the selection table to this CSV file");
    sub->add_option("-o,--output",
                    opt->output,
                    "Write the selected model (JSON, with its diagnostics and the selection table) "
                    "to this file");
    sub->add_flag("-q,--quiet", opt->quiet, "Print no table and no progress");
    sub->add_flag("-v,--verbose",
                  opt->verbose,
                  "Print one progress line per EM iteration and one per candidate on standard "
                  "error");
    sub->footer("Example:\n"
                "  moekit select data/NPreg.csv -y yn -x x,x2 --expert linear --experts 1:4 "
                "--restarts 5 --seed 1 --table npreg_select.csv -o npreg_best.json");
    sub->callback([opt]() { run_select(*opt); });
}

void run_select(const SelectCommandOptions& o) {
    moekit::FitOptions options = o.fit;
    resolve_init(command, o.init, options, false);

    moekit::SelectionGrid grid;
    grid.min_share = o.min_share;
    grid.n_experts = moekit::parse_expert_range(o.experts);
    grid.covariances.clear();
    for (const auto& word : o.covariances)
        grid.covariances.push_back(moekit::parse_covariance_type(word));
    grid.gates.clear();
    for (const auto& word : o.gates) {
        const moekit::GateKind gate = moekit::parse_gate_kind(word);
        if (gate == moekit::GateKind::Tree)
            moekit::throw_invalid_argument(command,
                                           "--gate",
                                           "'tree'",
                                           "must list constant and/or softmax",
                                           "Compare tree shapes with separate 'moekit fit --tree' "
                                           "runs.");
        if (gate == moekit::GateKind::Hash)
            moekit::throw_invalid_argument(command,
                                           "--gate",
                                           "'hash'",
                                           "must list constant and/or softmax",
                                           "Fit hash routing with 'moekit fit --hash-column COL'.");
        grid.gates.push_back(gate);
    }

    // Read the columns of the widest candidate: the gate inputs when a softmax gate is tried.
    moekit::FitOptions widest = options;
    widest.gate = std::find(grid.gates.begin(), grid.gates.end(), moekit::GateKind::Softmax) !=
                          grid.gates.end()
                      ? moekit::GateKind::Softmax
                      : moekit::GateKind::Constant;
    const moekit::CsvSpec spec = fit_column_spec(command, o, widest);
    widest.n_experts = 1;
    moekit::validate(widest, command);
    check_output_path(command, "--table", o.table);
    check_output_path(command, "--output", o.output);

    const moekit::Dataset data = read_data(o.data, spec);

    // Candidate labels in grid order, for the progress display.
    std::vector<std::string> labels;
    for (moekit::Index k : grid.n_experts)
        for (moekit::CovarianceType covariance : grid.covariances)
            for (moekit::GateKind gate : grid.gates)
                labels.push_back(candidate_name(k, covariance, gate));

    const Verbosity verbosity = verbosity_of(o.quiet, o.verbose);
    const InterruptGuard interrupt_guard;
    ProgressDisplay progress(verbosity, std::cerr, stderr_is_terminal());
    std::size_t done = 0;
    auto label = [&labels](std::size_t i) {
        return "candidate " + std::to_string(i + 1) + "/" + std::to_string(labels.size()) + " (" +
               labels[i] + "):";
    };
    progress.start(label(0));
    options.on_iteration = [&progress](const moekit::FitProgress& p) {
        progress.update(p);
        return interrupt_signal() == 0;
    };
    const moekit::SelectionResult result = moekit::select_model(
        data, options, grid, o.criterion, [&](const moekit::SelectionCandidate& c) {
            progress.clear();
            if (verbosity == Verbosity::Verbose) {
                std::cerr << "moekit: " << label(done) << ' '
                          << (c.ok ? "log-likelihood " + fixed(c.log_likelihood, 6) + ", " +
                                         criterion_label(o.criterion) + " " +
                                         fixed(moekit::criterion_value(c, o.criterion), 6)
                                   : "failed: " + c.error)
                          << '\n';
            }
            if (++done < labels.size()) progress.start(label(done));
        });
    progress.clear();

    if (!o.quiet) print_selection(std::cout, result.table);
    if (!result.found)
        moekit::throw_invalid_argument(command,
                                       "every candidate",
                                       "failed or spurious",
                                       "at least one candidate must fit without a spurious expert",
                                       "See the table; include fewer experts (K = 1 is never "
                                       "spurious) or lower --min-share.");

    // Outputs only after everything succeeded; each write is atomic.
    if (!o.table.empty()) moekit::write_file_atomic(o.table, table_csv(result.table));
    if (!o.output.empty()) {
        const moekit::FitRecord record = moekit::make_fit_record(result.best, result.best_options);
        moekit::save_model(o.output, result.best.model, &record, &result.best_diagnostics);
    }
    if (!o.quiet)
        std::cout << "selected: " << describe_model(result.best.model) << " ("
                  << criterion_label(o.criterion) << ' '
                  << fixed(moekit::criterion_value(result.table.candidates.front(), o.criterion), 6)
                  << ")\n";
    for (const auto& warning : result.best.warnings)
        print_warning("selected model: " + warning);
    if (interrupt_signal() != 0)
        print_note(std::string("interrupted by ") + signal_name(interrupt_signal()) +
                   ": the table holds the candidates fitted so far");
}

} // namespace moekit::cli
