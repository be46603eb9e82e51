#include "moekit/dataset.hpp"

#include "moekit/errors.hpp"

#include <cmath>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace moekit {

namespace {

/// Joins pieces of text (GCC 12 warns falsely, -Wrestrict, on "literal" + std::string&&).
std::string concat(std::initializer_list<std::string_view> pieces) {
    std::string out;
    for (std::string_view piece : pieces)
        out.append(piece);
    return out;
}

std::string shape_of(const Matrix& m) {
    return concat({std::to_string(m.rows()), "x", std::to_string(m.cols())});
}

/// Generated column names: prefix1, prefix2, ...
std::vector<std::string> numbered_names(const char* prefix, Index count) {
    std::vector<std::string> names;
    names.reserve(static_cast<std::size_t>(count));
    for (Index j = 0; j < count; ++j)
        names.push_back(concat({prefix, std::to_string(j + 1)}));
    return names;
}

/// A 0×0 matrix stands for "no columns"; anything else must have n rows.
bool rows_agree(const Matrix& m, Index n) {
    return m.rows() == n || (m.rows() == 0 && m.cols() == 0);
}

void check_rows(const Matrix& m, Index n, const char* function, const char* argument) {
    if (rows_agree(m, n)) return;
    throw_invalid_argument(
        function,
        concat({argument, " shape"}),
        shape_of(m),
        concat({"it must have n = ", std::to_string(n), " rows like the other matrices"}),
        "Rows are samples; all matrices of a dataset share them.");
}

void check_finite(const Matrix& m,
                  const std::vector<std::string>& names,
                  const char* function,
                  const char* argument) {
    if (m.allFinite()) return;
    for (Index j = 0; j < m.cols(); ++j) {
        for (Index i = 0; i < m.rows(); ++i) {
            if (std::isfinite(m(i, j))) continue;
            std::string where =
                concat({argument, "(", std::to_string(i), ", ", std::to_string(j), ")"});
            if (static_cast<std::size_t>(j) < names.size())
                where += concat({" (column '", names[j], "')"});
            throw_invalid_argument(function,
                                   where,
                                   format_number(m(i, j)),
                                   "all values must be finite",
                                   "Remove or impute missing values before fitting.");
        }
    }
}

void check_names(const std::vector<std::string>& names,
                 Index columns,
                 const char* function,
                 const char* argument,
                 const char* matrix) {
    if (names.size() == static_cast<std::size_t>(columns)) return;
    throw_invalid_argument(
        function,
        concat({argument, ".size()"}),
        std::to_string(names.size()),
        concat({"it must equal ", matrix, ".cols() = ", std::to_string(columns)}),
        "Give one name per column.");
}

} // namespace

Dataset make_dataset(Matrix y, Matrix x, Matrix z) {
    Index n = 0;
    for (const Matrix* m : {&y, &x, &z}) {
        if (m->rows() > 0) {
            n = m->rows();
            break;
        }
    }
    check_rows(y, n, "make_dataset", "y");
    check_rows(x, n, "make_dataset", "x");
    check_rows(z, n, "make_dataset", "z");

    Dataset data;
    data.y = y.rows() == n ? std::move(y) : Matrix(n, 0);
    data.x = x.rows() == n ? std::move(x) : Matrix(n, 0);
    data.z = z.rows() == n ? std::move(z) : Matrix(n, 0);
    data.weights = Vector::Ones(n);
    data.target_names = numbered_names("y", data.y.cols());
    data.input_names = numbered_names("x", data.x.cols());
    data.gate_input_names = numbered_names("z", data.z.cols());
    return data;
}

void validate(const Dataset& data, const char* function) {
    const Index n = data.n_samples();
    if (n <= 0) {
        throw_invalid_argument(function,
                               "the number of samples",
                               "0",
                               "at least one sample is needed",
                               "Check that the data file has data rows.");
    }
    check_rows(data.y, n, function, "y");
    check_rows(data.x, n, function, "x");
    check_rows(data.z, n, function, "z");

    if (data.weights.size() != n) {
        throw_invalid_argument(
            function,
            "weights.size()",
            std::to_string(data.weights.size()),
            concat({"it must equal the number of samples n = ", std::to_string(n)}),
            "Use Vector::Ones(n) for unit weights.");
    }

    check_names(data.target_names, data.y.cols(), function, "target_names", "y");
    check_names(data.input_names, data.x.cols(), function, "input_names", "x");
    check_names(data.gate_input_names, data.z.cols(), function, "gate_input_names", "z");

    check_finite(data.y, data.target_names, function, "y");
    check_finite(data.x, data.input_names, function, "x");
    check_finite(data.z, data.gate_input_names, function, "z");

    for (Index i = 0; i < n; ++i) {
        const double w = data.weights(i);
        if (std::isfinite(w) && w > 0.0) continue;
        throw_invalid_argument(function,
                               concat({"weights(", std::to_string(i), ")"}),
                               format_number(w),
                               "every weight must be finite and > 0",
                               "Drop rows with zero weight instead of weighting them by 0.");
    }

    if (!data.keys.empty() && data.keys.size() != static_cast<std::size_t>(n)) {
        throw_invalid_argument(function, "keys.size()", std::to_string(data.keys.size()),
                               concat({"it must be 0 or the number of samples n = ", std::to_string(n)}));
    }
    if (!data.line_numbers.empty() && data.line_numbers.size() != static_cast<std::size_t>(n)) {
        throw_invalid_argument(
            function,
            "line_numbers.size()",
            std::to_string(data.line_numbers.size()),
            concat({"it must be 0 or the number of samples n = ", std::to_string(n)}));
    }
}

} // namespace moekit
