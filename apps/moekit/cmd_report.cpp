/// @file cmd_report.cpp
/// `moekit report`: model file + CSV → the numbers of the report (diagnostics, responsibilities,
/// curves, ellipses; all through the library) → one self-contained HTML file (report_html.cpp).

#include "commands.hpp"
#include "report_html.hpp"

#include <Eigen/Cholesky>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <variant>

namespace moekit::cli {
namespace {

constexpr const char* command = "moekit report";
/// Points of the grid on which curves against one input are evaluated.
constexpr moekit::Index grid_points = 240;
/// Points of each ellipse.
constexpr int ellipse_points = 97;

std::vector<double> column(const moekit::Matrix& m, moekit::Index j) {
    return std::vector<double>(m.col(j).data(), m.col(j).data() + m.rows());
}

/// Index of `name` in `names`, or -1.
moekit::Index find_name(const std::vector<std::string>& names, const std::string& name) {
    const auto it = std::find(names.begin(), names.end(), name);
    return it == names.end() ? -1 : static_cast<moekit::Index>(it - names.begin());
}

/// The input the "one input" panel plots against: the only input of the model, else its only
/// gate input, else its only expert input; none when the model has no inputs or several of
/// both kinds.
std::optional<std::string> plotting_input(const moekit::Model& model) {
    std::vector<std::string> all = model.input_names;
    for (const auto& name : model.gate_input_names)
        if (find_name(all, name) < 0) all.push_back(name);
    if (all.size() == 1) return all[0];
    if (model.gate_input_names.size() == 1) return model.gate_input_names[0];
    if (model.input_names.size() == 1) return model.input_names[0];
    return std::nullopt;
}

/// Curves of every expert's mean and gate probability against one input u. When every input of
/// the model is u they are evaluated on a grid over the range of u; otherwise at the samples,
/// in order of u.
OneInputView one_input_view(const moekit::Model& model,
                            const moekit::Dataset& data,
                            const moekit::Matrix& gate,
                            const std::string& u_name) {
    OneInputView v;
    v.input_name = u_name;
    v.target_name = model.target_names[0];
    const moekit::Index xi = find_name(data.input_names, u_name);
    const moekit::Vector u =
        xi >= 0 ? moekit::Vector(data.x.col(xi))
                : moekit::Vector(data.z.col(find_name(data.gate_input_names, u_name)));
    v.u.assign(u.data(), u.data() + u.size());
    v.y = column(data.y, 0);

    // A hash gate routes by a key column that a grid over u does not have: its curves are drawn
    // at the samples.
    const bool inputs_are_u =
        !std::holds_alternative<moekit::HashGate>(model.gate) &&
        model.input_names.size() <= 1 && model.gate_input_names.size() <= 1 &&
        (model.input_names.empty() || model.input_names[0] == u_name) &&
        (model.gate_input_names.empty() || model.gate_input_names[0] == u_name);
    const moekit::Index k = model.n_experts();
    if (inputs_are_u) {
        const double lo = u.minCoeff();
        const double hi = u.maxCoeff();
        moekit::Matrix grid(grid_points, 1);
        for (moekit::Index i = 0; i < grid_points; ++i)
            grid(i, 0) =
                lo + (hi - lo) * static_cast<double>(i) / static_cast<double>(grid_points - 1);
        const moekit::Dataset at_grid = moekit::make_dataset(
            moekit::Matrix(grid_points, 0),
            model.input_names.empty() ? moekit::Matrix(grid_points, 0) : grid,
            model.gate_input_names.empty() ? moekit::Matrix(grid_points, 0) : grid);
        const moekit::Matrix g = moekit::gate_probabilities(model, at_grid);
        const std::vector<double> xs = column(grid, 0);
        for (moekit::Index j = 0; j < k; ++j) {
            v.means.push_back({xs, column(moekit::expert_mean(model.experts, at_grid, j), 0)});
            v.gates.push_back({xs, column(g, j)});
        }
        v.on_grid = true;
        return v;
    }
    std::vector<moekit::Index> order(static_cast<std::size_t>(u.size()));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(
        order.begin(), order.end(), [&u](moekit::Index a, moekit::Index b) { return u(a) < u(b); });
    auto sorted = [&order](const moekit::Vector& values) {
        std::vector<double> out;
        for (moekit::Index i : order)
            out.push_back(values(i));
        return out;
    };
    const std::vector<double> xs = sorted(u);
    for (moekit::Index j = 0; j < k; ++j) {
        v.means.push_back({xs, sorted(moekit::expert_mean(model.experts, data, j).col(0))});
        v.gates.push_back({xs, sorted(gate.col(j))});
    }
    v.on_grid = false;
    return v;
}

/// The data on the first two targets and, for each Gaussian expert, the curves
/// μ + r L (cos t, sin t) with L the Cholesky factor of the 2×2 (marginal) covariance: the
/// points at Mahalanobis distance r.
EllipseView ellipse_view(const moekit::Model& model, const moekit::Dataset& data) {
    EllipseView v;
    v.x_name = model.target_names[0];
    v.y_name = model.target_names[1];
    v.x = column(data.y, 0);
    v.y = column(data.y, 1);
    v.marginal = model.experts.n_outputs() > 2;
    for (moekit::Index k = 0; k < model.n_experts(); ++k) {
        const auto u = static_cast<std::size_t>(k);
        const moekit::Matrix mean = model.experts.coefficients[u].row(0).leftCols(2);
        const moekit::Matrix s = model.experts.covariances[u].covariance.topLeftCorner(2, 2);
        const moekit::Matrix l = Eigen::LLT<moekit::Matrix>(s).matrixL();
        for (double r : {1.0, 2.0}) {
            Curve c;
            for (int t = 0; t < ellipse_points; ++t) {
                const double angle = 2.0 * 3.14159265358979323846 * t / (ellipse_points - 1);
                const Eigen::Vector2d unit(std::cos(angle), std::sin(angle));
                const Eigen::Vector2d p = mean.transpose() + r * l * unit;
                c.x.push_back(p(0));
                c.y.push_back(p(1));
            }
            (r == 1.0 ? v.one_sigma : v.two_sigma).push_back(std::move(c));
        }
        v.centres.emplace_back(mean(0, 0), mean(0, 1));
    }
    return v;
}

/// The data of a one-target model without inputs and, on a grid over its range, each expert's
/// weighted density g_k p_k(y) (exp of log_joint) and the mixture density p(y).
DensityView density_view(const moekit::Model& model, const moekit::Dataset& data) {
    DensityView v;
    v.target_name = model.target_names[0];
    v.y = column(data.y, 0);
    v.weights.assign(data.weights.data(), data.weights.data() + data.weights.size());
    const double lo = data.y.col(0).minCoeff();
    const double hi = data.y.col(0).maxCoeff();
    const double pad = 0.08 * (hi - lo);
    moekit::Matrix grid(grid_points, 1);
    for (moekit::Index i = 0; i < grid_points; ++i)
        grid(i, 0) =
            lo - pad +
            (hi - lo + 2 * pad) * static_cast<double>(i) / static_cast<double>(grid_points - 1);
    const moekit::Dataset at_grid = moekit::make_dataset(grid);
    const moekit::Matrix joint = moekit::log_joint(model, at_grid);
    const moekit::Vector mixture = moekit::log_likelihood_samples(model, at_grid);
    const std::vector<double> xs = column(grid, 0);
    v.mixture = {xs, column(mixture.array().exp().matrix(), 0)};
    for (moekit::Index k = 0; k < model.n_experts(); ++k)
        v.components.push_back({xs, column(joint.col(k).array().exp().matrix(), 0)});
    return v;
}

} // namespace

void setup_report(CLI::App& app) {
    auto opt = std::make_shared<ReportCommandOptions>();
    opt->output = "-";
    CLI::App* sub = app.add_subcommand(
        "report",
        "Write one self-contained HTML report (tables and inline SVG pictures, no scripts) of a "
        "model on data: diagnostics, trace, expert sizes, responsibilities, curves or ellipses, "
        "the selection curve and the least certain samples");
    sub->add_option("model", opt->model, "Model file written by 'moekit fit' or 'moekit select'")
        ->required();
    sub->add_option("data",
                    opt->data,
                    "CSV file with the model's targets and inputs ('-' reads standard input)")
        ->required();
    sub->add_option("-o,--output", opt->output, "HTML file to write ('-': standard output)")
        ->capture_default_str();
    sub->add_option(
        "--title", opt->title, "Title of the report (default: 'moekit report: <model file>')");
    add_csv_options(*sub, opt->csv);
    sub->footer(std::string("Example:\n") + faithful_fit_example +
                "  moekit report faithful.json data/faithful.csv -o faithful_report.html");
    sub->callback([opt]() { run_report(*opt); });
}

void run_report(const ReportCommandOptions& o) {
    check_output_path(command, "--output", o.output);
    const moekit::ModelFile file = moekit::load_model(o.model);
    const moekit::Model& model = file.model;
    const moekit::Dataset data = read_data(o.data, model_csv_spec(model, o.csv, false));
    moekit::check_compatible(model, data, true, command);

    ReportData r;
    r.title = o.title.empty()
                  ? "moekit report: " + std::filesystem::path(o.model).filename().string()
                  : o.title;
    r.model_path = o.model;
    r.data_path = o.data == "-" ? "<stdin>" : o.data;
    r.version = MOEKIT_VERSION;
    r.model = &model;
    r.fit = file.fit;

    // Diagnostics on this data; the history and the selection come from the file (the fit's
    // own record when the file has no diagnostics object).
    r.diagnostics = moekit::diagnose(model, data);
    if (file.diagnostics && file.diagnostics->fit_history) {
        r.diagnostics.fit_history = file.diagnostics->fit_history;
    } else if (file.fit) {
        const moekit::FitRecord& f = *file.fit;
        r.diagnostics.fit_history = moekit::fit_history_diagnostics(f.trace,
                                                                    f.restart_log_likelihoods,
                                                                    f.best_restart,
                                                                    f.converged,
                                                                    false,
                                                                    f.iterations,
                                                                    {});
    }
    if (file.diagnostics && file.diagnostics->selection)
        r.diagnostics.selection = file.diagnostics->selection;

    const moekit::Responsibilities resp = moekit::e_step(model, data);
    r.responsibilities = moekit::responsibility_matrix(resp);
    r.gate = moekit::gate_probabilities(model, data);
    r.hard = moekit::hard_assignments(resp);
    r.uncertainty = moekit::classification_uncertainty(resp);
    r.log_lik = resp.log_norm;
    r.rows = sample_rows(data);
    r.y = data.y;

    if (const auto u = plotting_input(model)) r.one_input = one_input_view(model, data, r.gate, *u);
    if (model.experts.kind == moekit::ExpertKind::Gaussian && model.experts.n_outputs() >= 2)
        r.ellipses = ellipse_view(model, data);
    // The density panel evaluates the mixture on a grid of y; a hash gate's mixture depends on
    // each sample's key, so it has no such curve.
    if (model.input_names.empty() && model.gate_input_names.empty() &&
        !std::holds_alternative<moekit::HashGate>(model.gate) && model.experts.n_outputs() == 1)
        r.density = density_view(model, data);

    moekit::write_file_atomic(o.output, render_report_html(r));
}

} // namespace moekit::cli
