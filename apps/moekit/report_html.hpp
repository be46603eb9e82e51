#pragma once
/// @file report_html.hpp
/// The HTML report of `moekit report`: presentation only. Every number comes from the library
/// (cmd_report.cpp gathers them into ReportData); this file turns them into one self-contained
/// HTML page with inline CSS and SVG (no scripts, no external resources).

#include "moekit/moekit.hpp"

#include <optional>
#include <string>
#include <vector>

namespace moekit::cli {

/// A curve: points joined in order.
struct Curve {
    std::vector<double> x;
    std::vector<double> y;
};

/// The "one input" panel: the data against one input u, each expert's mean and the gate.
struct OneInputView {
    std::string input_name;   ///< u
    std::string target_name;  ///< the target plotted (the first)
    std::vector<double> u;    ///< n values of u
    std::vector<double> y;    ///< n values of the target
    std::vector<Curve> means; ///< K curves of E[y | x, expert k] against u
    std::vector<Curve> gates; ///< K curves of g_k against u
    /// True when the curves were evaluated on a grid of u (the model's inputs are all u);
    /// false when they join the values at the observed samples in order of u.
    bool on_grid = true;
};

/// The "two targets" panel of Gaussian experts: the data and each expert's ellipses.
struct EllipseView {
    std::string x_name; ///< first target
    std::string y_name; ///< second target
    std::vector<double> x;
    std::vector<double> y;
    std::vector<Curve> one_sigma; ///< K closed curves: Mahalanobis distance 1 from the mean
    std::vector<Curve> two_sigma; ///< K closed curves: distance 2
    std::vector<std::pair<double, double>> centres; ///< K means
    bool marginal = false; ///< q > 2: the ellipses are the marginals of the first two targets
};

/// The "one target" panel of a mixture without inputs (q = 1): a histogram of the data, stacked
/// by hard expert, with each expert's weighted density and the mixture density.
struct DensityView {
    std::string target_name;
    std::vector<double> y;         ///< n values
    std::vector<double> weights;   ///< n sample weights
    Curve mixture;                 ///< p(y) on a grid
    std::vector<Curve> components; ///< K curves g_k p_k(y) on the same grid
};

/// Everything the report shows.
struct ReportData {
    std::string title;
    std::string model_path;
    std::string data_path;
    std::string version; ///< moekit version that wrote the report
    const moekit::Model* model = nullptr;
    moekit::Diagnostics diagnostics; ///< on the report's data; history and selection from the file
    std::optional<moekit::FitRecord> fit; ///< the model file's fit record
    moekit::Matrix responsibilities;      ///< n×K
    moekit::Matrix gate;                  ///< n×K gate probabilities
    Eigen::VectorXi hard;                 ///< n hard experts (0-based)
    moekit::Vector uncertainty;           ///< n values 1 − max_k h_ik
    moekit::Vector log_lik;               ///< n per-sample log-likelihoods
    std::vector<long> rows;               ///< n CSV line numbers
    moekit::Matrix y;                     ///< n×q targets
    std::optional<OneInputView> one_input;
    std::optional<EllipseView> ellipses;
    std::optional<DensityView> density;
};

/// The whole HTML document.
std::string render_report_html(const ReportData& data);

/// Colour of expert k (0-based) in every picture: a fixed palette of 10 colours, then
/// generated hues. "#rrggbb".
std::string expert_colour(moekit::Index k);

/// An axis from `lo` to `hi`: about `target` "nice" ticks (1, 2 or 5 × 10^m), the range widened
/// to the outer ticks. Degenerate ranges are widened around the value.
struct NiceAxis {
    double lo = 0.0;
    double hi = 1.0;
    std::vector<double> ticks;
    double step = 1.0;
};
NiceAxis nice_axis(double lo, double hi, int target);

/// A tick label: as few digits as the step needs ("0.25", "1e+06", "-40").
std::string tick_label(double value, double step);

/// Escapes &, <, >, " and ' for HTML text and attributes.
std::string html_escape(const std::string& text);

} // namespace moekit::cli
