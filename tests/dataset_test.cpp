// Tests of make_dataset and validate (include/moekit/dataset.hpp): shapes, generated names and
// every error validate reports, with the argument and value named in the message.

#include "moekit/dataset.hpp"
#include "moekit/errors.hpp"

#include <catch2/catch.hpp>

#include <limits>
#include <string>
#include <vector>

using moekit::Dataset;
using moekit::InvalidArgument;
using moekit::make_dataset;
using moekit::Matrix;
using moekit::validate;
using moekit::Vector;

namespace {

/// A valid dataset: 4 samples, q = 1, d = 2, g = 1.
Dataset small_dataset() {
    Matrix y(4, 1);
    y << 1.0, 2.0, 3.0, 4.0;
    Matrix x(4, 2);
    x << 0.0, 1.0, 1.0, 0.0, 2.0, 2.0, -1.0, 0.5;
    Matrix z(4, 1);
    z << 0.1, 0.2, 0.3, 0.4;
    return make_dataset(y, x, z);
}

} // namespace

TEST_CASE("make_dataset fills unit weights and generated names", "[dataset]") {
    const Dataset data = small_dataset();
    CHECK(data.n_samples() == 4);
    CHECK(data.n_outputs() == 1);
    CHECK(data.n_inputs() == 2);
    CHECK(data.n_gate_inputs() == 1);
    CHECK(data.weights.size() == 4);
    CHECK(data.weights.isOnes());
    CHECK(data.total_weight() == 4.0);
    CHECK(data.target_names == std::vector<std::string>{"y1"});
    CHECK(data.input_names == std::vector<std::string>{"x1", "x2"});
    CHECK(data.gate_input_names == std::vector<std::string>{"z1"});
    CHECK(data.line_numbers.empty());
    CHECK_NOTHROW(validate(data, "test"));
}

TEST_CASE("make_dataset gives empty matrices n rows and zero columns", "[dataset]") {
    Matrix y(3, 2);
    y.setZero();
    const Dataset only_y = make_dataset(y);
    CHECK(only_y.x.rows() == 3);
    CHECK(only_y.x.cols() == 0);
    CHECK(only_y.z.rows() == 3);
    CHECK(only_y.z.cols() == 0);
    CHECK(only_y.input_names.empty());
    CHECK_NOTHROW(validate(only_y, "test"));

    Matrix x(5, 1);
    x.setOnes();
    const Dataset only_x = make_dataset(Matrix(), x);
    CHECK(only_x.n_samples() == 5);
    CHECK(only_x.y.rows() == 5);
    CHECK(only_x.y.cols() == 0);
    CHECK(only_x.target_names.empty());
    CHECK_NOTHROW(validate(only_x, "test"));
}

TEST_CASE("make_dataset rejects matrices whose rows disagree", "[dataset]") {
    REQUIRE_THROWS_MATCHES(make_dataset(Matrix::Zero(3, 1), Matrix::Zero(2, 1)),
                           InvalidArgument,
                           Catch::Message("make_dataset: x shape is 2x1, but it must have n = 3 "
                                          "rows like the other matrices. Rows are samples; all "
                                          "matrices of a dataset share them."));
}

TEST_CASE("validate accepts a 0x0 matrix as no columns", "[dataset]") {
    Dataset data = small_dataset();
    data.z = Matrix();
    data.gate_input_names.clear();
    CHECK_NOTHROW(validate(data, "test"));
}

TEST_CASE("validate rejects a dataset without samples", "[dataset]") {
    REQUIRE_THROWS_MATCHES(validate(Dataset{}, "fit"),
                           InvalidArgument,
                           Catch::Message("fit: the number of samples is 0, but at least one "
                                          "sample is needed. Check that the data file has data "
                                          "rows."));
}

TEST_CASE("validate rejects matrices with the wrong number of rows", "[dataset]") {
    Dataset data = small_dataset();
    data.x = Matrix::Zero(3, 2);
    REQUIRE_THROWS_WITH(validate(data, "fit"),
                        Catch::StartsWith("fit: x shape is 3x2, but it must have n = 4 rows"));
    data = small_dataset();
    data.z = Matrix::Zero(5, 1);
    REQUIRE_THROWS_WITH(validate(data, "fit"),
                        Catch::StartsWith("fit: z shape is 5x1, but it must have n = 4 rows"));
}

TEST_CASE("validate rejects weights of the wrong size or value", "[dataset]") {
    Dataset data = small_dataset();
    data.weights = Vector::Ones(3);
    REQUIRE_THROWS_MATCHES(validate(data, "fit"),
                           InvalidArgument,
                           Catch::Message("fit: weights.size() is 3, but it must equal the number "
                                          "of samples n = 4. Use Vector::Ones(n) for unit "
                                          "weights."));

    data = small_dataset();
    data.weights(2) = 0.0;
    REQUIRE_THROWS_MATCHES(validate(data, "fit"),
                           InvalidArgument,
                           Catch::Message("fit: weights(2) is 0, but every weight must be finite "
                                          "and > 0. Drop rows with zero weight instead of "
                                          "weighting them by 0."));
    data.weights(2) = -1.5;
    REQUIRE_THROWS_WITH(validate(data, "fit"), Catch::StartsWith("fit: weights(2) is -1.5, but"));
    data.weights(2) = std::numeric_limits<double>::infinity();
    REQUIRE_THROWS_WITH(validate(data, "fit"), Catch::StartsWith("fit: weights(2) is inf, but"));
    data.weights(2) = std::numeric_limits<double>::quiet_NaN();
    REQUIRE_THROWS_WITH(validate(data, "fit"), Catch::StartsWith("fit: weights(2) is nan, but"));
}

TEST_CASE("validate rejects non-finite values and names the cell", "[dataset]") {
    Dataset data = small_dataset();
    data.x(3, 1) = std::numeric_limits<double>::quiet_NaN();
    REQUIRE_THROWS_MATCHES(validate(data, "predict"),
                           InvalidArgument,
                           Catch::Message("predict: x(3, 1) (column 'x2') is nan, but all values "
                                          "must be finite. Remove or impute missing values "
                                          "before fitting."));
    data = small_dataset();
    data.y(0, 0) = -std::numeric_limits<double>::infinity();
    REQUIRE_THROWS_WITH(validate(data, "fit"),
                        Catch::StartsWith("fit: y(0, 0) (column 'y1') is -inf, but"));
    data = small_dataset();
    data.z(2, 0) = std::numeric_limits<double>::infinity();
    REQUIRE_THROWS_WITH(validate(data, "fit"),
                        Catch::StartsWith("fit: z(2, 0) (column 'z1') is inf, but"));
}

TEST_CASE("validate rejects names that do not match the columns", "[dataset]") {
    Dataset data = small_dataset();
    data.input_names.pop_back();
    REQUIRE_THROWS_MATCHES(validate(data, "fit"),
                           InvalidArgument,
                           Catch::Message("fit: input_names.size() is 1, but it must equal "
                                          "x.cols() = 2. Give one name per column."));
    data = small_dataset();
    data.target_names.push_back("extra");
    REQUIRE_THROWS_WITH(validate(data, "fit"),
                        Catch::StartsWith("fit: target_names.size() is 2, but it must equal "
                                          "y.cols() = 1"));
    data = small_dataset();
    data.gate_input_names.clear();
    REQUIRE_THROWS_WITH(validate(data, "fit"),
                        Catch::StartsWith("fit: gate_input_names.size() is 0, but it must equal "
                                          "z.cols() = 1"));
}

TEST_CASE("validate rejects line numbers of the wrong length", "[dataset]") {
    Dataset data = small_dataset();
    data.line_numbers = {2, 3, 4, 5};
    CHECK_NOTHROW(validate(data, "fit"));
    data.line_numbers = {2, 3};
    REQUIRE_THROWS_MATCHES(validate(data, "fit"),
                           InvalidArgument,
                           Catch::Message("fit: line_numbers.size() is 2, but it must be 0 or "
                                          "the number of samples n = 4."));
}
