/// @file model_io.cpp
/// Writer and validating parser of the model file (docs/file_formats.md).

#include "moekit/model_io.hpp"

#include "moekit/csv.hpp"
#include "moekit/errors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace moekit {

namespace {

/// Objects keep their keys in insertion order, so files list keys in the documented order.
using Json = nlohmann::ordered_json;

constexpr const char* format_name = "moekit-model";
constexpr const char* intercept_name = "(intercept)";
/// Relative tolerance of the symmetry check on loaded covariances.
constexpr double symmetry_tolerance = 1e-12;
/// Tolerance on |Σ_k π_k − 1| for constant-gate weights.
constexpr double weight_sum_tolerance = 1e-9;
/// String arrays longer than this (as one line) are written one element per line.
constexpr std::size_t max_inline_width = 100;
/// Name of the fixed function (hash_key, then key mod K) that routes the samples of a hash
/// gate. A file naming another function was written by a moekit that routes differently: it is
/// rejected rather than silently routing samples to other experts.
constexpr const char* hash_function_name = "moekit-key-v1";

// ---------------------------------------------------------------------------------------------
// Shared checks (writer and reader)
// ---------------------------------------------------------------------------------------------

/// A structural problem of a covariance matrix: "<matrix> is <value>, but <requirement>".
struct StructureProblem {
    std::string value;
    std::string requirement;
};

std::string entry_text(Index i, Index j) {
    return "[" + std::to_string(i) + "][" + std::to_string(j) + "]";
}

/// Symmetry with relative tolerance: |s_ij − s_ji| <= 1e-12 · max(|s_ij|, |s_ji|, √|s_ii s_jj|).
std::optional<StructureProblem> symmetry_problem(const Matrix& s) {
    for (Index i = 0; i < s.rows(); ++i) {
        for (Index j = 0; j < i; ++j) {
            const double a = s(i, j);
            const double b = s(j, i);
            const double scale =
                std::max({std::abs(a),
                          std::abs(b),
                          std::sqrt(std::abs(s(i, i))) * std::sqrt(std::abs(s(j, j)))});
            if (std::abs(a - b) > symmetry_tolerance * scale) {
                return StructureProblem{"not symmetric (entry " + entry_text(j, i) + " is " +
                                            format_number(b) + " but " + entry_text(i, j) + " is " +
                                            format_number(a) + ")",
                                        "a covariance must be symmetric positive definite"};
            }
        }
    }
    return std::nullopt;
}

/// Diag and spherical covariances must be exactly diagonal; spherical ones must also have equal
/// diagonal entries.
std::optional<StructureProblem> type_problem(CovarianceType type, const Matrix& s) {
    if (type != CovarianceType::Diag && type != CovarianceType::Spherical) return std::nullopt;
    const std::string type_text(to_string(type));
    for (Index j = 0; j < s.cols(); ++j) {
        for (Index i = 0; i < s.rows(); ++i) {
            if (i != j && s(i, j) != 0.0) {
                return StructureProblem{"a matrix with off-diagonal entry " + entry_text(i, j) +
                                            " = " + format_number(s(i, j)),
                                        "covariance '" + type_text +
                                            "' requires a diagonal matrix"};
            }
        }
    }
    if (type == CovarianceType::Spherical) {
        for (Index i = 1; i < s.rows(); ++i) {
            if (s(i, i) != s(0, 0)) {
                return StructureProblem{"a matrix with unequal diagonal entries (" +
                                            format_number(s(0, 0)) + " and " +
                                            format_number(s(i, i)) + ")",
                                        "covariance 'spherical' requires sigma^2 times the "
                                        "identity"};
            }
        }
    }
    return std::nullopt;
}

std::string quoted(std::string_view text) {
    return "'" + std::string(text) + "'";
}

/// "'a', 'b' or 'c'" from the canonical spellings of enum values.
template <class Enum> std::string alternatives(std::initializer_list<Enum> values) {
    std::string text;
    std::size_t i = 0;
    for (Enum value : values) {
        if (i > 0) text += (i + 1 == values.size()) ? " or " : ", ";
        text += quoted(to_string(value));
        ++i;
    }
    return text;
}

constexpr std::initializer_list<ExpertKind> expert_kinds = {ExpertKind::Gaussian,
                                                            ExpertKind::Linear};
constexpr std::initializer_list<GateKind> gate_kinds = {
    GateKind::Constant, GateKind::Softmax, GateKind::Tree, GateKind::Hash};
constexpr std::initializer_list<CovarianceType> covariance_types = {
    CovarianceType::Full, CovarianceType::Tied, CovarianceType::Diag, CovarianceType::Spherical};
constexpr std::initializer_list<InitMethod> init_methods = {InitMethod::Auto,
                                                            InitMethod::KMeansPlusPlus,
                                                            InitMethod::Random,
                                                            InitMethod::RandomLines,
                                                            InitMethod::Model,
                                                            InitMethod::Upcycle};
constexpr std::initializer_list<FitMethod> fit_methods = {
    FitMethod::Auto, FitMethod::EM, FitMethod::Gradient};
constexpr std::initializer_list<Variant> variants = {
    Variant::Standard, Variant::MetaPi, Variant::Hard};
constexpr std::initializer_list<BalanceLoss> balance_losses = {
    BalanceLoss::Switch, BalanceLoss::Importance, BalanceLoss::Load};

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

constexpr const char* writer = "model_to_json";

void check_finite_for_writing(double value, const std::string& argument) {
    if (!std::isfinite(value)) {
        throw_invalid_argument(
            writer, argument, format_number(value), "every number in a model file must be finite");
    }
}

Json names_json(const std::vector<std::string>& names) {
    Json array = Json::array();
    for (const auto& name : names)
        array.push_back(name);
    return array;
}

Json coefficient_names_json(const std::vector<std::string>& names) {
    Json array = Json::array();
    array.push_back(intercept_name);
    for (const auto& name : names)
        array.push_back(name);
    return array;
}

Json vector_json(const ConstVectorRef& values) {
    Json array = Json::array();
    for (Index i = 0; i < values.size(); ++i)
        array.push_back(values(i));
    return array;
}

Json doubles_json(const std::vector<double>& values) {
    Json array = Json::array();
    for (double value : values)
        array.push_back(value);
    return array;
}

/// A matrix as an array of its rows.
Json tree_json(const std::vector<Index>& branching) {
    Json out = Json::array();
    for (Index b : branching) out.push_back(static_cast<std::int64_t>(b));
    return out;
}

Json matrix_json(const Matrix& m) {
    Json rows = Json::array();
    for (Index i = 0; i < m.rows(); ++i) {
        Json row = Json::array();
        for (Index j = 0; j < m.cols(); ++j)
            row.push_back(m(i, j));
        rows.push_back(std::move(row));
    }
    return rows;
}

void check_structure_for_writing(const Model& model) {
    const Experts& experts = model.experts;
    for (Index k = 0; k < experts.n_experts(); ++k) {
        const Matrix& s = experts.covariances[static_cast<std::size_t>(k)].covariance;
        const std::string argument =
            "model.experts.covariances[" + std::to_string(k) + "].covariance";
        auto problem = symmetry_problem(s);
        if (!problem) problem = type_problem(experts.covariance_type, s);
        if (problem) throw_invalid_argument(writer, argument, problem->value, problem->requirement);
        if (experts.covariance_type == CovarianceType::Tied && k > 0 &&
            s != experts.covariances[0].covariance) {
            throw_invalid_argument(writer,
                                   argument,
                                   "different from model.experts.covariances[0].covariance",
                                   "covariance 'tied' requires all experts to share one matrix");
        }
    }
}

/// A diagnostics number: finite values as numbers, anything else (an AvePP of an empty expert,
/// the numbers of a failed selection candidate) as null.
Json nullable_json(double value) {
    return std::isfinite(value) ? Json(value) : Json(nullptr);
}

/// The `fit.sparse` object: the balance losses, load and capacity drops of a top-k fit.
Json sparse_json(const Model& model, const FitOptions& options, const ObjectiveReport& sparse) {
    if (options.top_k == 0) {
        throw_invalid_argument(writer,
                               "fit->sparse",
                               "set",
                               "it is recorded for sparse top-k fits only (fit->options.top_k is 0)");
    }
    if (sparse.load.size() != model.n_experts()) {
        throw_invalid_argument(writer,
                               "fit->sparse.load",
                               std::to_string(sparse.load.size()) + " values",
                               "there must be one per expert (" +
                                   std::to_string(model.n_experts()) + ")");
    }
    check_finite_for_writing(sparse.balance_loss, "fit->sparse.balance_loss");
    check_finite_for_writing(sparse.switch_loss, "fit->sparse.switch_loss");
    check_finite_for_writing(sparse.importance_cv2, "fit->sparse.importance_cv2");
    check_finite_for_writing(sparse.load_cv2, "fit->sparse.load_cv2");
    for (Index k = 0; k < sparse.load.size(); ++k)
        check_finite_for_writing(sparse.load(k), "fit->sparse.load[" + std::to_string(k) + "]");
    Json out = Json::object();
    out["balance_loss"] = sparse.balance_loss;
    out["switch_loss"] = sparse.switch_loss;
    out["importance_cv2"] = sparse.importance_cv2;
    out["load_cv2"] = sparse.load_cv2;
    out["load"] = vector_json(sparse.load);
    out["dropped"] = static_cast<std::int64_t>(sparse.dropped);
    out["dropped_samples"] = static_cast<std::int64_t>(sparse.dropped_samples);
    return out;
}

Json fit_json(const Model& model, const FitRecord& fit) {
    check_finite_for_writing(fit.log_likelihood, "fit->log_likelihood");
    check_finite_for_writing(fit.n_samples, "fit->n_samples");
    check_finite_for_writing(fit.aic, "fit->aic");
    check_finite_for_writing(fit.bic, "fit->bic");
    for (std::size_t i = 0; i < fit.trace.size(); ++i) {
        check_finite_for_writing(fit.trace[i], "fit->trace[" + std::to_string(i) + "]");
    }
    const FitOptions& options = fit.options;
    validate(options, writer);
    if (options.expert != model.experts.kind) {
        throw_invalid_argument(writer,
                               "fit->options.expert",
                               quoted(to_string(options.expert)),
                               "it must equal the model's expert kind " +
                                   quoted(to_string(model.experts.kind)));
    }
    if (options.gate != gate_kind(model.gate)) {
        throw_invalid_argument(writer,
                               "fit->options.gate",
                               quoted(to_string(options.gate)),
                               "it must equal the model's gate kind " +
                                   quoted(to_string(gate_kind(model.gate))));
    }
    if (options.covariance != model.experts.covariance_type) {
        throw_invalid_argument(writer,
                               "fit->options.covariance",
                               quoted(to_string(options.covariance)),
                               "it must equal the model's covariance type " +
                                   quoted(to_string(model.experts.covariance_type)));
    }
    if (options.n_experts != model.n_experts()) {
        throw_invalid_argument(writer,
                               "fit->options.n_experts",
                               std::to_string(options.n_experts),
                               "it must equal the model's number of experts " +
                                   std::to_string(model.n_experts()));
    }

    Json opts = Json::object();
    opts["expert"] = to_string(options.expert);
    opts["gate"] = to_string(options.gate);
    opts["covariance"] = to_string(options.covariance);
    opts["n_experts"] = static_cast<std::int64_t>(options.n_experts);
    opts["tree"] = tree_json(options.tree);
    opts["max_iter"] = options.max_iter;
    opts["tol"] = options.tol;
    opts["restarts"] = options.restarts;
    opts["seed"] = options.seed;
    opts["init"] = to_string(options.init);
    opts["kmeans_iter"] = options.kmeans_iter;
    opts["reg_covar"] = options.regularization.reg_covar;
    opts["min_expert_size"] = options.regularization.min_expert_size;
    opts["gate_l2"] = options.gate_options.gate_l2;
    opts["newton_steps"] = options.gate_options.newton_steps;
    opts["method"] = to_string(options.method);
    opts["variant"] = to_string(options.variant);
    opts["top_k"] = static_cast<std::int64_t>(options.top_k);
    opts["balance_loss"] = to_string(options.balance_loss);
    opts["balance_weight"] = options.balance_weight;
    opts["capacity_factor"] = options.capacity_factor;
    opts["gate_noise"] = options.gate_noise;
    opts["upcycle_noise"] = options.upcycle_noise;

    Json out = Json::object();
    out["log_likelihood"] = fit.log_likelihood;
    out["n_parameters"] = static_cast<std::int64_t>(fit.n_parameters);
    out["n_samples"] = fit.n_samples;
    out["aic"] = fit.aic;
    out["bic"] = fit.bic;
    out["iterations"] = fit.iterations;
    out["converged"] = fit.converged;
    out["trace"] = doubles_json(fit.trace);
    out["seed"] = fit.seed;
    out["best_restart"] = fit.best_restart;
    // A start that failed has a non-finite log-likelihood: written as null.
    Json restarts = Json::array();
    for (double value : fit.restart_log_likelihoods) {
        if (std::isfinite(value)) {
            restarts.push_back(value);
        } else {
            restarts.push_back(nullptr);
        }
    }
    out["restart_log_likelihoods"] = std::move(restarts);
    out["warnings"] = names_json(fit.warnings);
    if (fit.mse) {
        check_finite_for_writing(*fit.mse, "fit->mse");
        out["mse"] = *fit.mse;
    } else {
        out["mse"] = nullptr;
    }
    // Null unless the variant is hard (the disagreement is defined for hard fits only).
    out["hard_disagreement"] = options.variant == Variant::Hard ? nullable_json(fit.hard_disagreement)
                                                                : Json(nullptr);
    out["sparse"] = fit.sparse ? sparse_json(model, options, *fit.sparse) : Json(nullptr);
    out["options"] = std::move(opts);
    return out;
}

constexpr std::initializer_list<Criterion> criteria = {
    Criterion::Bic, Criterion::Icl, Criterion::Aic};

Json diagnostics_json(const Model& model, const Diagnostics& d) {
    if (static_cast<Index>(d.experts.size()) != model.n_experts()) {
        throw_invalid_argument(writer,
                               "diagnostics->experts",
                               std::to_string(d.experts.size()) + " entries",
                               "there must be one per expert (" +
                                   std::to_string(model.n_experts()) + ")");
    }
    Json out = Json::object();
    out["log_likelihood"] = nullable_json(d.log_likelihood);
    out["n_parameters"] = static_cast<std::int64_t>(d.n_parameters);
    out["n_samples"] = nullable_json(d.n_samples);
    out["aic"] = nullable_json(d.aic);
    out["bic"] = nullable_json(d.bic);
    out["icl"] = nullable_json(d.icl);
    out["icl_map"] = nullable_json(d.icl_map);
    out["entropy"] = nullable_json(d.entropy);
    out["normalized_entropy"] = nullable_json(d.normalized_entropy);
    Json experts = Json::array();
    for (const ExpertDiagnostics& e : d.experts) {
        Json item = Json::object();
        item["effective_size"] = nullable_json(e.effective_size);
        item["gate_mass"] = nullable_json(e.gate_mass);
        item["hard_size"] = nullable_json(e.hard_size);
        item["average_posterior"] = nullable_json(e.average_posterior);
        item["min_eigenvalue"] = nullable_json(e.min_eigenvalue);
        item["max_eigenvalue"] = nullable_json(e.max_eigenvalue);
        item["condition_number"] = nullable_json(e.condition_number);
        experts.push_back(std::move(item));
    }
    out["experts"] = std::move(experts);
    Json nodes = Json::array();
    for (const TreeNodeDiagnostics& t : d.tree_nodes) {
        Json item = Json::object();
        item["node"] = static_cast<std::int64_t>(t.node);
        item["depth"] = static_cast<std::int64_t>(t.depth);
        item["responsibility_mass"] = nullable_json(t.responsibility_mass);
        item["gate_entropy"] = nullable_json(t.gate_entropy);
        item["disagreement"] = nullable_json(t.disagreement);
        nodes.push_back(std::move(item));
    }
    out["tree_nodes"] = std::move(nodes);
    if (d.fit_history) {
        const FitHistoryDiagnostics& h = *d.fit_history;
        Json history = Json::object();
        history["converged"] = h.converged;
        history["interrupted"] = h.interrupted;
        history["iterations"] = h.iterations;
        history["monotone"] = h.monotone;
        history["largest_decrease"] = nullable_json(h.largest_decrease);
        Json restarts = Json::object();
        restarts["count"] = h.restarts.count;
        restarts["best"] = h.restarts.best;
        restarts["best_log_likelihood"] = nullable_json(h.restarts.best_log_likelihood);
        restarts["spread"] = nullable_json(h.restarts.spread);
        restarts["reached_best"] = h.restarts.reached_best;
        restarts["failed"] = h.restarts.failed;
        history["restarts"] = std::move(restarts);
        Json interventions = Json::array();
        for (const Intervention& i : h.interventions) {
            Json item = Json::object();
            item["restart"] = i.restart;
            item["iteration"] = i.iteration;
            item["kind"] = i.kind;
            item["expert"] = static_cast<std::int64_t>(i.expert);
            item["message"] = i.message;
            interventions.push_back(std::move(item));
        }
        history["interventions"] = std::move(interventions);
        out["fit_history"] = std::move(history);
    }
    if (d.selection) {
        Json selection = Json::object();
        selection["criterion"] = to_string(d.selection->criterion);
        selection["min_share"] = nullable_json(d.selection->min_share);
        Json candidates = Json::array();
        for (const SelectionCandidate& c : d.selection->candidates) {
            auto number = [&c](double value) {
                return c.ok ? nullable_json(value) : Json(nullptr);
            };
            Json item = Json::object();
            item["n_experts"] = static_cast<std::int64_t>(c.n_experts);
            item["covariance"] = to_string(c.covariance);
            item["gate"] = to_string(c.gate);
            item["ok"] = c.ok;
            item["error"] = c.error;
            item["log_likelihood"] = number(c.log_likelihood);
            item["n_parameters"] = static_cast<std::int64_t>(c.n_parameters);
            item["aic"] = number(c.aic);
            item["bic"] = number(c.bic);
            item["icl"] = number(c.icl);
            item["normalized_entropy"] = number(c.normalized_entropy);
            item["min_share"] = number(c.min_share);
            item["spurious"] = c.spurious;
            item["converged"] = c.converged;
            item["restarts"] = c.restarts;
            item["reached_best"] = c.reached_best;
            item["interventions"] = c.interventions;
            candidates.push_back(std::move(item));
        }
        selection["candidates"] = std::move(candidates);
        out["selection"] = std::move(selection);
    }
    return out;
}

bool is_scalar(const Json& value) {
    return !value.is_object() && !value.is_array();
}

/// Scalars in nlohmann's form: numbers in their shortest round-trip representation, strings
/// escaped (invalid UTF-8 throws type_error 316).
std::string scalar_text(const Json& value) {
    return value.dump();
}

/// Pretty printer: objects one key per line; arrays of numbers (matrix rows, traces) on one line;
/// arrays of strings on one line when short; everything else one element per line.
void write_pretty(const Json& value, int indent, std::string& out) {
    const std::string inner(static_cast<std::size_t>(indent + 2), ' ');
    const std::string outer(static_cast<std::size_t>(indent), ' ');
    if (value.is_object()) {
        if (value.empty()) {
            out += "{}";
            return;
        }
        out += "{\n";
        std::size_t i = 0;
        for (const auto& item : value.items()) {
            out += inner;
            out += scalar_text(Json(item.key()));
            out += ": ";
            write_pretty(item.value(), indent + 2, out);
            out += (++i < value.size()) ? ",\n" : "\n";
        }
        out += outer + "}";
        return;
    }
    if (value.is_array()) {
        if (value.empty()) {
            out += "[]";
            return;
        }
        const bool scalars = std::all_of(value.begin(), value.end(), is_scalar);
        if (scalars) {
            std::string line = "[";
            bool has_string = false;
            for (std::size_t i = 0; i < value.size(); ++i) {
                if (i > 0) line += ", ";
                line += scalar_text(value[i]);
                has_string = has_string || value[i].is_string();
            }
            line += "]";
            if (!has_string || line.size() + static_cast<std::size_t>(indent) <= max_inline_width) {
                out += line;
                return;
            }
        }
        out += "[\n";
        for (std::size_t i = 0; i < value.size(); ++i) {
            out += inner;
            write_pretty(value[i], indent + 2, out);
            out += (i + 1 < value.size()) ? ",\n" : "\n";
        }
        out += outer + "]";
        return;
    }
    out += scalar_text(value);
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

std::string join(const std::string& parent, std::string_view key) {
    return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

std::string indexed(const std::string& parent, std::size_t i) {
    return parent + "[" + std::to_string(i) + "]";
}

/// Text quoted in a message: at most 40 characters, control characters shown as '?'.
std::string shorten(std::string text) {
    if (text.size() > 40) text = text.substr(0, 40) + "...";
    for (char& c : text) {
        if ((c >= 0 && c < 32) || c == 127) c = '?';
    }
    return text;
}

/// A message kept on one line: keys and names come from the file and may hold line ends, so
/// control characters are shown as '?'.
std::string one_line(std::string text) {
    for (char& c : text) {
        if ((c >= 0 && c < 32) || c == 127) c = '?';
    }
    return text;
}

/// Short description of a JSON value for messages: "the string 'abc'", "null", "an array".
std::string describe(const Json& value) {
    switch (value.type()) {
    case Json::value_t::null:
        return "null";
    case Json::value_t::boolean:
        return value.get<bool>() ? "the boolean true" : "the boolean false";
    case Json::value_t::string:
        return "the string '" + shorten(value.get<std::string>()) + "'";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float:
        return "the number " + value.dump();
    case Json::value_t::object:
        return "an object";
    case Json::value_t::array:
        return "an array";
    default:
        return value.type_name();
    }
}

/// Rejects duplicate keys during parsing (nlohmann would silently keep the last one); tracks the
/// key path so the message can name it.
class DuplicateKeyCheck {
  public:
    explicit DuplicateKeyCheck(const std::string& source) : source_(&source) {}

    bool operator()(int /*depth*/, nlohmann::detail::parse_event_t event, Json& parsed) {
        using Event = nlohmann::detail::parse_event_t;
        switch (event) {
        case Event::object_start:
        case Event::array_start:
            frames_.push_back(Frame{event == Event::array_start, 0, {}, {}});
            break;
        case Event::object_end:
        case Event::array_end:
            frames_.pop_back();
            element_done();
            break;
        case Event::key: {
            Frame& top = frames_.back();
            top.key = parsed.get<std::string>();
            if (!top.keys.insert(top.key).second) {
                throw DataError(one_line(*source_ + ": duplicate key '" + path() + "'"));
            }
            break;
        }
        case Event::value:
            element_done();
            break;
        }
        return true;
    }

  private:
    struct Frame {
        bool array = false;
        std::size_t index = 0;
        std::string key;
        std::set<std::string> keys;
    };

    void element_done() {
        if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
    }

    std::string path() const {
        std::string text;
        for (const Frame& frame : frames_) {
            text = frame.array ? indexed(text, frame.index) : join(text, frame.key);
        }
        return text;
    }

    const std::string* source_;
    std::vector<Frame> frames_;
};

class Reader {
  public:
    explicit Reader(const std::string& source) : source_(source) {}

    const std::string& source() const { return source_; }

    [[noreturn]] void fail(const std::string& problem) const {
        throw DataError(one_line(source_ + ": " + problem));
    }

    [[noreturn]] void fail_key(const std::string& path, const std::string& problem) const {
        fail("key '" + path + "' " + problem);
    }

    [[noreturn]] void
    fail_type(const std::string& path, const std::string& expected, const Json& value) const {
        fail_key(path, "must be " + expected + ", but is " + describe(value));
    }

    Json parse(const std::string& text) const {
        if (std::all_of(text.begin(), text.end(), [](char c) {
                return c == ' ' || c == '\t' || c == '\n' || c == '\r';
            })) {
            fail("malformed JSON: the file is empty");
        }
        try {
            return Json::parse(text, DuplicateKeyCheck(source_));
        } catch (const Json::parse_error& e) {
            fail("malformed JSON at byte " + std::to_string(e.byte) + position(text, e.byte) +
                 ": " + detail(e.what()));
        } catch (const Json::exception& e) {
            fail("malformed JSON: " + detail(e.what()));
        }
    }

    /// The member `key` of `object` (whose path is `path`). @throws DataError if missing.
    const Json& member(const Json& object, const std::string& path, std::string_view key) const {
        auto it = object.find(key);
        if (it == object.end()) fail("missing key '" + join(path, key) + "'");
        return *it;
    }

    void only_keys(const Json& object,
                   const std::string& path,
                   std::initializer_list<std::string_view> allowed) const {
        for (const auto& item : object.items()) {
            if (std::find(allowed.begin(), allowed.end(), item.key()) == allowed.end()) {
                fail("unknown key '" + join(path, item.key()) + "'");
            }
        }
    }

    const Json& object(const Json& value, const std::string& path) const {
        if (!value.is_object()) fail_type(path, "an object", value);
        return value;
    }

    const Json& array(const Json& value,
                      const std::string& path,
                      Index expected,
                      const std::string& noun,
                      const std::string& reason) const {
        if (!value.is_array()) fail_type(path, "an array", value);
        if (static_cast<Index>(value.size()) != expected) {
            fail_key(path,
                     "has " + std::to_string(value.size()) + " " + noun +
                         (value.size() == 1 ? "" : "s") + ", but " + reason);
        }
        return value;
    }

    double number(const Json& value, const std::string& path) const {
        if (!value.is_number()) fail_type(path, "a number", value);
        const double x = value.get<double>();
        if (!std::isfinite(x)) fail_key(path, "is not finite");
        return x;
    }

    double non_negative(const Json& value, const std::string& path) const {
        const double x = number(value, path);
        if (x < 0.0) fail_key(path, "is negative (" + format_number(x) + ")");
        return x;
    }

    std::int64_t
    integer(const Json& value, const std::string& path, std::int64_t min, std::int64_t max) const {
        const std::string expected =
            "an integer between " + std::to_string(min) + " and " + std::to_string(max);
        if (!value.is_number_integer()) fail_type(path, expected, value);
        if (value.is_number_unsigned()) {
            const auto u = value.get<std::uint64_t>();
            if (u > static_cast<std::uint64_t>(max) ||
                (min > 0 && u < static_cast<std::uint64_t>(min))) {
                fail_type(path, expected, value);
            }
            return static_cast<std::int64_t>(u);
        }
        const auto i = value.get<std::int64_t>();
        if (i < min || i > max) fail_type(path, expected, value);
        return i;
    }

    int int_value(const Json& value, const std::string& path, int min) const {
        return static_cast<int>(integer(value, path, min, std::numeric_limits<int>::max()));
    }

    std::uint64_t unsigned_integer(const Json& value, const std::string& path) const {
        if (!value.is_number_unsigned()) {
            fail_type(path, "an integer between 0 and 18446744073709551615", value);
        }
        return value.get<std::uint64_t>();
    }

    bool boolean(const Json& value, const std::string& path) const {
        if (!value.is_boolean()) fail_type(path, "a boolean", value);
        return value.get<bool>();
    }

    std::string string(const Json& value, const std::string& path) const {
        if (!value.is_string()) fail_type(path, "a string", value);
        return value.get<std::string>();
    }

    template <class Enum>
    Enum enumeration(const Json& value,
                     const std::string& path,
                     std::initializer_list<Enum> values) const {
        const std::string text = string(value, path);
        for (Enum candidate : values) {
            if (text == to_string(candidate)) return candidate;
        }
        fail_key(path,
                 "has unknown value '" + shorten(text) + "' (expected " + alternatives(values) +
                     ")");
    }

    Vector
    vector(const Json& value, const std::string& path, Index n, const std::string& reason) const {
        array(value, path, n, "value", reason);
        Vector v(n);
        for (Index i = 0; i < n; ++i) {
            const auto u = static_cast<std::size_t>(i);
            v(i) = number(value[u], indexed(path, u));
        }
        return v;
    }

    /// An array of `rows` rows of `cols` numbers each.
    Matrix matrix(const Json& value,
                  const std::string& path,
                  Index rows,
                  const std::string& row_reason,
                  Index cols,
                  const std::string& col_reason) const {
        array(value, path, rows, "row", row_reason);
        Matrix m(rows, cols);
        for (Index i = 0; i < rows; ++i) {
            const auto u = static_cast<std::size_t>(i);
            m.row(i) = vector(value[u], indexed(path, u), cols, col_reason).transpose();
        }
        return m;
    }

    std::vector<std::string>
    names(const Json& value, const std::string& path, Index n, const std::string& reason) const {
        array(value, path, n, "name", reason);
        std::vector<std::string> out;
        std::set<std::string> seen;
        for (std::size_t i = 0; i < value.size(); ++i) {
            out.push_back(string(value[i], indexed(path, i)));
            if (!seen.insert(out.back()).second) {
                fail_key(path, "lists the name '" + out.back() + "' twice");
            }
        }
        return out;
    }

    std::vector<std::string> strings(const Json& value, const std::string& path) const {
        if (!value.is_array()) fail_type(path, "an array", value);
        std::vector<std::string> out;
        for (std::size_t i = 0; i < value.size(); ++i) {
            out.push_back(string(value[i], indexed(path, i)));
        }
        return out;
    }

    std::vector<double> doubles(const Json& value, const std::string& path) const {
        if (!value.is_array()) fail_type(path, "an array", value);
        std::vector<double> out;
        for (std::size_t i = 0; i < value.size(); ++i) {
            out.push_back(number(value[i], indexed(path, i)));
        }
        return out;
    }

    /// `coefficient_names` must be "(intercept)" followed by `names`.
    void coefficient_names(const Json& value,
                           const std::string& path,
                           const std::vector<std::string>& names,
                           const std::string& names_key) const {
        array(value,
              path,
              static_cast<Index>(names.size()) + 1,
              "name",
              "'(intercept)' and the " + std::to_string(names.size()) + " names of '" + names_key +
                  "' are expected");
        for (std::size_t i = 0; i <= names.size(); ++i) {
            const std::string expected = i == 0 ? std::string(intercept_name) : names[i - 1];
            const std::string actual = string(value[i], indexed(path, i));
            if (actual != expected) {
                fail_key(indexed(path, i),
                         "is '" + actual + "', but '" + expected + "' was expected" +
                             (i == 0 ? "" : " (from '" + names_key + "')"));
            }
        }
    }

    /// A q×q covariance: numbers, symmetric, of the structure of `type`, positive definite.
    CovarianceFactor
    covariance(const Json& value, const std::string& path, Index q, CovarianceType type) const {
        const std::string reason = "n_outputs is " + std::to_string(q);
        const Matrix s = matrix(value, path, q, reason, q, reason);
        auto problem = symmetry_problem(s);
        if (!problem) problem = type_problem(type, s);
        if (problem) fail_key(path, "is " + problem->value + ", but " + problem->requirement);
        auto factor = try_factor(s);
        if (!factor) fail_key(path, "is not symmetric positive definite");
        return *std::move(factor);
    }

  private:
    /// " (line L, column C)" of nlohmann's 1-based byte position (the last character read).
    static std::string position(const std::string& text, std::size_t byte) {
        const std::size_t end = std::min(byte > 0 ? byte - 1 : 0, text.size());
        std::size_t line = 1;
        std::size_t line_start = 0;
        for (std::size_t i = 0; i < end; ++i) {
            if (text[i] == '\n') {
                ++line;
                line_start = i + 1;
            }
        }
        return " (line " + std::to_string(line) + ", column " +
               std::to_string(end - line_start + 1) + ")";
    }

    /// nlohmann's message without its "[json.exception...] parse error at line L, column C: "
    /// prefix.
    static std::string detail(const std::string& what) {
        std::string text = what;
        const auto bracket = text.find("] ");
        if (text.rfind("[json.exception.", 0) == 0 && bracket != std::string::npos) {
            text = text.substr(bracket + 2);
        }
        if (text.rfind("parse error", 0) == 0) {
            const auto colon = text.find(": ");
            if (colon != std::string::npos) text = text.substr(colon + 2);
        }
        return text;
    }

    const std::string& source_;
};

/// The `fit.sparse` object of a top-k fit (`options` already read).
ObjectiveReport read_sparse(const Reader& r,
                            const Json& value,
                            const std::string& path,
                            const Model& model,
                            const FitOptions& options) {
    constexpr auto int_max = std::numeric_limits<std::int64_t>::max();
    r.object(value, path);
    if (options.top_k == 0) {
        r.fail_key(path, "must be null unless top-k gating is on ('fit.options.top_k' is 0)");
    }
    r.only_keys(value,
                path,
                {"balance_loss",
                 "switch_loss",
                 "importance_cv2",
                 "load_cv2",
                 "load",
                 "dropped",
                 "dropped_samples"});
    auto at = [&](std::string_view key) -> const Json& { return r.member(value, path, key); };
    auto key = [&](std::string_view name) { return join(path, name); };
    ObjectiveReport sparse;
    sparse.balance_loss = r.non_negative(at("balance_loss"), key("balance_loss"));
    sparse.switch_loss = r.non_negative(at("switch_loss"), key("switch_loss"));
    sparse.importance_cv2 = r.non_negative(at("importance_cv2"), key("importance_cv2"));
    sparse.load_cv2 = r.non_negative(at("load_cv2"), key("load_cv2"));
    sparse.load = r.vector(at("load"),
                           key("load"),
                           model.n_experts(),
                           "n_experts is " + std::to_string(model.n_experts()));
    for (Index k = 0; k < sparse.load.size(); ++k) {
        if (sparse.load(k) < 0.0) {
            r.fail_key(indexed(key("load"), static_cast<std::size_t>(k)), "is negative");
        }
    }
    sparse.dropped = r.integer(at("dropped"), key("dropped"), 0, int_max);
    sparse.dropped_samples = r.integer(at("dropped_samples"), key("dropped_samples"), 0, int_max);
    return sparse;
}

FitRecord read_fit(const Reader& r, const Json& value, const Model& model) {
    const std::string path = "fit";
    r.object(value, path);
    r.only_keys(value,
                path,
                {"log_likelihood",
                 "n_parameters",
                 "n_samples",
                 "aic",
                 "bic",
                 "iterations",
                 "converged",
                 "trace",
                 "seed",
                 "best_restart",
                 "restart_log_likelihoods",
                 "warnings",
                 "mse",
                 "hard_disagreement",
                 "sparse",
                 "options"});
    auto at = [&](std::string_view key) -> const Json& { return r.member(value, path, key); };
    auto key = [&](std::string_view name) { return join(path, name); };

    FitRecord fit;
    fit.log_likelihood = r.number(at("log_likelihood"), key("log_likelihood"));
    fit.n_parameters = r.integer(
        at("n_parameters"), key("n_parameters"), 0, std::numeric_limits<std::int64_t>::max());
    fit.n_samples = r.number(at("n_samples"), key("n_samples"));
    if (fit.n_samples < 0.0) r.fail_key(key("n_samples"), "is negative");
    fit.aic = r.number(at("aic"), key("aic"));
    fit.bic = r.number(at("bic"), key("bic"));
    fit.iterations = r.int_value(at("iterations"), key("iterations"), 0);
    fit.converged = r.boolean(at("converged"), key("converged"));
    fit.trace = r.doubles(at("trace"), key("trace"));
    fit.seed = r.unsigned_integer(at("seed"), key("seed"));
    fit.best_restart = r.int_value(at("best_restart"), key("best_restart"), 0);
    {
        // null marks a start that did not reach a finite log-likelihood: read as -infinity.
        const std::string rpath = key("restart_log_likelihoods");
        const Json& values = at("restart_log_likelihoods");
        if (!values.is_array()) r.fail_type(rpath, "an array", values);
        for (std::size_t i = 0; i < values.size(); ++i) {
            fit.restart_log_likelihoods.push_back(values[i].is_null()
                                                      ? -std::numeric_limits<double>::infinity()
                                                      : r.number(values[i], indexed(rpath, i)));
        }
    }
    fit.warnings = r.strings(at("warnings"), key("warnings"));

    const std::string opath = key("options");
    const Json& o = r.object(at("options"), opath);
    r.only_keys(o,
                opath,
                {"expert",
                 "gate",
                 "covariance",
                 "n_experts",
                 "tree",
                 "max_iter",
                 "tol",
                 "restarts",
                 "seed",
                 "init",
                 "kmeans_iter",
                 "reg_covar",
                 "min_expert_size",
                 "gate_l2",
                 "newton_steps",
                 "method",
                 "variant",
                 "top_k",
                 "balance_loss",
                 "balance_weight",
                 "capacity_factor",
                 "gate_noise",
                 "upcycle_noise"});
    auto oat = [&](std::string_view name) -> const Json& { return r.member(o, opath, name); };
    auto okey = [&](std::string_view name) { return join(opath, name); };
    FitOptions& options = fit.options;
    options.expert = r.enumeration(oat("expert"), okey("expert"), expert_kinds);
    options.gate = r.enumeration(oat("gate"), okey("gate"), gate_kinds);
    options.covariance = r.enumeration(oat("covariance"), okey("covariance"), covariance_types);
    options.n_experts =
        r.integer(oat("n_experts"), okey("n_experts"), 1, std::numeric_limits<std::int64_t>::max());
    {
        const Json& tree = oat("tree");
        if (!tree.is_array()) r.fail_key(okey("tree"), "must be an array of branching factors");
        for (std::size_t l = 0; l < tree.size(); ++l)
            options.tree.push_back(r.integer(tree[l], indexed(okey("tree"), l), 2, 4096));
    }
    options.max_iter = r.int_value(oat("max_iter"), okey("max_iter"), 1);
    options.tol = r.non_negative(oat("tol"), okey("tol"));
    options.restarts = r.int_value(oat("restarts"), okey("restarts"), 1);
    options.seed = r.unsigned_integer(oat("seed"), okey("seed"));
    options.init = r.enumeration(oat("init"), okey("init"), init_methods);
    options.kmeans_iter = r.int_value(oat("kmeans_iter"), okey("kmeans_iter"), 0);
    options.regularization.reg_covar = r.non_negative(oat("reg_covar"), okey("reg_covar"));
    options.regularization.min_expert_size =
        r.number(oat("min_expert_size"), okey("min_expert_size"));
    options.gate_options.gate_l2 = r.non_negative(oat("gate_l2"), okey("gate_l2"));
    options.gate_options.newton_steps = r.int_value(oat("newton_steps"), okey("newton_steps"), 1);
    // Options added after the first files were written: optional on input, the defaults when
    // absent (every file written before them was a standard, dense fit).
    auto optional = [&](std::string_view name) -> const Json* {
        const auto it = o.find(name);
        return it == o.end() ? nullptr : &*it;
    };
    if (const Json* v = optional("method"))
        options.method = r.enumeration(*v, okey("method"), fit_methods);
    if (const Json* v = optional("variant"))
        options.variant = r.enumeration(*v, okey("variant"), variants);
    if (const Json* v = optional("top_k"))
        options.top_k = r.integer(*v, okey("top_k"), 0, std::numeric_limits<std::int64_t>::max());
    if (const Json* v = optional("balance_loss"))
        options.balance_loss = r.enumeration(*v, okey("balance_loss"), balance_losses);
    if (const Json* v = optional("balance_weight"))
        options.balance_weight = r.non_negative(*v, okey("balance_weight"));
    if (const Json* v = optional("capacity_factor"))
        options.capacity_factor = r.non_negative(*v, okey("capacity_factor"));
    if (const Json* v = optional("gate_noise"))
        options.gate_noise = r.boolean(*v, okey("gate_noise"));
    if (const Json* v = optional("upcycle_noise"))
        options.upcycle_noise = r.non_negative(*v, okey("upcycle_noise"));

    // The options must describe the model they produced.
    auto mismatch = [&](std::string_view name, const std::string& actual, const std::string& top) {
        r.fail_key(okey(name),
                   "is " + actual + ", but the model's '" + std::string(name) + "' is " + top);
    };
    if (options.expert != model.experts.kind) {
        mismatch(
            "expert", quoted(to_string(options.expert)), quoted(to_string(model.experts.kind)));
    }
    if (options.gate != gate_kind(model.gate)) {
        mismatch("gate", quoted(to_string(options.gate)), quoted(to_string(gate_kind(model.gate))));
    }
    if (options.covariance != model.experts.covariance_type) {
        mismatch("covariance",
                 quoted(to_string(options.covariance)),
                 quoted(to_string(model.experts.covariance_type)));
    }
    if (options.n_experts != model.n_experts()) {
        mismatch("n_experts", std::to_string(options.n_experts), std::to_string(model.n_experts()));
    }
    // Whatever the checks above do not cover, the options' own validation does.
    try {
        validate(options, r.source().c_str());
    } catch (const InvalidArgument& e) {
        throw DataError(one_line(e.what()));
    }

    // Results added after the first files were written: optional on input; null or absent
    // means not recorded.
    auto recorded = [&](std::string_view name) -> const Json* {
        const auto it = value.find(name);
        return it == value.end() || it->is_null() ? nullptr : &*it;
    };
    if (const Json* v = recorded("mse")) fit.mse = r.non_negative(*v, key("mse"));
    if (const Json* v = recorded("hard_disagreement")) {
        if (options.variant != Variant::Hard) {
            r.fail_key(key("hard_disagreement"),
                       "must be null unless the variant is 'hard' (it is " +
                           quoted(to_string(options.variant)) + ")");
        }
        fit.hard_disagreement = r.non_negative(*v, key("hard_disagreement"));
        if (fit.hard_disagreement > 1.0) r.fail_key(key("hard_disagreement"), "is above 1");
    }
    if (const Json* v = recorded("sparse")) fit.sparse = read_sparse(r, *v, key("sparse"), model, options);
    return fit;
}

/// A diagnostics number: a finite number, or null (read as NaN).
double nullable_number(const Reader& r, const Json& value, const std::string& path) {
    if (value.is_null()) return std::numeric_limits<double>::quiet_NaN();
    return r.number(value, path);
}

Diagnostics read_diagnostics(const Reader& r, const Json& value, const Model& model) {
    const std::string path = "diagnostics";
    constexpr auto int_max = std::numeric_limits<std::int64_t>::max();
    r.object(value, path);
    r.only_keys(value,
                path,
                {"log_likelihood",
                 "n_parameters",
                 "n_samples",
                 "aic",
                 "bic",
                 "icl",
                 "icl_map",
                 "entropy",
                 "normalized_entropy",
                 "experts",
                 "tree_nodes",
                 "fit_history",
                 "selection"});
    auto at = [&](std::string_view key) -> const Json& { return r.member(value, path, key); };
    auto key = [&](std::string_view name) { return join(path, name); };
    auto num = [&](const Json& object, const std::string& opath, std::string_view name) {
        return nullable_number(r, r.member(object, opath, name), join(opath, name));
    };

    Diagnostics d;
    d.log_likelihood = num(value, path, "log_likelihood");
    d.n_parameters = r.integer(at("n_parameters"), key("n_parameters"), 0, int_max);
    d.n_samples = num(value, path, "n_samples");
    d.aic = num(value, path, "aic");
    d.bic = num(value, path, "bic");
    d.icl = num(value, path, "icl");
    d.icl_map = num(value, path, "icl_map");
    d.entropy = num(value, path, "entropy");
    d.normalized_entropy = num(value, path, "normalized_entropy");

    const std::string k_reason = "n_experts is " + std::to_string(model.n_experts());
    const Json& experts =
        r.array(at("experts"), key("experts"), model.n_experts(), "entry", k_reason);
    for (std::size_t k = 0; k < experts.size(); ++k) {
        const std::string epath = indexed(key("experts"), k);
        const Json& e = r.object(experts[k], epath);
        r.only_keys(e,
                    epath,
                    {"effective_size",
                     "gate_mass",
                     "hard_size",
                     "average_posterior",
                     "min_eigenvalue",
                     "max_eigenvalue",
                     "condition_number"});
        ExpertDiagnostics item;
        item.effective_size = num(e, epath, "effective_size");
        item.gate_mass = num(e, epath, "gate_mass");
        item.hard_size = num(e, epath, "hard_size");
        item.average_posterior = num(e, epath, "average_posterior");
        item.min_eigenvalue = num(e, epath, "min_eigenvalue");
        item.max_eigenvalue = num(e, epath, "max_eigenvalue");
        item.condition_number = num(e, epath, "condition_number");
        d.experts.push_back(item);
    }

    const auto* tree = std::get_if<TreeGate>(&model.gate);
    const Index n_nodes = tree != nullptr ? tree_n_nodes(tree->branching) : 0;
    const Json& nodes = r.array(at("tree_nodes"),
                                key("tree_nodes"),
                                n_nodes,
                                "node",
                                "the gate has " + std::to_string(n_nodes) + " internal nodes");
    for (std::size_t j = 0; j < nodes.size(); ++j) {
        const std::string npath = indexed(key("tree_nodes"), j);
        const Json& t = r.object(nodes[j], npath);
        r.only_keys(
            t, npath, {"node", "depth", "responsibility_mass", "gate_entropy", "disagreement"});
        TreeNodeDiagnostics item;
        item.node = r.integer(r.member(t, npath, "node"), join(npath, "node"), 0, n_nodes - 1);
        item.depth = r.integer(r.member(t, npath, "depth"), join(npath, "depth"), 0, int_max);
        item.responsibility_mass = num(t, npath, "responsibility_mass");
        item.gate_entropy = num(t, npath, "gate_entropy");
        item.disagreement = num(t, npath, "disagreement");
        d.tree_nodes.push_back(item);
    }

    if (const auto history = value.find("fit_history"); history != value.end()) {
        const std::string hpath = key("fit_history");
        const Json& h = r.object(*history, hpath);
        r.only_keys(h,
                    hpath,
                    {"converged",
                     "interrupted",
                     "iterations",
                     "monotone",
                     "largest_decrease",
                     "restarts",
                     "interventions"});
        auto hat = [&](std::string_view name) -> const Json& { return r.member(h, hpath, name); };
        auto hkey = [&](std::string_view name) { return join(hpath, name); };
        FitHistoryDiagnostics fh;
        fh.converged = r.boolean(hat("converged"), hkey("converged"));
        fh.interrupted = r.boolean(hat("interrupted"), hkey("interrupted"));
        fh.iterations = r.int_value(hat("iterations"), hkey("iterations"), 0);
        fh.monotone = r.boolean(hat("monotone"), hkey("monotone"));
        fh.largest_decrease = num(h, hpath, "largest_decrease");
        const std::string rpath = hkey("restarts");
        const Json& rs = r.object(hat("restarts"), rpath);
        r.only_keys(rs,
                    rpath,
                    {"count", "best", "best_log_likelihood", "spread", "reached_best", "failed"});
        auto rat = [&](std::string_view name) -> const Json& { return r.member(rs, rpath, name); };
        fh.restarts.count = r.int_value(rat("count"), join(rpath, "count"), 0);
        fh.restarts.best = r.int_value(rat("best"), join(rpath, "best"), 0);
        fh.restarts.best_log_likelihood = num(rs, rpath, "best_log_likelihood");
        fh.restarts.spread = num(rs, rpath, "spread");
        fh.restarts.reached_best = r.int_value(rat("reached_best"), join(rpath, "reached_best"), 0);
        fh.restarts.failed = r.int_value(rat("failed"), join(rpath, "failed"), 0);
        const std::string ipath = hkey("interventions");
        const Json& items = hat("interventions");
        if (!items.is_array()) r.fail_type(ipath, "an array", items);
        for (std::size_t i = 0; i < items.size(); ++i) {
            const std::string itpath = indexed(ipath, i);
            const Json& it = r.object(items[i], itpath);
            r.only_keys(it, itpath, {"restart", "iteration", "kind", "expert", "message"});
            Intervention item;
            item.restart = r.int_value(r.member(it, itpath, "restart"), join(itpath, "restart"), 0);
            item.iteration =
                r.int_value(r.member(it, itpath, "iteration"), join(itpath, "iteration"), 0);
            item.kind = r.string(r.member(it, itpath, "kind"), join(itpath, "kind"));
            item.expert = r.integer(
                r.member(it, itpath, "expert"), join(itpath, "expert"), -1, model.n_experts() - 1);
            item.message = r.string(r.member(it, itpath, "message"), join(itpath, "message"));
            fh.interventions.push_back(std::move(item));
        }
        d.fit_history = std::move(fh);
    }

    if (const auto selection = value.find("selection"); selection != value.end()) {
        const std::string spath = key("selection");
        const Json& s = r.object(*selection, spath);
        r.only_keys(s, spath, {"criterion", "min_share", "candidates"});
        SelectionTable table;
        table.criterion =
            r.enumeration(r.member(s, spath, "criterion"), join(spath, "criterion"), criteria);
        table.min_share = r.non_negative(r.member(s, spath, "min_share"), join(spath, "min_share"));
        const std::string cpath = join(spath, "candidates");
        const Json& items = r.member(s, spath, "candidates");
        if (!items.is_array()) r.fail_type(cpath, "an array", items);
        for (std::size_t i = 0; i < items.size(); ++i) {
            const std::string ipath = indexed(cpath, i);
            const Json& c = r.object(items[i], ipath);
            r.only_keys(c,
                        ipath,
                        {"n_experts",
                         "covariance",
                         "gate",
                         "ok",
                         "error",
                         "log_likelihood",
                         "n_parameters",
                         "aic",
                         "bic",
                         "icl",
                         "normalized_entropy",
                         "min_share",
                         "spurious",
                         "converged",
                         "restarts",
                         "reached_best",
                         "interventions"});
            auto cat = [&](std::string_view name) -> const Json& {
                return r.member(c, ipath, name);
            };
            auto ckey = [&](std::string_view name) { return join(ipath, name); };
            SelectionCandidate item;
            item.n_experts = r.integer(cat("n_experts"), ckey("n_experts"), 1, int_max);
            item.covariance =
                r.enumeration(cat("covariance"), ckey("covariance"), covariance_types);
            item.gate = r.enumeration(cat("gate"), ckey("gate"), gate_kinds);
            item.ok = r.boolean(cat("ok"), ckey("ok"));
            item.error = r.string(cat("error"), ckey("error"));
            // A successful candidate has finite numbers; a failed one has nulls.
            auto cnum = [&](std::string_view name) {
                if (!item.ok) return nullable_number(r, cat(name), ckey(name));
                return r.number(cat(name), ckey(name));
            };
            item.log_likelihood = cnum("log_likelihood");
            item.n_parameters = r.integer(cat("n_parameters"), ckey("n_parameters"), 0, int_max);
            item.aic = cnum("aic");
            item.bic = cnum("bic");
            item.icl = cnum("icl");
            item.normalized_entropy = cnum("normalized_entropy");
            item.min_share = cnum("min_share");
            item.spurious = r.boolean(cat("spurious"), ckey("spurious"));
            item.converged = r.boolean(cat("converged"), ckey("converged"));
            item.restarts = r.int_value(cat("restarts"), ckey("restarts"), 0);
            item.reached_best = r.int_value(cat("reached_best"), ckey("reached_best"), 0);
            item.interventions = r.int_value(cat("interventions"), ckey("interventions"), 0);
            table.candidates.push_back(std::move(item));
        }
        d.selection = std::move(table);
    }
    return d;
}

} // namespace

FitRecord make_fit_record(const FitResult& result, const FitOptions& options) {
    FitRecord record;
    record.log_likelihood = result.log_likelihood;
    record.n_parameters = result.n_parameters;
    record.n_samples = result.n_samples;
    record.aic = result.aic;
    record.bic = result.bic;
    record.iterations = result.iterations;
    record.converged = result.converged;
    record.trace = result.trace;
    record.seed = options.seed;
    record.best_restart = result.best_restart;
    record.restart_log_likelihoods = result.restart_log_likelihoods;
    record.warnings = result.warnings;
    record.mse = result.mse;
    record.hard_disagreement = result.hard_disagreement;
    if (result.sparse.load.size() > 0) {
        // Only what the file stores, so that a saved record reads back equal.
        ObjectiveReport sparse;
        sparse.balance_loss = result.sparse.balance_loss;
        sparse.switch_loss = result.sparse.switch_loss;
        sparse.importance_cv2 = result.sparse.importance_cv2;
        sparse.load_cv2 = result.sparse.load_cv2;
        sparse.load = result.sparse.load;
        sparse.dropped = result.sparse.dropped;
        sparse.dropped_samples = result.sparse.dropped_samples;
        record.sparse = std::move(sparse);
    }
    record.options = options;
    // The file says which method ran: `auto` is recorded as what it resolved to (the same fit
    // whichever of the two is given again).
    record.options.method = resolved_method(options);
    return record;
}

std::string
model_to_json(const Model& model, const FitRecord* fit, const Diagnostics* diagnostics) {
    validate(model, writer);
    check_structure_for_writing(model);

    const Experts& experts = model.experts;
    Json root = Json::object();
    root["format"] = format_name;
    root["version"] = model_file_version;
    root["expert"] = to_string(experts.kind);
    root["gate"] = to_string(gate_kind(model.gate));
    root["covariance"] = to_string(experts.covariance_type);
    root["n_experts"] = static_cast<std::int64_t>(model.n_experts());
    root["n_outputs"] = static_cast<std::int64_t>(experts.n_outputs());
    root["n_inputs"] = static_cast<std::int64_t>(experts.n_inputs());
    root["n_gate_inputs"] = static_cast<std::int64_t>(model.gate_input_names.size());
    root["targets"] = names_json(model.target_names);
    root["inputs"] = names_json(model.input_names);
    root["gate_inputs"] = names_json(model.gate_input_names);
    root["top_k"] = static_cast<std::int64_t>(model.top_k);

    Json gate = Json::object();
    if (const auto* constant = std::get_if<ConstantGate>(&model.gate)) {
        gate["weights"] = vector_json(constant->weights);
    } else if (const auto* hash = std::get_if<HashGate>(&model.gate)) {
        gate["column"] = hash->column;
        gate["n_experts"] = static_cast<std::int64_t>(hash->n_experts);
        gate["hash"] = hash_function_name;
    } else if (const auto* softmax = std::get_if<SoftmaxGate>(&model.gate)) {
        gate["coefficients"] = matrix_json(softmax->coefficients);
        gate["coefficient_names"] = coefficient_names_json(model.gate_input_names);
    } else {
        const auto& tree = std::get<TreeGate>(model.gate);
        gate["branching"] = tree_json(tree.branching);
        gate["coefficient_names"] = coefficient_names_json(model.gate_input_names);
        Json nodes = Json::array();
        for (const Matrix& v : tree.nodes) nodes.push_back(matrix_json(v));
        gate["nodes"] = std::move(nodes);
    }
    root["gate_parameters"] = std::move(gate);

    Json expert_array = Json::array();
    for (Index k = 0; k < experts.n_experts(); ++k) {
        const auto u = static_cast<std::size_t>(k);
        Json expert = Json::object();
        if (experts.kind == ExpertKind::Gaussian) {
            expert["mean"] = vector_json(experts.coefficients[u].row(0).transpose());
        } else {
            expert["coefficients"] = matrix_json(experts.coefficients[u]);
            expert["coefficient_names"] = coefficient_names_json(model.input_names);
        }
        expert["covariance"] = matrix_json(experts.covariances[u].covariance);
        expert_array.push_back(std::move(expert));
    }
    root["experts"] = std::move(expert_array);

    if (fit != nullptr) root["fit"] = fit_json(model, *fit);
    if (diagnostics != nullptr) root["diagnostics"] = diagnostics_json(model, *diagnostics);

    std::string text;
    try {
        write_pretty(root, 0, text);
    } catch (const Json::type_error&) {
        // Only strings can fail to serialise: a name that is not valid UTF-8.
        throw_invalid_argument(writer,
                               "a name (target, input, gate input, key column or warning)",
                               "not valid UTF-8",
                               "model files are UTF-8 JSON",
                               "Re-encode the CSV header as UTF-8.");
    }
    text += "\n";
    return text;
}

ModelFile model_from_json(const std::string& text, const std::string& source) {
    const Reader r(source);
    const Json root = r.parse(text);
    if (!root.is_object()) {
        r.fail("not a moekit model file (the top-level JSON value is " + describe(root) +
               ", expected an object)");
    }

    // Format and version come first: a newer file may have keys this version does not know.
    const auto format = root.find("format");
    if (format == root.end()) r.fail("not a moekit model file (missing key 'format')");
    if (!format->is_string() || format->get<std::string>() != format_name) {
        r.fail("not a moekit model file (key 'format' is " + describe(*format) + ", expected '" +
               format_name + "')");
    }
    const auto version = r.integer(
        r.member(root, "", "version"), "version", 1, std::numeric_limits<std::int64_t>::max());
    if (version > model_file_version) {
        r.fail("written by a newer moekit (version " + std::to_string(version) +
               "); this moekit reads up to version " + std::to_string(model_file_version));
    }
    r.only_keys(root,
                "",
                {"format",
                 "version",
                 "expert",
                 "gate",
                 "covariance",
                 "n_experts",
                 "n_outputs",
                 "n_inputs",
                 "n_gate_inputs",
                 "targets",
                 "inputs",
                 "gate_inputs",
                 "top_k",
                 "gate_parameters",
                 "experts",
                 "fit",
                 "diagnostics"});
    auto at = [&](std::string_view key) -> const Json& { return r.member(root, "", key); };
    constexpr auto index_max = std::numeric_limits<std::int64_t>::max();

    const ExpertKind expert_kind = r.enumeration(at("expert"), "expert", expert_kinds);
    const GateKind kind_of_gate = r.enumeration(at("gate"), "gate", gate_kinds);
    const CovarianceType covariance_type =
        r.enumeration(at("covariance"), "covariance", covariance_types);
    const Index n_experts = r.integer(at("n_experts"), "n_experts", 1, index_max);
    const Index q = r.integer(at("n_outputs"), "n_outputs", 1, index_max);
    const Index d = r.integer(at("n_inputs"), "n_inputs", 0, index_max);
    const Index g = r.integer(at("n_gate_inputs"), "n_gate_inputs", 0, index_max);
    if (expert_kind == ExpertKind::Gaussian && d != 0) {
        r.fail_key("n_inputs", "is " + std::to_string(d) + ", but Gaussian experts take no inputs");
    }
    if (kind_of_gate == GateKind::Constant && g != 0) {
        r.fail_key("n_gate_inputs",
                   "is " + std::to_string(g) + ", but a constant gate takes no inputs");
    }
    if (kind_of_gate == GateKind::Hash && g != 0) {
        r.fail_key("n_gate_inputs",
                   "is " + std::to_string(g) +
                       ", but a hash gate takes no gate inputs (it routes by its key column)");
    }
    const std::string q_reason = "n_outputs is " + std::to_string(q);
    const std::string d_reason = "n_inputs is " + std::to_string(d);
    const std::string g_reason = "n_gate_inputs is " + std::to_string(g);
    const std::string k_reason = "n_experts is " + std::to_string(n_experts);

    Model model;
    model.target_names = r.names(at("targets"), "targets", q, q_reason);
    model.input_names = r.names(at("inputs"), "inputs", d, d_reason);
    model.gate_input_names = r.names(at("gate_inputs"), "gate_inputs", g, g_reason);
    // Sparse routing; optional on input (files written before it existed are dense).
    if (const auto top_k = root.find("top_k"); top_k != root.end()) {
        model.top_k = r.integer(*top_k, "top_k", 0, n_experts);
        if (kind_of_gate == GateKind::Tree && model.top_k > 1) {
            r.fail_key("top_k",
                       "is " + std::to_string(model.top_k) +
                           ", but a tree gate routes densely (0) or to its greedy top-1 "
                           "expert (1)");
        }
    }

    // Gate.
    const std::string gpath = "gate_parameters";
    const Json& gate = r.object(at("gate_parameters"), gpath);
    if (kind_of_gate == GateKind::Constant) {
        r.only_keys(gate, gpath, {"weights"});
        const std::string wpath = join(gpath, "weights");
        Vector weights = r.vector(r.member(gate, gpath, "weights"), wpath, n_experts, k_reason);
        for (Index k = 0; k < n_experts; ++k) {
            if (weights(k) < 0.0) {
                r.fail_key(indexed(wpath, static_cast<std::size_t>(k)),
                           "is negative (" + format_number(weights(k)) + ")");
            }
        }
        const double sum = weights.sum();
        if (!(std::abs(sum - 1.0) <= weight_sum_tolerance)) {
            r.fail_key(wpath,
                       "sums to " + format_number(sum) + ", but gate weights must sum to 1 " +
                           "(tolerance " + format_number(weight_sum_tolerance) + ")");
        }
        model.gate = ConstantGate{std::move(weights)};
    } else if (kind_of_gate == GateKind::Hash) {
        r.only_keys(gate, gpath, {"column", "n_experts", "hash"});
        HashGate hash;
        const std::string cpath = join(gpath, "column");
        hash.column = r.string(r.member(gate, gpath, "column"), cpath);
        if (hash.column.empty()) r.fail_key(cpath, "is empty, but it must name the key column");
        const std::string kpath = join(gpath, "n_experts");
        hash.n_experts = r.integer(r.member(gate, gpath, "n_experts"), kpath, 1, index_max);
        if (hash.n_experts != n_experts) {
            r.fail_key(kpath, "is " + std::to_string(hash.n_experts) + ", but " + k_reason);
        }
        const std::string hpath = join(gpath, "hash");
        const std::string function = r.string(r.member(gate, gpath, "hash"), hpath);
        if (function != hash_function_name) {
            r.fail_key(hpath,
                       "is '" + shorten(function) + "', but this moekit routes by '" +
                           hash_function_name + "' (a different hash would send samples to " +
                           "other experts)");
        }
        model.gate = std::move(hash);
    } else {
        // A softmax gate has one coefficient matrix; a tree gate one per internal node.
        auto read_softmax = [&](const Json& value,
                                const std::string& cpath,
                                Index cols,
                                const std::string& cols_reason,
                                const std::string& reference) {
            Matrix v = r.matrix(value, cpath, g + 1, g_reason + " (expected n_gate_inputs + 1 rows)", cols, cols_reason);
            for (Index i = 0; i < v.rows(); ++i) {
                if (v(i, 0) != 0.0) {
                    r.fail_key(indexed(indexed(cpath, static_cast<std::size_t>(i)), 0),
                               "is " + format_number(v(i, 0)) +
                                   ", but column 0 (the " + reference + ") must be 0");
                }
            }
            return v;
        };
        if (kind_of_gate == GateKind::Softmax) {
            r.only_keys(gate, gpath, {"coefficients", "coefficient_names"});
            Matrix v = read_softmax(r.member(gate, gpath, "coefficients"), join(gpath, "coefficients"), n_experts, k_reason, "reference expert");
            model.gate = SoftmaxGate{std::move(v)};
        } else {
            r.only_keys(gate, gpath, {"branching", "coefficient_names", "nodes"});
            const std::string bpath = join(gpath, "branching");
            const Json& bjson = r.member(gate, gpath, "branching");
            if (!bjson.is_array() || bjson.empty()) r.fail_key(bpath, "must be a non-empty array of branching factors");
            TreeGate tree;
            Index leaves = 1;
            for (std::size_t l = 0; l < bjson.size(); ++l) {
                tree.branching.push_back(r.integer(bjson[l], indexed(bpath, l), 2, 4096));
                leaves *= tree.branching.back();
                if (leaves > 4096) r.fail_key(bpath, "gives more than 4096 experts");
            }
            if (leaves != n_experts)
                r.fail_key(bpath, "has " + std::to_string(leaves) + " leaves, but " + k_reason);
            const std::string npath = join(gpath, "nodes");
            const Index n_nodes = tree_n_nodes(tree.branching);
            const Json& njson = r.array(r.member(gate, gpath, "nodes"), npath, n_nodes, "node",
                                        "the tree has " + std::to_string(n_nodes) + " internal nodes");
            const std::vector<Index> depths = tree_node_depths(tree.branching);
            for (std::size_t j = 0; j < njson.size(); ++j) {
                const Index b = tree.branching[static_cast<std::size_t>(depths[j])];
                tree.nodes.push_back(read_softmax(njson[j], indexed(npath, j), b,
                                                  "a node at depth " + std::to_string(depths[j]) + " has " +
                                                      std::to_string(b) + " children",
                                                  "reference child"));
            }
            model.gate = std::move(tree);
        }
        r.coefficient_names(r.member(gate, gpath, "coefficient_names"),
                            join(gpath, "coefficient_names"),
                            model.gate_input_names,
                            "gate_inputs");
    }

    // Experts.
    Experts& experts = model.experts;
    experts.kind = expert_kind;
    experts.covariance_type = covariance_type;
    const Json& expert_array = r.array(at("experts"), "experts", n_experts, "expert", k_reason);
    for (std::size_t u = 0; u < expert_array.size(); ++u) {
        const std::string epath = indexed("experts", u);
        const Json& expert = r.object(expert_array[u], epath);
        if (expert_kind == ExpertKind::Gaussian) {
            r.only_keys(expert, epath, {"mean", "covariance"});
            const Vector mean =
                r.vector(r.member(expert, epath, "mean"), join(epath, "mean"), q, q_reason);
            experts.coefficients.push_back(mean.transpose());
        } else {
            r.only_keys(expert, epath, {"coefficients", "coefficient_names", "covariance"});
            experts.coefficients.push_back(r.matrix(r.member(expert, epath, "coefficients"),
                                                    join(epath, "coefficients"),
                                                    d + 1,
                                                    d_reason + " (expected n_inputs + 1 rows)",
                                                    q,
                                                    q_reason));
            r.coefficient_names(r.member(expert, epath, "coefficient_names"),
                                join(epath, "coefficient_names"),
                                model.input_names,
                                "inputs");
        }
        const std::string cpath = join(epath, "covariance");
        CovarianceFactor factor =
            r.covariance(r.member(expert, epath, "covariance"), cpath, q, covariance_type);
        if (covariance_type == CovarianceType::Tied && u > 0 &&
            factor.covariance != experts.covariances[0].covariance) {
            r.fail_key(cpath,
                       "differs from 'experts[0].covariance', but covariance 'tied' requires "
                       "all experts to share one matrix");
        }
        experts.covariances.push_back(std::move(factor));
    }

    // Whatever the checks above do not cover, the model's own validation does.
    try {
        validate(model, source.c_str());
    } catch (const InvalidArgument& e) {
        throw DataError(one_line(e.what()));
    }

    ModelFile file;
    const auto fit = root.find("fit");
    if (fit != root.end()) file.fit = read_fit(r, *fit, model);
    if (const auto diagnostics = root.find("diagnostics"); diagnostics != root.end())
        file.diagnostics = read_diagnostics(r, *diagnostics, model);
    file.model = std::move(model);
    return file;
}

void save_model(const std::string& path,
                const Model& model,
                const FitRecord* fit,
                const Diagnostics* diagnostics) {
    write_file_atomic(path, model_to_json(model, fit, diagnostics));
}

ModelFile load_model(const std::string& path) {
    if (path == "-") {
        const std::string text{std::istreambuf_iterator<char>(std::cin),
                               std::istreambuf_iterator<char>()};
        if (std::cin.bad()) throw_data_error("<stdin>", 0, "", "cannot read the model file");
        return model_from_json(text, "<stdin>");
    }
    std::error_code ignored;
    if (std::filesystem::is_directory(path, ignored)) {
        throw_data_error(path, 0, "", "cannot open the model file (it is a directory)");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int error = errno;
        throw_data_error(path,
                         0,
                         "",
                         "cannot open the model file (" +
                             std::string(error != 0 ? std::strerror(error) : "unknown error") +
                             ")");
    }
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    if (in.bad()) throw_data_error(path, 0, "", "cannot read the model file");
    return model_from_json(text, path);
}

} // namespace moekit
