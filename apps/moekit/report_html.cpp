/// @file report_html.cpp
/// The HTML report: page layout, tables and SVG pictures (axes, points, curves, bars, heatmap)
/// drawn from the numbers in ReportData. Nothing here estimates anything.

#include "report_html.hpp"

#include "summary.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>

namespace moekit::cli {

namespace {

// ---------------------------------------------------------------------------------------------
// Text and numbers
// ---------------------------------------------------------------------------------------------

/// A number for tables: 6 significant digits; NaN shown as an en dash.
std::string num(double value) {
    if (std::isnan(value)) return "&ndash;";
    if (std::isinf(value)) return value > 0 ? "&infin;" : "&minus;&infin;";
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.6g", value);
    std::string text = buffer;
    if (!text.empty() && text[0] == '-') text = "&minus;" + text.substr(1);
    return text;
}

/// A number with a fixed number of decimals (log-likelihoods, criteria).
std::string fixed(double value, int decimals) {
    if (!std::isfinite(value)) return num(value);
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
    std::string text = buffer;
    if (!text.empty() && text[0] == '-') text = "&minus;" + text.substr(1);
    return text;
}

/// An opacity in [0, 1] with 3 decimals.
std::string opacity(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.3f", std::clamp(value, 0.0, 1.0));
    return buffer;
}

/// An SVG coordinate.
std::string coord(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.1f", value);
    return buffer;
}

std::string yes_no(bool value) {
    return value ? "<span class=\"ok\">yes</span>" : "<span class=\"bad\">no</span>";
}

std::string swatch(moekit::Index k) {
    return "<span class=\"swatch\" style=\"background:" + expert_colour(k) + "\"></span>";
}

std::string expert_label(moekit::Index k) {
    return swatch(k) + "expert " + std::to_string(k + 1);
}

// ---------------------------------------------------------------------------------------------
// SVG building blocks
// ---------------------------------------------------------------------------------------------

/// A plotting area inside an SVG: data coordinates → pixels.
struct Frame {
    double left = 0.0;
    double top = 0.0;
    double width = 0.0;
    double height = 0.0;
    NiceAxis x;
    NiceAxis y;

    double px(double v) const { return left + (v - x.lo) / (x.hi - x.lo) * width; }
    double py(double v) const { return top + height - (v - y.lo) / (y.hi - y.lo) * height; }
};

std::string svg_open(double width, double height, const std::string& label) {
    return "<svg class=\"plot\" viewBox=\"0 0 " + coord(width) + " " + coord(height) +
           "\" role=\"img\" aria-label=\"" + html_escape(label) + "\">\n";
}

std::string text_at(double x,
                    double y,
                    const std::string& text,
                    const std::string& cls,
                    const std::string& anchor = "middle") {
    return "<text x=\"" + coord(x) + "\" y=\"" + coord(y) + "\" class=\"" + cls +
           "\" text-anchor=\"" + anchor + "\">" + text + "</text>\n";
}

/// Grid lines, ticks, tick labels, axis titles and the frame.
std::string
axes(const Frame& f, const std::string& x_title, const std::string& y_title, bool x_labels = true) {
    std::string out;
    for (double t : f.y.ticks) {
        const double y = f.py(t);
        out += "<line class=\"grid\" x1=\"" + coord(f.left) + "\" x2=\"" + coord(f.left + f.width) +
               "\" y1=\"" + coord(y) + "\" y2=\"" + coord(y) + "\"/>\n";
        out += text_at(f.left - 8, y + 4, tick_label(t, f.y.step), "tick", "end");
    }
    for (double t : f.x.ticks) {
        const double x = f.px(t);
        out += "<line class=\"grid\" x1=\"" + coord(x) + "\" x2=\"" + coord(x) + "\" y1=\"" +
               coord(f.top) + "\" y2=\"" + coord(f.top + f.height) + "\"/>\n";
        out += "<line class=\"axis\" x1=\"" + coord(x) + "\" x2=\"" + coord(x) + "\" y1=\"" +
               coord(f.top + f.height) + "\" y2=\"" + coord(f.top + f.height + 5) + "\"/>\n";
        if (x_labels) out += text_at(x, f.top + f.height + 19, tick_label(t, f.x.step), "tick");
    }
    out += "<rect class=\"frame\" x=\"" + coord(f.left) + "\" y=\"" + coord(f.top) + "\" width=\"" +
           coord(f.width) + "\" height=\"" + coord(f.height) + "\"/>\n";
    if (!x_title.empty() && x_labels)
        out += text_at(
            f.left + f.width / 2, f.top + f.height + 40, html_escape(x_title), "axis-title");
    if (!y_title.empty()) {
        const double x = f.left - 58;
        const double y = f.top + f.height / 2;
        out += "<text class=\"axis-title\" text-anchor=\"middle\" transform=\"translate(" +
               coord(x) + "," + coord(y) + ") rotate(-90)\">" + html_escape(y_title) + "</text>\n";
    }
    return out;
}

/// A polyline through the finite points (broken at non-finite ones).
std::string polyline(const Frame& f,
                     const std::vector<double>& xs,
                     const std::vector<double>& ys,
                     const std::string& colour,
                     double width,
                     const std::string& extra = {}) {
    std::string out;
    std::string points;
    auto flush = [&]() {
        if (!points.empty())
            out += "<polyline fill=\"none\" stroke=\"" + colour + "\" stroke-width=\"" +
                   coord(width) + "\" stroke-linejoin=\"round\" stroke-linecap=\"round\" " + extra +
                   " points=\"" + points + "\"/>\n";
        points.clear();
    };
    for (std::size_t i = 0; i < xs.size() && i < ys.size(); ++i) {
        if (!std::isfinite(xs[i]) || !std::isfinite(ys[i])) {
            flush();
            continue;
        }
        points += coord(f.px(xs[i])) + "," + coord(f.py(ys[i])) + " ";
    }
    flush();
    return out;
}

/// A clip path restricting drawings to the plotting area of `f`.
std::string clip_path(const std::string& id, const Frame& f) {
    return "<clipPath id=\"" + id + "\"><rect x=\"" + coord(f.left) + "\" y=\"" + coord(f.top) +
           "\" width=\"" + coord(f.width) + "\" height=\"" + coord(f.height) + "\"/></clipPath>\n";
}

/// Range of finite values, or {0, 1}.
std::pair<double, double> finite_range(const std::vector<double>& values) {
    double lo = std::numeric_limits<double>::infinity();
    double hi = -lo;
    for (double v : values)
        if (std::isfinite(v)) {
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
    if (!(lo <= hi)) return {0.0, 1.0};
    return {lo, hi};
}

/// A legend row of coloured entries: (label, colour, style) where style is "dot", "line" or
/// "dash".
std::string legend(double x,
                   double y,
                   const std::vector<std::tuple<std::string, std::string, std::string>>& items) {
    std::string out;
    double cx = x;
    for (const auto& [label, colour, style] : items) {
        if (style == "dot") {
            out += "<circle cx=\"" + coord(cx + 6) + "\" cy=\"" + coord(y - 4) +
                   "\" r=\"5\" fill=\"" + colour + "\"/>\n";
        } else {
            out += "<line x1=\"" + coord(cx) + "\" x2=\"" + coord(cx + 22) + "\" y1=\"" +
                   coord(y - 4) + "\" y2=\"" + coord(y - 4) + "\" stroke=\"" + colour +
                   "\" stroke-width=\"2.5\"" +
                   (style == "dash" ? " stroke-dasharray=\"6 4\"" : "") + "/>\n";
        }
        const double offset = style == "dot" ? 16 : 28;
        out += text_at(cx + offset, y, html_escape(label), "legend", "start");
        cx += offset + 7.5 * static_cast<double>(label.size()) + 22;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Pictures
// ---------------------------------------------------------------------------------------------

std::string figure(const std::string& title, const std::string& svg, const std::string& caption) {
    return "<figure>\n<figcaption><strong>" + title + "</strong>" +
           (caption.empty() ? std::string() : "<span>" + caption + "</span>") + "</figcaption>\n" +
           svg + "</figure>\n";
}

/// Log-likelihood after each E-step, and the increase per iteration on a log scale.
std::string trace_figures(const std::vector<double>& trace) {
    if (trace.size() < 2) return {};
    const double width = 520;
    const double height = 300;
    std::vector<double> iterations(trace.size());
    std::iota(iterations.begin(), iterations.end(), 0.0);

    Frame f{78, 16, width - 100, height - 72, {}, {}};
    const auto [ylo, yhi] = finite_range(trace);
    f.x = nice_axis(0, static_cast<double>(trace.size() - 1), 6);
    f.y = nice_axis(ylo, yhi, 5);
    std::string svg = svg_open(width, height, "log-likelihood trace");
    svg += axes(f, "EM iteration", "log-likelihood");
    svg += polyline(f, iterations, trace, "#1f4e79", 2.2);
    for (std::size_t t = 0; t < trace.size(); ++t)
        if (trace.size() <= 80 || t + 1 == trace.size())
            svg += "<circle cx=\"" + coord(f.px(iterations[t])) + "\" cy=\"" +
                   coord(f.py(trace[t])) + "\" r=\"2.6\" fill=\"#1f4e79\"/>\n";
    svg += "</svg>\n";
    std::string out = figure(
        "Log-likelihood trace", svg, "after each E-step of the winning start (0 = initial model)");

    // Increase per iteration, log10 scale: how fast EM converged; decreases in red.
    std::vector<double> steps;
    std::vector<double> change;
    std::vector<std::pair<double, double>> decreases;
    for (std::size_t t = 1; t < trace.size(); ++t) {
        const double d = trace[t] - trace[t - 1];
        steps.push_back(static_cast<double>(t));
        change.push_back(d > 0 ? std::log10(d) : std::numeric_limits<double>::quiet_NaN());
        if (d < 0) decreases.emplace_back(static_cast<double>(t), std::log10(-d));
    }
    std::vector<double> all = change;
    for (const auto& p : decreases)
        all.push_back(p.second);
    const auto [clo, chi] = finite_range(all);
    Frame g{78,
            16,
            width - 100,
            height - 72,
            nice_axis(1, static_cast<double>(trace.size() - 1), 6),
            nice_axis(clo, chi, 5)};
    std::string svg2 = svg_open(width, height, "increase of the log-likelihood per iteration");
    svg2 += axes(g, "EM iteration", "log10 increase");
    svg2 += polyline(g, steps, change, "#2f7d4f", 2.2);
    for (std::size_t t = 0; t < steps.size(); ++t)
        if (std::isfinite(change[t]) && steps.size() <= 80)
            svg2 += "<circle cx=\"" + coord(g.px(steps[t])) + "\" cy=\"" + coord(g.py(change[t])) +
                    "\" r=\"2.4\" fill=\"#2f7d4f\"/>\n";
    for (const auto& [t, v] : decreases)
        svg2 += "<circle cx=\"" + coord(g.px(t)) + "\" cy=\"" + coord(g.py(v)) +
                "\" r=\"4\" fill=\"none\" stroke=\"#c62828\" stroke-width=\"2\"/>\n";
    svg2 += "</svg>\n";
    out += figure(
        "Convergence",
        svg2,
        decreases.empty()
            ? "log10 of L<sub>t</sub> &minus; L<sub>t&minus;1</sub>: a straight decline is linear "
              "convergence"
            : "log10 |L<sub>t</sub> &minus; L<sub>t&minus;1</sub>|; red rings mark decreases");
    return out;
}

/// Effective size, gate mass and hard size of each expert as horizontal bars.
std::string sizes_figure(const moekit::Diagnostics& d) {
    const auto k = static_cast<moekit::Index>(d.experts.size());
    const double row = 54;
    const double width = 520;
    const double height = 64 + row * static_cast<double>(k);
    double top = 0.0;
    for (const auto& e : d.experts)
        top = std::max({top, e.effective_size, e.gate_mass, e.hard_size});
    Frame f{92, 30, width - 120, row * static_cast<double>(k), nice_axis(0, top, 5), NiceAxis{}};
    f.y.lo = 0;
    f.y.hi = static_cast<double>(k);
    std::string svg = svg_open(width, height, "expert sizes");
    for (double t : f.x.ticks) {
        const double x = f.px(t);
        svg += "<line class=\"grid\" x1=\"" + coord(x) + "\" x2=\"" + coord(x) + "\" y1=\"" +
               coord(f.top) + "\" y2=\"" + coord(f.top + f.height) + "\"/>\n";
        svg += text_at(x, f.top + f.height + 18, tick_label(t, f.x.step), "tick");
    }
    for (moekit::Index j = 0; j < k; ++j) {
        const auto& e = d.experts[static_cast<std::size_t>(j)];
        const std::string colour = expert_colour(j);
        const double y0 = f.top + row * static_cast<double>(j) + 7;
        const double bar = 12;
        auto bar_at =
            [&](double y, double value, const std::string& style, const std::string& label) {
                std::string out = "<rect x=\"" + coord(f.left) + "\" y=\"" + coord(y) +
                                  "\" width=\"" + coord(std::max(0.0, f.px(value) - f.left)) +
                                  "\" height=\"" + coord(bar) + "\" " + style + "><title>" + label +
                                  " " + num(value) + "</title></rect>\n";
                out += text_at(f.px(value) + 5, y + bar - 2, num(value), "bar-value", "start");
                return out;
            };
        svg += bar_at(y0, e.effective_size, "fill=\"" + colour + "\"", "effective size");
        svg += bar_at(y0 + bar + 1,
                      e.gate_mass,
                      "fill=\"" + colour + "\" fill-opacity=\"0.45\"",
                      "gate mass");
        svg += bar_at(y0 + 2 * (bar + 1),
                      e.hard_size,
                      "fill=\"white\" stroke=\"" + colour + "\" stroke-width=\"1.5\"",
                      "hard size");
        svg += text_at(f.left - 10, y0 + 25, "expert " + std::to_string(j + 1), "label", "end");
    }
    svg += "<line class=\"axis\" x1=\"" + coord(f.left) + "\" x2=\"" + coord(f.left) + "\" y1=\"" +
           coord(f.top) + "\" y2=\"" + coord(f.top + f.height) + "\"/>\n";
    svg += legend(f.left,
                  18,
                  {{"effective size", "#555", "dot"},
                   {"gate mass", "#aaa", "dot"},
                   {"hard size", "#ddd", "dot"}});
    svg += "</svg>\n";
    return figure("Expert sizes",
                  svg,
                  "effective size &Sigma;<sub>i</sub> w<sub>i</sub>h<sub>ik</sub>, gate mass "
                  "&Sigma;<sub>i</sub> w<sub>i</sub>g<sub>k</sub>(z<sub>i</sub>), samples whose "
                  "hard expert is k");
}

/// The criterion against the number of experts, one curve per covariance and gate.
std::string criterion_figure(const moekit::SelectionTable& table) {
    std::map<std::string, std::vector<std::tuple<double, double, bool>>> series;
    std::vector<std::string> order;
    std::vector<double> xs;
    std::vector<double> ys;
    for (const auto& c : table.candidates) {
        if (!c.ok) continue;
        const std::string name = std::string(moekit::to_string(c.covariance)) + ", " +
                                 std::string(moekit::to_string(c.gate));
        if (series.find(name) == series.end()) order.push_back(name);
        const double value = moekit::criterion_value(c, table.criterion);
        series[name].emplace_back(static_cast<double>(c.n_experts), value, c.spurious);
        xs.push_back(static_cast<double>(c.n_experts));
        ys.push_back(value);
    }
    if (xs.empty()) return {};
    std::string criterion(moekit::to_string(table.criterion));
    for (char& ch : criterion)
        ch = static_cast<char>(ch - 'a' + 'A');
    const double width = 520;
    const double height = 300;
    const auto [xlo, xhi] = finite_range(xs);
    const auto [ylo, yhi] = finite_range(ys);
    Frame f{78,
            34,
            width - 100,
            height - 90,
            nice_axis(xlo, xhi, std::max(2, static_cast<int>(xhi - xlo) + 1)),
            nice_axis(ylo, yhi, 5)};
    // Whole numbers of experts only.
    f.x.ticks.erase(std::remove_if(f.x.ticks.begin(),
                                   f.x.ticks.end(),
                                   [](double t) { return t != std::floor(t); }),
                    f.x.ticks.end());
    static const char* palette[] = {
        "#1f2937", "#b45309", "#0f766e", "#7c3aed", "#be123c", "#4d7c0f", "#1d4ed8", "#a16207"};
    std::string svg = svg_open(width, height, criterion + " against the number of experts");
    svg += axes(f, "number of experts K", criterion + " (lower is better)");
    std::vector<std::tuple<std::string, std::string, std::string>> items;
    for (std::size_t s = 0; s < order.size(); ++s) {
        auto points = series[order[s]];
        std::sort(points.begin(), points.end());
        std::vector<double> px;
        std::vector<double> py;
        const std::string colour = palette[s % 8];
        for (const auto& [x, y, is_spurious] : points) {
            if (is_spurious) {
                // Spurious fits are shown hollow and left off the line.
                svg += "<circle cx=\"" + coord(f.px(x)) + "\" cy=\"" + coord(f.py(y)) +
                       "\" r=\"4.5\" fill=\"white\" stroke=\"" + colour +
                       "\" stroke-width=\"1.8\"><title>spurious</title></circle>\n";
                continue;
            }
            px.push_back(x);
            py.push_back(y);
        }
        svg += polyline(f, px, py, colour, 2, s >= 8 ? "stroke-dasharray=\"6 4\"" : "");
        for (std::size_t i = 0; i < px.size(); ++i)
            svg += "<circle cx=\"" + coord(f.px(px[i])) + "\" cy=\"" + coord(f.py(py[i])) +
                   "\" r=\"3.5\" fill=\"" + colour + "\"/>\n";
        items.emplace_back(order[s], colour, "line");
    }
    // The selected candidate (the table's first) gets a ring.
    const auto& best = table.candidates.front();
    if (best.ok && !best.spurious) {
        const double bx = f.px(static_cast<double>(best.n_experts));
        const double by = f.py(moekit::criterion_value(best, table.criterion));
        svg += "<circle cx=\"" + coord(bx) + "\" cy=\"" + coord(by) +
               "\" r=\"9\" fill=\"none\" stroke=\"#c62828\" stroke-width=\"2.2\"/>\n";
        svg += text_at(bx + 12, by + 22, "selected", "annotation", "start");
    }
    svg += legend(f.left, 20, items);
    svg += "</svg>\n";
    return figure("Model selection",
                  svg,
                  criterion +
                      " of every candidate fitted by <code>moekit select</code>; hollow: spurious "
                      "(an expert with less than " +
                      num(100 * table.min_share) + "% of the data)");
}

/// Points coloured by hard expert (drawn in a random-looking but fixed order so no expert hides
/// another).
std::string scatter(const Frame& f,
                    const std::vector<double>& xs,
                    const std::vector<double>& ys,
                    const Eigen::VectorXi& hard,
                    double radius) {
    std::string out = "<g fill-opacity=\"0.72\" stroke=\"white\" stroke-width=\"0.6\">\n";
    const std::size_t n = xs.size();
    // A fixed permutation (multiplicative stride) interleaves the experts.
    std::size_t stride = 7919 % std::max<std::size_t>(n, 1);
    while (n > 1 && std::gcd(stride, n) != 1)
        ++stride;
    for (std::size_t j = 0; j < n; ++j) {
        const std::size_t i = n > 1 ? (j * stride) % n : j;
        if (!std::isfinite(xs[i]) || !std::isfinite(ys[i])) continue;
        out += "<circle cx=\"" + coord(f.px(xs[i])) + "\" cy=\"" + coord(f.py(ys[i])) + "\" r=\"" +
               coord(radius) + "\" fill=\"" + expert_colour(hard(static_cast<moekit::Index>(i))) +
               "\"/>\n";
    }
    return out + "</g>\n";
}

std::string
one_input_figure(const OneInputView& v, const Eigen::VectorXi& hard, const moekit::Model& model) {
    const double width = 1040;
    const double top_height = 400;
    const double gate_height = 170;
    const double height = top_height + gate_height + 120;
    std::vector<double> all_y = v.y;
    for (const auto& c : v.means)
        all_y.insert(all_y.end(), c.y.begin(), c.y.end());
    const auto [ulo, uhi] = finite_range(v.u);
    const auto [ylo, yhi] = finite_range(all_y);
    Frame f{86, 40, width - 120, top_height, nice_axis(ulo, uhi, 8), nice_axis(ylo, yhi, 6)};
    Frame g{86, 40 + top_height + 26, width - 120, gate_height, f.x, nice_axis(0, 1, 4)};
    std::string svg =
        svg_open(width, height, "data, expert means and gate against " + v.input_name);
    svg += clip_path("clip-one", f);
    svg += axes(f, "", v.target_name, false);
    svg += scatter(f, v.u, v.y, hard, 3.6);
    svg += "<g clip-path=\"url(#clip-one)\">\n";
    for (std::size_t k = 0; k < v.means.size(); ++k) {
        svg += polyline(f, v.means[k].x, v.means[k].y, "white", 6.5);
        svg += polyline(
            f, v.means[k].x, v.means[k].y, expert_colour(static_cast<moekit::Index>(k)), 3);
    }
    svg += "</g>\n";
    svg += axes(g, v.input_name, "gate g\xE2\x82\x96");
    for (std::size_t k = 0; k < v.gates.size(); ++k)
        svg += polyline(
            g, v.gates[k].x, v.gates[k].y, expert_colour(static_cast<moekit::Index>(k)), 2.6);
    std::vector<std::tuple<std::string, std::string, std::string>> items;
    for (moekit::Index k = 0; k < model.n_experts(); ++k)
        items.emplace_back("expert " + std::to_string(k + 1), expert_colour(k), "line");
    svg += legend(f.left, 24, items);
    svg += "</svg>\n";
    const std::string how = v.on_grid ? "evaluated on a grid of " + html_escape(v.input_name)
                                      : "at the observed samples, joined in order of " +
                                            html_escape(v.input_name) +
                                            " (the model has other inputs too)";
    return figure(
        "Data, experts and gate against " + html_escape(v.input_name),
        svg,
        "points coloured by hard expert; lines: each expert's mean E[y | x, k] (top) and the gate "
        "probabilities g<sub>k</sub> (bottom), " +
            how);
}

std::string ellipse_figure(const EllipseView& v, const Eigen::VectorXi& hard, moekit::Index k) {
    const double width = 1040;
    const double height = 560;
    std::vector<double> xs = v.x;
    std::vector<double> ys = v.y;
    for (const auto& c : v.two_sigma) {
        xs.insert(xs.end(), c.x.begin(), c.x.end());
        ys.insert(ys.end(), c.y.begin(), c.y.end());
    }
    const auto [xlo, xhi] = finite_range(xs);
    const auto [ylo, yhi] = finite_range(ys);
    Frame f{86, 40, width - 120, height - 110, nice_axis(xlo, xhi, 8), nice_axis(ylo, yhi, 6)};
    std::string svg = svg_open(width, height, "data and expert ellipses");
    svg += axes(f, v.x_name, v.y_name);
    svg += scatter(f, v.x, v.y, hard, 3.6);
    for (std::size_t j = 0; j < v.one_sigma.size(); ++j) {
        const std::string colour = expert_colour(static_cast<moekit::Index>(j));
        svg +=
            polyline(f, v.two_sigma[j].x, v.two_sigma[j].y, colour, 2, "stroke-dasharray=\"7 5\"");
        svg += polyline(f, v.one_sigma[j].x, v.one_sigma[j].y, "white", 5.5);
        svg += polyline(f, v.one_sigma[j].x, v.one_sigma[j].y, colour, 2.6);
        const double cx = f.px(v.centres[j].first);
        const double cy = f.py(v.centres[j].second);
        svg += "<path d=\"M" + coord(cx - 7) + " " + coord(cy) + "h14M" + coord(cx) + " " +
               coord(cy - 7) + "v14\" stroke=\"#111\" stroke-width=\"2.2\"/>\n";
    }
    std::vector<std::tuple<std::string, std::string, std::string>> items;
    for (moekit::Index j = 0; j < k; ++j)
        items.emplace_back("expert " + std::to_string(j + 1), expert_colour(j), "line");
    items.emplace_back("1\xCF\x83", "#555", "line");
    items.emplace_back("2\xCF\x83", "#555", "dash");
    svg += legend(f.left, 24, items);
    svg += "</svg>\n";
    return figure(
        "Data and expert ellipses",
        svg,
        std::string(
            "points coloured by hard expert; each expert's mean (cross) and the ellipses at "
            "Mahalanobis distance 1 (solid) and 2 (dashed)") +
            (v.marginal ? "; marginals of the first two targets" : ""));
}

/// Final log-likelihood of every start, the winner ringed.
std::string restarts_figure(const std::vector<double>& finals,
                            int best,
                            const moekit::FitHistoryDiagnostics& h) {
    if (finals.size() < 2) return {};
    const double width = 520;
    const double height = 300;
    std::vector<double> xs;
    std::vector<double> ys;
    for (std::size_t r = 0; r < finals.size(); ++r) {
        xs.push_back(static_cast<double>(r + 1));
        ys.push_back(finals[r]);
    }
    const auto [ylo, yhi] = finite_range(ys);
    Frame f{78,
            16,
            width - 100,
            height - 72,
            nice_axis(1,
                      static_cast<double>(finals.size()),
                      std::min<int>(10, static_cast<int>(finals.size()))),
            nice_axis(ylo, yhi, 5)};
    f.x.ticks.erase(std::remove_if(f.x.ticks.begin(),
                                   f.x.ticks.end(),
                                   [](double t) { return t != std::floor(t) || t < 1; }),
                    f.x.ticks.end());
    std::string svg = svg_open(width, height, "final log-likelihood of every start");
    svg += axes(f, "start", "final log-likelihood");
    for (std::size_t r = 0; r < finals.size(); ++r) {
        if (!std::isfinite(ys[r])) {
            svg += text_at(f.px(xs[r]), f.top + f.height - 6, "\xC3\x97", "annotation");
            continue;
        }
        svg += "<line x1=\"" + coord(f.px(xs[r])) + "\" x2=\"" + coord(f.px(xs[r])) + "\" y1=\"" +
               coord(f.top + f.height) + "\" y2=\"" + coord(f.py(ys[r])) +
               "\" stroke=\"#c9d3df\" stroke-width=\"2\"/>\n";
        svg += "<circle cx=\"" + coord(f.px(xs[r])) + "\" cy=\"" + coord(f.py(ys[r])) +
               "\" r=\"4.5\" fill=\"#1f4e79\"/>\n";
    }
    if (best >= 0 && static_cast<std::size_t>(best) < finals.size() &&
        std::isfinite(finals[static_cast<std::size_t>(best)]))
        svg += "<circle cx=\"" + coord(f.px(xs[static_cast<std::size_t>(best)])) + "\" cy=\"" +
               coord(f.py(ys[static_cast<std::size_t>(best)])) +
               "\" r=\"9\" fill=\"none\" stroke=\"#c62828\" stroke-width=\"2.2\"/>\n";
    svg += "</svg>\n";
    return figure(
        "Restarts",
        svg,
        std::to_string(h.restarts.reached_best) + " of " + std::to_string(h.restarts.count) +
            " starts reached the best log-likelihood (ringed: the winner; &times;: failed)");
}

/// Histogram of one target stacked by hard expert, with the weighted expert densities and the
/// mixture density.
std::string density_figure(const DensityView& v, const Eigen::VectorXi& hard, moekit::Index k) {
    const double width = 1040;
    const double height = 440;
    const auto [lo, hi] = finite_range(v.mixture.x);
    const std::size_t n_bins = std::clamp<std::size_t>(
        static_cast<std::size_t>(std::sqrt(static_cast<double>(v.y.size())) * 2), 10, 60);
    const auto [dlo, dhi] = finite_range(v.y);
    const double bin = (dhi - dlo) / static_cast<double>(n_bins);
    double total = 0;
    for (double w : v.weights)
        total += w;
    // heights[b][k]: weighted count of hard expert k in bin b, as a density.
    std::vector<std::vector<double>> heights(n_bins,
                                             std::vector<double>(static_cast<std::size_t>(k), 0.0));
    for (std::size_t i = 0; i < v.y.size(); ++i) {
        const auto b =
            std::min(n_bins - 1, static_cast<std::size_t>(bin > 0 ? (v.y[i] - dlo) / bin : 0));
        heights[b][static_cast<std::size_t>(hard(static_cast<moekit::Index>(i)))] +=
            v.weights[i] / (total * (bin > 0 ? bin : 1));
    }
    double top = 0;
    for (const auto& h : heights)
        top = std::max(top, std::accumulate(h.begin(), h.end(), 0.0));
    top = std::max(top, finite_range(v.mixture.y).second);
    Frame f{86, 40, width - 120, height - 100, nice_axis(lo, hi, 8), nice_axis(0, top, 5)};
    std::string svg = svg_open(width, height, "histogram and densities of " + v.target_name);
    svg += axes(f, v.target_name, "density");
    for (std::size_t b = 0; b < n_bins; ++b) {
        double base = 0;
        for (moekit::Index j = 0; j < k; ++j) {
            const double h = heights[b][static_cast<std::size_t>(j)];
            if (h <= 0) continue;
            const double x0 = f.px(dlo + bin * static_cast<double>(b));
            const double x1 = f.px(dlo + bin * static_cast<double>(b + 1));
            svg += "<rect x=\"" + coord(x0) + "\" y=\"" + coord(f.py(base + h)) + "\" width=\"" +
                   coord(x1 - x0) + "\" height=\"" + coord(f.py(base) - f.py(base + h)) +
                   "\" fill=\"" + expert_colour(j) +
                   "\" fill-opacity=\"0.35\" stroke=\"white\"/>\n";
            base += h;
        }
    }
    svg += polyline(f, v.mixture.x, v.mixture.y, "#9aa3ae", 6, "stroke-opacity=\"0.7\"");
    for (moekit::Index j = 0; j < k; ++j)
        svg += polyline(f,
                        v.components[static_cast<std::size_t>(j)].x,
                        v.components[static_cast<std::size_t>(j)].y,
                        expert_colour(j),
                        2.6);
    std::vector<std::tuple<std::string, std::string, std::string>> items;
    for (moekit::Index j = 0; j < k; ++j)
        items.emplace_back("expert " + std::to_string(j + 1), expert_colour(j), "line");
    items.emplace_back("mixture", "#9aa3ae", "line");
    svg += legend(f.left, 24, items);
    svg += "</svg>\n";
    return figure("Data and densities of " + html_escape(v.target_name),
                  svg,
                  "histogram stacked by hard expert; curves: each expert's weighted density "
                  "g<sub>k</sub>p<sub>k</sub>(y) and "
                  "the mixture density p(y)");
}

/// The best candidates of a selection, with their distance to the selected one.
std::string top_candidates(const moekit::SelectionTable& table) {
    std::string criterion(moekit::to_string(table.criterion));
    for (char& ch : criterion)
        ch = static_cast<char>(ch - 'a' + 'A');
    std::string out = "<figure>\n<figcaption><strong>Best candidates</strong><span>by " +
                      criterion +
                      "; &Delta; is the difference to the selected model</span></figcaption>\n"
                      "<table class=\"data\">\n<thead><tr><th>rank</th><th>K</th><th "
                      "class=\"name\">covariance</th>"
                      "<th class=\"name\">gate</th><th>" +
                      criterion + "</th><th>&Delta;</th></tr></thead>\n<tbody>\n";
    int rank = 0;
    double best = 0;
    for (const auto& c : table.candidates) {
        if (!c.ok || c.spurious || rank >= 10) continue;
        const double value = moekit::criterion_value(c, table.criterion);
        if (rank == 0) best = value;
        ++rank;
        out += std::string(rank == 1 ? "<tr class=\"best\">" : "<tr>") + "<td>" +
               std::to_string(rank) + "</td><td>" + std::to_string(c.n_experts) +
               "</td><td class=\"name\">" + std::string(moekit::to_string(c.covariance)) +
               "</td><td class=\"name\">" + std::string(moekit::to_string(c.gate)) + "</td><td>" +
               fixed(value, 2) + "</td><td>" + fixed(value - best, 2) + "</td></tr>\n";
    }
    return out + "</tbody></table>\n</figure>\n";
}

/// Responsibilities as a heatmap: one row per expert, one column per sample, samples grouped by
/// hard expert and sorted by certainty within a group; at most 600 columns (evenly thinned).
std::string heatmap_figure(const moekit::Matrix& resp, const Eigen::VectorXi& hard) {
    const moekit::Index n = resp.rows();
    const moekit::Index k = resp.cols();
    std::vector<moekit::Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](moekit::Index a, moekit::Index b) {
        if (hard(a) != hard(b)) return hard(a) < hard(b);
        return resp(a, hard(a)) > resp(b, hard(b));
    });
    constexpr std::size_t max_columns = 600;
    std::vector<moekit::Index> shown;
    if (order.size() <= max_columns) {
        shown = order;
    } else {
        for (std::size_t j = 0; j < max_columns; ++j)
            shown.push_back(order[j * order.size() / max_columns]);
    }
    const double width = 1040;
    const double left = 92;
    const double plot_width = width - left - 24;
    const double row = k <= 6 ? 30 : std::max(10.0, 180.0 / static_cast<double>(k));
    const double top = 40;
    const double height = top + row * static_cast<double>(k) + 50;
    const double cell = plot_width / static_cast<double>(shown.size());
    std::string svg = svg_open(width, height, "responsibility heatmap");
    svg += "<rect x=\"" + coord(left) + "\" y=\"" + coord(top) + "\" width=\"" + coord(plot_width) +
           "\" height=\"" + coord(row * static_cast<double>(k)) + "\" fill=\"#fafafa\"/>\n";
    svg += "<g shape-rendering=\"crispEdges\">\n";
    for (std::size_t c = 0; c < shown.size(); ++c) {
        const moekit::Index i = shown[c];
        for (moekit::Index j = 0; j < k; ++j) {
            const double h = resp(i, j);
            if (h < 0.004) continue;
            svg += "<rect x=\"" + coord(left + cell * static_cast<double>(c)) + "\" y=\"" +
                   coord(top + row * static_cast<double>(j)) + "\" width=\"" + coord(cell + 0.35) +
                   "\" height=\"" + coord(row) + "\" fill=\"" + expert_colour(j) +
                   "\" fill-opacity=\"" + opacity(h) + "\"/>\n";
        }
    }
    svg += "</g>\n";
    for (moekit::Index j = 0; j < k; ++j)
        svg += text_at(left - 10,
                       top + row * (static_cast<double>(j) + 0.5) + 4,
                       "expert " + std::to_string(j + 1),
                       "label",
                       "end");
    // Group boundaries and labels (hard expert and count).
    std::size_t start = 0;
    while (start < shown.size()) {
        std::size_t end = start;
        while (end < shown.size() && hard(shown[end]) == hard(shown[start]))
            ++end;
        const double x0 = left + cell * static_cast<double>(start);
        const double x1 = left + cell * static_cast<double>(end);
        const moekit::Index group = hard(shown[start]);
        svg += "<rect x=\"" + coord(x0) + "\" y=\"" + coord(top - 14) + "\" width=\"" +
               coord(x1 - x0) + "\" height=\"5\" fill=\"" + expert_colour(group) + "\"/>\n";
        if (x1 - x0 > 60)
            svg += text_at(
                (x0 + x1) / 2, top - 20, "hard expert " + std::to_string(group + 1), "tick");
        if (start > 0)
            svg += "<line x1=\"" + coord(x0) + "\" x2=\"" + coord(x0) + "\" y1=\"" +
                   coord(top - 14) + "\" y2=\"" + coord(top + row * static_cast<double>(k)) +
                   "\" stroke=\"#222\" stroke-width=\"1.2\"/>\n";
        start = end;
    }
    svg += "<rect class=\"frame\" x=\"" + coord(left) + "\" y=\"" + coord(top) + "\" width=\"" +
           coord(plot_width) + "\" height=\"" + coord(row * static_cast<double>(k)) + "\"/>\n";
    // Intensity key.
    const double key_y = top + row * static_cast<double>(k) + 18;
    svg += "<defs><linearGradient id=\"key\"><stop offset=\"0\" stop-color=\"#555\" "
           "stop-opacity=\"0\"/>"
           "<stop offset=\"1\" stop-color=\"#555\" stop-opacity=\"1\"/></linearGradient></defs>\n";
    svg += text_at(left, key_y + 14, "h = 0", "tick", "start");
    svg += "<rect x=\"" + coord(left + 44) + "\" y=\"" + coord(key_y + 3) +
           "\" width=\"140\" height=\"13\" fill=\"url(#key)\" stroke=\"#bbb\"/>\n";
    svg += text_at(left + 192, key_y + 14, "1", "tick", "start");
    svg += text_at(
        left + plot_width,
        key_y + 14,
        std::to_string(n) + " samples" +
            (shown.size() < order.size()
                 ? ", " + std::to_string(shown.size()) + " shown (every " +
                       num(static_cast<double>(order.size()) / static_cast<double>(shown.size())) +
                       "th in this order)"
                 : ""),
        "tick",
        "end");
    svg += "</svg>\n";
    return figure("Responsibilities",
                  svg,
                  "h<sub>ik</sub> for every sample (columns, grouped by hard expert, most certain "
                  "first) and expert (rows)");
}

/// A small stacked bar of one sample's responsibilities.
std::string mini_bar(const moekit::Matrix& resp, moekit::Index i) {
    std::string out = "<svg class=\"mini\" viewBox=\"0 0 120 12\">";
    double x = 0;
    for (moekit::Index j = 0; j < resp.cols(); ++j) {
        const double w = 120 * resp(i, j);
        out += "<rect x=\"" + coord(x) + "\" y=\"0\" width=\"" + coord(w) +
               "\" height=\"12\" fill=\"" + expert_colour(j) + "\"/>";
        x += w;
    }
    return out + "</svg>";
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

std::string kv_row(const std::string& key, const std::string& value) {
    return "<tr><th>" + key + "</th><td>" + value + "</td></tr>\n";
}

std::string
metric_card(const std::string& label, const std::string& value, const std::string& note) {
    return "<div class=\"card\"><div class=\"card-label\">" + label +
           "</div><div class=\"card-value\">" + value + "</div><div class=\"card-note\">" + note +
           "</div></div>\n";
}

std::string names_or_none(const std::vector<std::string>& names) {
    if (names.empty()) return "&ndash;";
    std::string out;
    for (std::size_t i = 0; i < names.size(); ++i)
        out += (i ? ", " : "") + html_escape(names[i]);
    return out;
}

std::string expert_table(const ReportData& r) {
    const moekit::Model& model = *r.model;
    const auto& d = r.diagnostics;
    const auto* constant = std::get_if<moekit::ConstantGate>(&model.gate);
    std::string out = "<table class=\"data\">\n<thead><tr><th>expert</th>";
    if (constant) out += "<th>weight &pi;<sub>k</sub></th>";
    out += "<th>effective size</th><th>gate mass</th><th>hard size</th><th>AvePP</th><th>min "
           "eigenvalue</th>"
           "<th>condition</th></tr></thead>\n<tbody>\n";
    for (moekit::Index k = 0; k < model.n_experts(); ++k) {
        const auto& e = d.experts[static_cast<std::size_t>(k)];
        out += "<tr><td class=\"name\">" + expert_label(k) + "</td>";
        if (constant) out += "<td>" + num(constant->weights(k)) + "</td>";
        out += "<td>" + num(e.effective_size) + "</td><td>" + num(e.gate_mass) + "</td><td>" +
               num(e.hard_size) + "</td><td>" + num(e.average_posterior) + "</td><td>" +
               num(e.min_eigenvalue) + "</td><td>" + num(e.condition_number) + "</td></tr>\n";
    }
    out += "</tbody></table>\n";
    return out;
}

/// Coefficients (or means) and noise scale of every expert: one column per coefficient and
/// target, then the standard deviation of each target.
std::string parameter_table(const moekit::Model& model) {
    const auto& experts = model.experts;
    const moekit::Index q = experts.n_outputs();
    std::vector<std::string> coefficient_names;
    if (experts.kind == moekit::ExpertKind::Gaussian) {
        coefficient_names.push_back("mean");
    } else {
        coefficient_names.push_back("(intercept)");
        for (const auto& name : model.input_names)
            coefficient_names.push_back(name);
    }
    std::string out = "<table class=\"data\">\n<thead><tr><th>expert</th>";
    for (moekit::Index t = 0; t < q; ++t)
        for (const auto& c : coefficient_names)
            out +=
                "<th>" + html_escape(c) +
                (q > 1 || experts.kind == moekit::ExpertKind::Gaussian
                     ? " <span class=\"dim\">[" +
                           html_escape(model.target_names[static_cast<std::size_t>(t)]) + "]</span>"
                     : std::string()) +
                "</th>";
    for (moekit::Index t = 0; t < q; ++t)
        out += "<th>&sigma; <span class=\"dim\">[" +
               html_escape(model.target_names[static_cast<std::size_t>(t)]) + "]</span></th>";
    out += "</tr></thead>\n<tbody>\n";
    for (moekit::Index k = 0; k < model.n_experts(); ++k) {
        const auto u = static_cast<std::size_t>(k);
        out += "<tr><td class=\"name\">" + expert_label(k) + "</td>";
        for (moekit::Index t = 0; t < q; ++t)
            for (moekit::Index c = 0; c < experts.coefficients[u].rows(); ++c)
                out += "<td>" + num(experts.coefficients[u](c, t)) + "</td>";
        for (moekit::Index t = 0; t < q; ++t)
            out += "<td>" + num(std::sqrt(experts.covariances[u].covariance(t, t))) + "</td>";
        out += "</tr>\n";
    }
    out += "</tbody></table>\n";
    return out;
}

std::string gate_table(const moekit::Model& model) {
    auto coefficient_table = [&](const moekit::Matrix& v,
                                 const std::string& column_prefix,
                                 moekit::Index first_expert) {
        std::string out = "<table class=\"data\">\n<thead><tr><th></th>";
        for (moekit::Index c = 0; c < v.cols(); ++c)
            out += "<th>" +
                   (first_expert >= 0 ? expert_label(first_expert + c)
                                      : column_prefix + std::to_string(c + 1)) +
                   "</th>";
        out += "</tr></thead>\n<tbody>\n";
        for (moekit::Index r = 0; r < v.rows(); ++r) {
            out += "<tr><td class=\"name\">" +
                   (r == 0 ? std::string("(intercept)")
                           : html_escape(model.gate_input_names[static_cast<std::size_t>(r - 1)])) +
                   "</td>";
            for (moekit::Index c = 0; c < v.cols(); ++c)
                out += "<td>" + num(v(r, c)) + "</td>";
            out += "</tr>\n";
        }
        return out + "</tbody></table>\n";
    };
    if (const auto* softmax = std::get_if<moekit::SoftmaxGate>(&model.gate))
        return "<h3>Softmax gate coefficients</h3><p class=\"note\">expert 1 is the reference (its "
               "column is 0)</p>\n" +
               coefficient_table(softmax->coefficients, "", 0);
    if (const auto* hash = std::get_if<moekit::HashGate>(&model.gate))
        return "<h3>Hash gate</h3><p class=\"note\">each sample goes to expert hash(key) mod " +
               std::to_string(hash->n_experts) + " of its key in column <code>" +
               html_escape(hash->column) +
               "</code> (moekit-key-v1, docs/file_formats.md); nothing is learnt</p>\n";
    if (const auto* tree = std::get_if<moekit::TreeGate>(&model.gate)) {
        std::string out = "<h3>Tree gate nodes</h3>\n";
        const auto depths = moekit::tree_node_depths(tree->branching);
        for (std::size_t j = 0; j < tree->nodes.size(); ++j)
            out += "<p class=\"note\">node " + std::to_string(j + 1) + " (depth " +
                   std::to_string(depths[j]) + ")</p>\n" +
                   coefficient_table(tree->nodes[j], "child ", -1);
        return out;
    }
    return {};
}

std::string tree_table(const moekit::Diagnostics& d) {
    if (d.tree_nodes.empty()) return {};
    std::string out =
        "<h3>Tree nodes</h3>\n<table class=\"data\">\n<thead><tr><th>node</th><th>depth</th>"
        "<th>responsibility mass</th><th>gate entropy (nats)</th><th>hard/soft "
        "disagreement</th></tr></thead>\n<tbody>\n";
    for (const auto& t : d.tree_nodes)
        out += "<tr><td class=\"name\">" + std::to_string(t.node + 1) + "</td><td>" +
               std::to_string(t.depth) + "</td><td>" + num(t.responsibility_mass) + "</td><td>" +
               num(t.gate_entropy) + "</td><td>" + num(100 * t.disagreement) + "%</td></tr>\n";
    return out + "</tbody></table>\n";
}

std::string least_certain_table(const ReportData& r) {
    const moekit::Index n = r.uncertainty.size();
    std::vector<moekit::Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    const std::size_t shown = std::min<std::size_t>(12, order.size());
    std::partial_sort(
        order.begin(),
        order.begin() + static_cast<std::ptrdiff_t>(shown),
        order.end(),
        [&](moekit::Index a, moekit::Index b) { return r.uncertainty(a) > r.uncertainty(b); });
    const moekit::Model& model = *r.model;
    std::string out = "<table class=\"data\">\n<thead><tr><th>row</th><th class=\"name\">hard "
                      "expert</th><th>uncertainty</th>"
                      "<th>responsibilities</th>";
    for (moekit::Index k = 0; k < model.n_experts() && k < 6; ++k)
        out += "<th>h<sub>" + std::to_string(k + 1) + "</sub></th>";
    for (const auto& name : model.target_names)
        out += "<th>" + html_escape(name) + "</th>";
    out += "<th>log-lik</th></tr></thead>\n<tbody>\n";
    for (std::size_t s = 0; s < shown; ++s) {
        const moekit::Index i = order[s];
        out += "<tr><td class=\"name\">" + std::to_string(r.rows[static_cast<std::size_t>(i)]) +
               "</td><td class=\"name\">" + expert_label(r.hard(i)) + "</td><td>" +
               fixed(r.uncertainty(i), 4) + "</td><td>" + mini_bar(r.responsibilities, i) + "</td>";
        for (moekit::Index k = 0; k < model.n_experts() && k < 6; ++k)
            out += "<td>" + fixed(r.responsibilities(i, k), 4) + "</td>";
        for (moekit::Index t = 0; t < r.y.cols(); ++t)
            out += "<td>" + num(r.y(i, t)) + "</td>";
        out += "<td>" + fixed(r.log_lik(i), 3) + "</td></tr>\n";
    }
    return out + "</tbody></table>\n";
}

std::string selection_table(const moekit::SelectionTable& table) {
    std::string out =
        "<table class=\"data\">\n<thead><tr><th>rank</th><th>K</th><th "
        "class=\"name\">covariance</th><th class=\"name\">gate</th>"
        "<th>log-likelihood</th><th>p</th><th>BIC</th><th>ICL</th><th>AIC</th><th>norm. "
        "entropy</th>"
        "<th>min share</th><th>converged</th><th>restarts at best</th></tr></thead>\n<tbody>\n";
    int rank = 0;
    for (const auto& c : table.candidates) {
        if (!c.ok) {
            out += "<tr class=\"failed\"><td></td><td>" + std::to_string(c.n_experts) +
                   "</td><td class=\"name\">" + std::string(moekit::to_string(c.covariance)) +
                   "</td><td class=\"name\">" + std::string(moekit::to_string(c.gate)) +
                   "</td><td colspan=\"9\" class=\"name\">failed: " + html_escape(c.error) +
                   "</td></tr>\n";
            continue;
        }
        std::string rank_text = "&ndash;";
        if (!c.spurious) rank_text = std::to_string(++rank);
        out += std::string(c.spurious  ? "<tr class=\"spurious\">"
                           : rank == 1 ? "<tr class=\"best\">"
                                       : "<tr>") +
               "<td>" + rank_text + "</td><td>" + std::to_string(c.n_experts) +
               "</td><td class=\"name\">" + std::string(moekit::to_string(c.covariance)) +
               "</td><td class=\"name\">" + std::string(moekit::to_string(c.gate)) + "</td><td>" +
               fixed(c.log_likelihood, 3) + "</td><td>" + std::to_string(c.n_parameters) +
               "</td><td>" + fixed(c.bic, 3) + "</td><td>" + fixed(c.icl, 3) + "</td><td>" +
               fixed(c.aic, 3) + "</td><td>" + fixed(c.normalized_entropy, 4) + "</td><td>" +
               fixed(c.min_share, 4) + "</td><td>" + yes_no(c.converged) + "</td><td>" +
               std::to_string(c.reached_best) + "/" + std::to_string(c.restarts) + "</td></tr>\n";
    }
    return out + "</tbody></table>\n";
}

constexpr const char* style_sheet = R"CSS(
:root { --ink: #1d2430; --muted: #5b6574; --line: #d9dee5; --panel: #ffffff; --bg: #f3f5f8; --accent: #1f4e79; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 "Helvetica Neue", Helvetica, Arial, "DejaVu Sans", "Liberation Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 48px; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 14px; margin-bottom: 20px; }
h1 { font-size: 27px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 0 0 12px; color: var(--accent); }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 0; }
.sub code { font-size: 13px; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px;
  margin: 0 0 18px; box-shadow: 0 1px 2px rgba(20, 30, 50, 0.04); }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; background: none; border: none;
  padding: 0; box-shadow: none; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card-label { font-size: 12px; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); }
.card-value { font-size: 21px; font-weight: 600; font-variant-numeric: tabular-nums; margin-top: 2px; }
.card-note { font-size: 12px; color: var(--muted); }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.kv { width: 100%; }
table.kv th { text-align: left; font-weight: 500; color: var(--muted); padding: 4px 12px 4px 0; width: 44%; vertical-align: top; }
table.kv td { padding: 4px 0; }
table.data { width: 100%; font-size: 14px; }
table.data th { text-align: right; font-weight: 600; font-size: 13px; color: var(--muted); border-bottom: 2px solid var(--line);
  padding: 6px 8px; white-space: nowrap; }
table.data td { text-align: right; padding: 5px 8px; border-bottom: 1px solid #eef0f3; white-space: nowrap; }
table.data th:first-child, table.data th.name, table.data td.name { text-align: left; }
table.data tbody tr:nth-child(even) { background: #fafbfc; }
tr.best td { background: #fff6d6; font-weight: 600; }
tr.failed td { color: #a23; }
tr.spurious td { color: #8a93a0; font-style: italic; }
.dim { color: #8a93a0; font-weight: 400; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 7px; vertical-align: -1px; }
.ok { color: #1b7f3b; font-weight: 600; }
.bad { color: #b3261e; font-weight: 600; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 8px; }
figure { margin: 0; }
figcaption { margin-bottom: 6px; }
figcaption strong { display: block; font-size: 16px; color: var(--ink); }
figcaption span { font-size: 13px; color: var(--muted); }
svg.plot { width: 100%; height: auto; display: block; }
svg.mini { width: 120px; height: 12px; vertical-align: -1px; border-radius: 2px; }
svg text { font-family: "Helvetica Neue", Helvetica, Arial, "DejaVu Sans", "Liberation Sans", sans-serif; fill: #2a3240; }
svg .tick { font-size: 12px; fill: #5b6574; }
svg .label { font-size: 13px; }
svg .axis-title { font-size: 13.5px; font-weight: 600; }
svg .legend { font-size: 13px; }
svg .bar-value { font-size: 11.5px; fill: #5b6574; }
svg .annotation { font-size: 12px; fill: #c62828; font-weight: 600; }
svg .grid { stroke: #e8ebef; stroke-width: 1; }
svg .axis { stroke: #7d8693; stroke-width: 1; }
svg .frame { fill: none; stroke: #9aa3ae; stroke-width: 1; }
ul.plain { margin: 0; padding-left: 18px; }
footer { color: var(--muted); font-size: 12.5px; text-align: center; margin-top: 24px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em; }
)CSS";

} // namespace

std::string expert_colour(moekit::Index k) {
    static const char* palette[] = {"#3b75af",
                                    "#ef8636",
                                    "#519e3e",
                                    "#c53a32",
                                    "#8d69b8",
                                    "#84584e",
                                    "#d57dbf",
                                    "#7f7f7f",
                                    "#bcbc45",
                                    "#58bbcc"};
    if (k >= 0 && k < 10) return palette[k];
    // Beyond ten experts: hues spaced by the golden angle, fixed saturation and lightness.
    const double hue = std::fmod(static_cast<double>(k) * 137.508, 360.0);
    const double s = 0.55;
    const double l = 0.5;
    auto channel = [&](double n) {
        const double kk = std::fmod(n + hue / 30.0, 12.0);
        const double a = s * std::min(l, 1 - l);
        const double value = l - a * std::max(-1.0, std::min({kk - 3, 9 - kk, 1.0}));
        return static_cast<int>(std::lround(255 * value));
    };
    char buffer[8];
    std::snprintf(buffer, sizeof buffer, "#%02x%02x%02x", channel(0), channel(8), channel(4));
    return buffer;
}

NiceAxis nice_axis(double lo, double hi, int target) {
    NiceAxis axis;
    if (!std::isfinite(lo) || !std::isfinite(hi)) {
        lo = 0;
        hi = 1;
    }
    if (hi < lo) std::swap(lo, hi);
    if (hi - lo <= 1e-12 * std::max(1.0, std::abs(hi))) {
        const double pad = std::abs(lo) > 0 ? 0.05 * std::abs(lo) : 1.0;
        lo -= pad;
        hi += pad;
    }
    target = std::max(target, 2);
    const double raw = (hi - lo) / static_cast<double>(target);
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    const double fraction = raw / magnitude;
    const double nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10;
    axis.step = nice * magnitude;
    axis.lo = std::floor(lo / axis.step + 1e-9) * axis.step;
    axis.hi = std::ceil(hi / axis.step - 1e-9) * axis.step;
    for (int i = 0;; ++i) {
        const double t = axis.lo + axis.step * i;
        if (t > axis.hi + axis.step * 1e-6) break;
        axis.ticks.push_back(std::abs(t) < axis.step * 1e-9 ? 0.0 : t);
    }
    return axis;
}

std::string tick_label(double value, double step) {
    char buffer[64];
    const double magnitude = std::max(std::abs(value), std::abs(step));
    if (magnitude >= 1e6 || (magnitude > 0 && magnitude < 1e-4)) {
        std::snprintf(buffer, sizeof buffer, "%.3g", value);
    } else {
        const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
        std::snprintf(buffer, sizeof buffer, "%.*f", std::max(decimals, 0), value);
    }
    std::string text = buffer;
    if (text == "-0") text = "0";
    if (!text.empty() && text[0] == '-') text = "\xE2\x88\x92" + text.substr(1);
    return text;
}

std::string html_escape(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        switch (c) {
        case '&':
            out += "&amp;";
            break;
        case '<':
            out += "&lt;";
            break;
        case '>':
            out += "&gt;";
            break;
        case '"':
            out += "&quot;";
            break;
        case '\'':
            out += "&#39;";
            break;
        default:
            out += c;
        }
    }
    return out;
}

std::string render_report_html(const ReportData& r) {
    const moekit::Model& model = *r.model;
    const moekit::Diagnostics& d = r.diagnostics;
    const moekit::Index k = model.n_experts();
    std::string h;
    h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>" +
         html_escape(r.title) + "</title>\n<style>" + style_sheet +
         "</style>\n</head>\n<body>\n<main>\n";

    // Header.
    h += "<header>\n<h1>" + html_escape(r.title) + "</h1>\n<p class=\"sub\">" +
         html_escape(describe_model(model)) + "</p>\n<p class=\"sub\">model <code>" +
         html_escape(r.model_path) + "</code> &middot; data <code>" + html_escape(r.data_path) +
         "</code> &middot; " + std::to_string(r.rows.size()) + " samples";
    if (d.n_samples != static_cast<double>(r.rows.size()))
        h += " (total weight " + num(d.n_samples) + ")";
    h += "</p>\n</header>\n";

    // Key numbers.
    h += "<section class=\"cards\">\n";
    h += metric_card("log-likelihood",
                     fixed(d.log_likelihood, 3),
                     std::to_string(d.n_parameters) + " parameters");
    h += metric_card("BIC", fixed(d.bic, 2), "&minus;2L + p log n");
    h += metric_card("ICL", fixed(d.icl, 2), "BIC + 2 &times; entropy");
    h += metric_card("AIC", fixed(d.aic, 2), "&minus;2L + 2p");
    h += metric_card("entropy", fixed(d.normalized_entropy, 4), "normalised, 0 = crisp");
    if (d.fit_history) {
        const auto& fh = *d.fit_history;
        h += metric_card("converged",
                         fh.converged ? "<span class=\"ok\">yes</span>"
                                      : "<span class=\"bad\">no</span>",
                         std::to_string(fh.iterations) + " iterations");
    } else {
        h += metric_card("experts", std::to_string(k), "no fit record");
    }
    h += "</section>\n";

    // Summary and fit health.
    h += "<section>\n<h2>Summary</h2>\n<div class=\"two\">\n<div>\n<table class=\"kv\">\n";
    h += kv_row("targets y", names_or_none(model.target_names));
    h += kv_row("expert inputs x", names_or_none(model.input_names));
    h += kv_row("gate inputs z", names_or_none(model.gate_input_names));
    h += kv_row("experts K", std::to_string(k));
    h += kv_row("parameters p", std::to_string(d.n_parameters));
    h += kv_row("log-likelihood L", fixed(d.log_likelihood, 6));
    h += kv_row("BIC / ICL / AIC",
                fixed(d.bic, 4) + " / " + fixed(d.icl, 4) + " / " + fixed(d.aic, 4));
    h += kv_row("ICL (MAP, mclust)", fixed(d.icl_map, 4));
    h += kv_row("entropy EN",
                num(d.entropy) + " nats (normalised " + num(d.normalized_entropy) + ")");
    h += "</table>\n</div>\n<div>\n<table class=\"kv\">\n";
    if (d.fit_history) {
        const auto& fh = *d.fit_history;
        h += kv_row("converged", yes_no(fh.converged) + (fh.interrupted ? " (interrupted)" : ""));
        h += kv_row("iterations", std::to_string(fh.iterations));
        h += kv_row("trace monotone",
                    yes_no(fh.monotone) +
                        (fh.largest_decrease > 0
                             ? " (largest decrease " + num(fh.largest_decrease) + ")"
                             : ""));
        h += kv_row("restarts",
                    std::to_string(fh.restarts.count) +
                        " (best: " + std::to_string(fh.restarts.best + 1) + ")");
        h += kv_row("reached the best",
                    std::to_string(fh.restarts.reached_best) + " of " +
                        std::to_string(fh.restarts.count) +
                        (fh.restarts.reached_best == 1 && fh.restarts.count > 1
                             ? " <span class=\"bad\">(only one: try more restarts)</span>"
                             : ""));
        h += kv_row("spread of restarts",
                    num(fh.restarts.spread) +
                        (fh.restarts.failed > 0
                             ? " (" + std::to_string(fh.restarts.failed) + " failed)"
                             : ""));
        h += kv_row("interventions", std::to_string(fh.interventions.size()));
    } else {
        h += kv_row("fit history", "not recorded in the model file");
    }
    if (r.fit) {
        h += kv_row("seed", std::to_string(r.fit->seed));
        h += kv_row("log-likelihood at fit",
                    fixed(r.fit->log_likelihood, 6) +
                        (std::abs(r.fit->log_likelihood - d.log_likelihood) >
                                 1e-6 * std::max(1.0, std::abs(d.log_likelihood))
                             ? " <span class=\"dim\">(other data)</span>"
                             : ""));
    }
    h += "</table>\n</div>\n</div>\n</section>\n";

    // Experts.
    h += "<section>\n<h2>Experts</h2>\n" + expert_table(r) + "<h3>Parameters</h3>\n" +
         parameter_table(model) + gate_table(model) + tree_table(d) + "</section>\n";

    // Trace and sizes / selection.
    if (r.fit && r.fit->trace.size() >= 2)
        h += "<section class=\"two\">\n" + trace_figures(r.fit->trace) + "</section>\n";
    std::string restarts;
    if (r.fit && d.fit_history)
        restarts =
            restarts_figure(r.fit->restart_log_likelihoods, r.fit->best_restart, *d.fit_history);
    h += "<section class=\"two\">\n" + sizes_figure(d) +
         (restarts.empty() ? "<div></div>\n" : restarts) + "</section>\n";
    if (d.selection && !d.selection->candidates.empty())
        h += "<section class=\"two\">\n" + criterion_figure(*d.selection) +
             top_candidates(*d.selection) + "</section>\n";

    if (r.one_input)
        h += "<section>\n" + one_input_figure(*r.one_input, r.hard, model) + "</section>\n";
    if (r.ellipses) h += "<section>\n" + ellipse_figure(*r.ellipses, r.hard, k) + "</section>\n";
    if (r.density) h += "<section>\n" + density_figure(*r.density, r.hard, k) + "</section>\n";
    h += "<section>\n" + heatmap_figure(r.responsibilities, r.hard) + "</section>\n";

    h += "<section>\n<h2>Least certain samples</h2>\n<p class=\"note\">uncertainty 1 &minus; "
         "max<sub>k</sub> h<sub>ik</sub>; "
         "row is the line in the data file</p>\n" +
         least_certain_table(r) + "</section>\n";

    if (d.selection && !d.selection->candidates.empty())
        h += "<section>\n<h2>Selection table</h2>\n<p class=\"note\">spurious candidates (grey, "
             "unranked) have an expert "
             "with less than " +
             num(100 * d.selection->min_share) + "% of the data and are not selected</p>\n" +
             selection_table(*d.selection) + "</section>\n";

    // Interventions and warnings.
    const bool any_interventions = d.fit_history && !d.fit_history->interventions.empty();
    const bool any_warnings = r.fit && !r.fit->warnings.empty();
    if (any_interventions || any_warnings) {
        h += "<section>\n<h2>Interventions and warnings</h2>\n<ul class=\"plain\">\n";
        if (any_interventions)
            for (const auto& i : d.fit_history->interventions)
                h += "<li><code>" + html_escape(i.kind) + "</code> start " +
                     std::to_string(i.restart + 1) + ", iteration " + std::to_string(i.iteration) +
                     (i.expert >= 0 ? ", expert " + std::to_string(i.expert + 1) : std::string()) +
                     ": " + html_escape(i.message) + "</li>\n";
        else
            for (const auto& w : r.fit->warnings)
                h += "<li>" + html_escape(w) + "</li>\n";
        h += "</ul>\n</section>\n";
    }

    h += "<footer>written by moekit " + html_escape(r.version) +
         " &middot; criteria are lower-is-better (mclust and MoEClust report &minus;BIC and "
         "&minus;ICL) &middot; "
         "formulas in docs/diagnostics.md</footer>\n";
    h += "</main>\n</body>\n</html>\n";
    return h;
}

} // namespace moekit::cli
