// Tests of the CSV reader and writers (include/moekit/csv.hpp). Every error case checks the
// whole one-line message: file, line, column, problem and offending text. The files are written
// into a fresh temporary directory per test case.

#include "moekit/csv.hpp"
#include "moekit/errors.hpp"

#include "support/thread_count.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <unistd.h>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fs = std::filesystem;
using moekit::CsvReport;
using moekit::CsvSpec;
using moekit::DataError;
using moekit::Dataset;
using moekit::Index;
using moekit::InvalidArgument;
using moekit::Matrix;
using moekit::MissingPolicy;
using moekit::read_csv;

namespace {

/// A fresh directory under the system temporary directory, removed with its contents.
class TempDir {
  public:
    TempDir() {
        static int counter = 0;
        path_ = fs::temp_directory_path() /
                ("moekit_csv_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }

    /// Writes `content` byte for byte to `name` in the directory; returns its path.
    std::string write(const std::string& name, const std::string& content) const {
        const fs::path file = path_ / name;
        std::ofstream out(file, std::ios::binary);
        out << content;
        out.close();
        REQUIRE(out.good());
        return file.string();
    }

    std::string path(const std::string& name) const { return (path_ / name).string(); }
    const fs::path& root() const { return path_; }

    /// Names of the entries in the directory, sorted.
    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& entry : fs::directory_iterator(path_)) {
            names.push_back(entry.path().filename().string());
        }
        std::sort(names.begin(), names.end());
        return names;
    }

  private:
    fs::path path_;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

CsvSpec spec_of(std::vector<std::string> targets,
                std::vector<std::string> inputs = {},
                std::vector<std::string> gate_inputs = {}) {
    CsvSpec spec;
    spec.targets = std::move(targets);
    spec.inputs = std::move(inputs);
    spec.gate_inputs = std::move(gate_inputs);
    return spec;
}

/// The message of the DataError that `f` throws; the test fails if it throws nothing.
template <class F> std::string data_error(F&& f) {
    try {
        f();
    } catch (const DataError& e) {
        return e.what();
    }
    FAIL("expected a moekit::DataError");
    return {};
}

/// The message of the DataError read_csv throws for a file with `content`, with the file's path
/// (which must start the message) replaced by "FILE".
std::string read_error(const std::string& content, const CsvSpec& spec) {
    TempDir dir;
    const std::string path = dir.write("bad.csv", content);
    std::string message = data_error([&] { read_csv(path, spec); });
    if (message.compare(0, path.size(), path) == 0) message.replace(0, path.size(), "FILE");
    return message;
}

using moekit_test::ThreadCount;

/// Whether two matrices hold the same bits (NaN-free data: == would do, but -0 vs 0 would not).
bool same_bits(const Matrix& a, const Matrix& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           std::equal(a.data(), a.data() + a.size(), b.data(), [](double x, double y) {
               return std::memcmp(&x, &y, sizeof x) == 0;
           });
}

/// Writes `text` to `path` with C stdio (large files).
void write_text(const std::string& path, const std::string& text) {
    std::FILE* out = std::fopen(path.c_str(), "wb");
    REQUIRE(out != nullptr);
    REQUIRE(std::fwrite(text.data(), 1, text.size(), out) == text.size());
    REQUIRE(std::fclose(out) == 0);
}

/// Saves a standard stream's file descriptor and puts it back afterwards.
class RedirectFd {
  public:
    RedirectFd(int fd, const std::string& file, int flags) : fd_(fd), saved_(::dup(fd)) {
        REQUIRE(saved_ >= 0);
        const int replacement = ::open(file.c_str(), flags, 0644);
        REQUIRE(replacement >= 0);
        REQUIRE(::dup2(replacement, fd_) == fd_);
        ::close(replacement);
    }
    RedirectFd(const RedirectFd&) = delete;
    RedirectFd& operator=(const RedirectFd&) = delete;
    ~RedirectFd() {
        ::dup2(saved_, fd_);
        ::close(saved_);
    }

  private:
    int fd_;
    int saved_;
};

} // namespace

// ------------------------------------------------------------------------------------------------
// Reading

TEST_CASE("read_csv reads the requested columns with names, weights and line numbers", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("basic.csv", "a,b,c,label\n1,2,3,x\n4,5,6,y\n7,8,9,z\n");
    CsvReport report;
    const Dataset data = read_csv(path, spec_of({"c"}, {"a", "b"}), &report);

    REQUIRE(data.n_samples() == 3);
    REQUIRE(data.y.rows() == 3);
    REQUIRE(data.y.cols() == 1);
    REQUIRE(data.x.rows() == 3);
    REQUIRE(data.x.cols() == 2);
    REQUIRE(data.z.rows() == 3);
    REQUIRE(data.z.cols() == 0);
    CHECK(data.y(0, 0) == 3.0);
    CHECK(data.y(2, 0) == 9.0);
    CHECK(data.x(0, 0) == 1.0);
    CHECK(data.x(1, 1) == 5.0);
    CHECK(data.x(2, 0) == 7.0);
    CHECK(data.weights.size() == 3);
    CHECK(data.weights.isOnes());
    CHECK(data.target_names == std::vector<std::string>{"c"});
    CHECK(data.input_names == std::vector<std::string>{"a", "b"});
    CHECK(data.gate_input_names.empty());
    CHECK(data.line_numbers == std::vector<long>{2, 3, 4});
    CHECK(report.rows_read == 3);
    CHECK(report.rows_dropped == 0);
}

TEST_CASE("read_csv takes the columns in the order requested, not the file order", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("order.csv", "a,b,c\n1,2,3\n4,5,6\n");
    const Dataset data = read_csv(path, spec_of({"b"}, {"c", "a"}));
    REQUIRE(data.x.cols() == 2);
    CHECK(data.x(0, 0) == 3.0);
    CHECK(data.x(0, 1) == 1.0);
    CHECK(data.x(1, 0) == 6.0);
    CHECK(data.x(1, 1) == 4.0);
    CHECK(data.y(1, 0) == 5.0);
    CHECK(data.input_names == std::vector<std::string>{"c", "a"});
}

TEST_CASE("read_csv allows one column in several roles", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("roles.csv", "x1,x2,y\n1,2,10\n3,4,20\n");
    const Dataset data = read_csv(path, spec_of({"y"}, {"x1", "x2"}, {"x2", "x1"}));
    REQUIRE(data.z.cols() == 2);
    CHECK(data.z.col(0) == data.x.col(1));
    CHECK(data.z.col(1) == data.x.col(0));
    CHECK(data.gate_input_names == std::vector<std::string>{"x2", "x1"});

    // A column may even be a target and an input at once.
    const Dataset same = read_csv(path, spec_of({"y"}, {"y"}));
    CHECK(same.y.col(0) == same.x.col(0));
}

TEST_CASE("read_csv handles quoted fields with delimiters and doubled quotes", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("quoted.csv",
                                       "\"name, first\",x,\"say \"\"hi\"\"\"\n"
                                       "\"Smith, J\",1.5,\"2\"\n"
                                       "\"a \"\"quoted\"\" word\", \"-3\" ,4\n");
    const Dataset data = read_csv(path, spec_of({"say \"hi\""}, {"x"}));
    REQUIRE(data.n_samples() == 2);
    CHECK(data.x(0, 0) == 1.5);
    CHECK(data.x(1, 0) == -3.0);
    CHECK(data.y(0, 0) == 2.0);
    CHECK(data.y(1, 0) == 4.0);
    CHECK(moekit::read_csv_header(path) ==
          std::vector<std::string>{"name, first", "x", "say \"hi\""});
}

TEST_CASE("read_csv accepts CRLF line ends", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("crlf.csv", "a,b\r\n1,2\r\n3,4\r\n");
    const Dataset data = read_csv(path, spec_of({"b"}, {"a"}));
    REQUIRE(data.n_samples() == 2);
    CHECK(data.y(0, 0) == 2.0);
    CHECK(data.y(1, 0) == 4.0);
    CHECK(moekit::read_csv_header(path) == std::vector<std::string>{"a", "b"});
}

TEST_CASE("read_csv skips a UTF-8 byte-order mark", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("bom.csv",
                                       "\xEF\xBB\xBF"
                                       "a,b\n1,2\n");
    const Dataset data = read_csv(path, spec_of({"a"}));
    CHECK(data.y(0, 0) == 1.0);
    CHECK(moekit::read_csv_header(path) == std::vector<std::string>{"a", "b"});
}

TEST_CASE("read_csv uses the configured delimiter", "[csv]") {
    TempDir dir;
    SECTION("semicolon") {
        const std::string path = dir.write("semi.csv", "a;b;c\n1.5;\"x;y\";2\n");
        CsvSpec spec = spec_of({"c"}, {"a"});
        spec.delimiter = ';';
        const Dataset data = read_csv(path, spec);
        CHECK(data.x(0, 0) == 1.5);
        CHECK(data.y(0, 0) == 2.0);
        CHECK(moekit::read_csv_header(path, ';') == std::vector<std::string>{"a", "b", "c"});
    }
    SECTION("tab, where blanks around cells are still trimmed but tabs separate") {
        const std::string path = dir.write("tab.tsv", "a\tb\n 1 \t2\n\t3\n  \n\t\n");
        CsvSpec spec = spec_of({"b"}, {"a"});
        spec.delimiter = '\t';
        spec.missing = MissingPolicy::Drop;
        CsvReport report;
        const Dataset data = read_csv(path, spec, &report);
        REQUIRE(data.n_samples() == 1);
        CHECK(data.x(0, 0) == 1.0);
        CHECK(data.y(0, 0) == 2.0);
        // "\t3" has an empty first cell; "  " is a blank line; "\t" is a row of empty cells.
        CHECK(report.rows_read == 3);
        CHECK(report.rows_dropped == 2);
    }
}

TEST_CASE("read_csv reads a final line without a newline", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("noeol.csv", "a\n1\n2");
    const Dataset data = read_csv(path, spec_of({"a"}));
    REQUIRE(data.n_samples() == 2);
    CHECK(data.y(1, 0) == 2.0);
}

TEST_CASE("read_csv skips blank lines and keeps the true line numbers", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("blank.csv", "\na,b\n1,2\n\n  \t\n3,4\n\n");
    CsvReport report;
    const Dataset data = read_csv(path, spec_of({"a"}, {"b"}), &report);
    REQUIRE(data.n_samples() == 2);
    CHECK(data.line_numbers == std::vector<long>{3, 6});
    CHECK(report.rows_read == 2);
    CHECK(data.y(1, 0) == 3.0);
}

TEST_CASE("read_csv parses numbers exactly and independently of the locale", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("numbers.csv",
                                       "v\n0.1\n1e-300\n-2.5E+3\n+4\n  7  \n\"\t8.25 \"\n"
                                       "4.9406564584124654e-324\n1.7976931348623157e308\n"
                                       "-0\n.5\n123456789012345678901234567890\n");
    const Dataset data = read_csv(path, spec_of({"v"}));
    REQUIRE(data.n_samples() == 11);
    CHECK(data.y(0, 0) == 0.1);
    CHECK(data.y(1, 0) == 1e-300);
    CHECK(data.y(2, 0) == -2500.0);
    CHECK(data.y(3, 0) == 4.0);
    CHECK(data.y(4, 0) == 7.0);
    CHECK(data.y(5, 0) == 8.25);
    CHECK(data.y(6, 0) == std::numeric_limits<double>::denorm_min());
    CHECK(data.y(7, 0) == std::numeric_limits<double>::max());
    CHECK(data.y(8, 0) == 0.0);
    CHECK(std::signbit(data.y(8, 0)));
    CHECK(data.y(9, 0) == 0.5);
    CHECK(data.y(10, 0) == 1.2345678901234568e29);
}

TEST_CASE("read_csv reads a weights column", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("w.csv", "x,w\n1,0.5\n2,3\n");
    CsvSpec spec = spec_of({"x"});
    spec.weights = "w";
    const Dataset data = read_csv(path, spec);
    REQUIRE(data.weights.size() == 2);
    CHECK(data.weights(0) == 0.5);
    CHECK(data.weights(1) == 3.0);
    CHECK(data.total_weight() == 3.5);

    // Only weights requested: a dataset of n rows and no columns.
    CsvSpec only_weights;
    only_weights.weights = "w";
    const Dataset bare = read_csv(path, only_weights);
    CHECK(bare.n_samples() == 2);
    CHECK(bare.weights(1) == 3.0);
}

TEST_CASE("read_csv rejects weights that are not > 0 with the cell named", "[csv]") {
    CsvSpec spec = spec_of({"x"});
    spec.weights = "w";
    std::string message = read_error("x,w\n1,1\n2,0\n", spec);
    CHECK(message == "FILE:3: column 'w': weight must be > 0 '0'");
    message = read_error("x,w\n1,-2.5\n", spec);
    CHECK(message == "FILE:2: column 'w': weight must be > 0 '-2.5'");
    message = read_error("x,w\n1,inf\n", spec);
    CHECK(message == "FILE:2: column 'w': not a finite number 'inf'");
    // Negative weights are an error even when missing values are dropped.
    spec.missing = MissingPolicy::Drop;
    message = read_error("x,w\n1,NA\n1,-1\n", spec);
    CHECK(message == "FILE:3: column 'w': weight must be > 0 '-1'");
}

TEST_CASE("read_csv drops rows with missing values under MissingPolicy::Drop", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("missing.csv",
                                       "x,y,note\n"
                                       "1,10,ok\n"
                                       ",11,empty x\n"
                                       "2,NA,NA y\n"
                                       "3,nan,nan y\n"
                                       "-inf,12,inf x\n"
                                       "4,13,\n" // the empty cell is not requested
                                       "5,\"\",quoted empty\n"
                                       "6,n/a,lower-case n/a\n"
                                       "7,17,NA\n");
    CsvSpec spec = spec_of({"y"}, {"x"});
    spec.missing = MissingPolicy::Drop;
    CsvReport report;
    const Dataset data = read_csv(path, spec, &report);
    CHECK(report.rows_read == 9);
    CHECK(report.rows_dropped == 6);
    REQUIRE(data.n_samples() == 3);
    CHECK(data.x(0, 0) == 1.0);
    CHECK(data.x(1, 0) == 4.0);
    CHECK(data.x(2, 0) == 7.0);
    CHECK(data.y(2, 0) == 17.0);
    CHECK(data.line_numbers == std::vector<long>{2, 7, 10});
    CHECK(data.weights.size() == 3);
}

TEST_CASE("MissingPolicy::Drop still rejects text that is not a number", "[csv]") {
    CsvSpec spec = spec_of({"y"}, {"x"});
    spec.missing = MissingPolicy::Drop;
    // The NA in x would drop the row, but the text in y is an error all the same.
    const std::string message = read_error("x,y\n1,2\nNA,abc\n", spec);
    CHECK(message == "FILE:3: column 'y': not a number 'abc'");
}

TEST_CASE("MissingPolicy::Drop with every row dropped is an error", "[csv]") {
    CsvSpec spec = spec_of({"y"});
    spec.missing = MissingPolicy::Drop;
    const std::string message = read_error("y\nNA\n\n\"\"\n", spec);
    CHECK(message == "FILE: no data rows left: all 2 rows have missing values and were dropped");
}

TEST_CASE("targets_optional gives q = 0 when no target column is present", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("pred.csv", "x1,x2\n1,2\n3,4\n");
    CsvSpec spec = spec_of({"y1", "y2"}, {"x1", "x2"});
    spec.targets_optional = true;
    const Dataset data = read_csv(path, spec);
    CHECK(data.n_samples() == 2);
    CHECK(data.y.rows() == 2);
    CHECK(data.y.cols() == 0);
    CHECK(data.target_names.empty());
    CHECK(data.x(1, 1) == 4.0);

    // With the targets present they are read as usual.
    const std::string with_y = dir.write("fit.csv", "x1,x2,y1,y2\n1,2,5,6\n");
    const Dataset full = read_csv(with_y, spec);
    CHECK(full.y.cols() == 2);
    CHECK(full.y(0, 1) == 6.0);

    // Some present but not all: the missing one is still an error.
    const std::string partial = dir.write("partial.csv", "x1,x2,y1\n1,2,5\n");
    CHECK(data_error([&] { read_csv(partial, spec); }) ==
          partial + ":1: column 'y2': no such column in the header; the columns are: 'x1', 'x2', "
                    "'y1'");

    // Without targets_optional a missing target is an error.
    spec.targets_optional = false;
    CHECK(data_error([&] { read_csv(path, spec); }) ==
          path + ":1: column 'y1': no such column in the header; the columns are: 'x1', 'x2'");
}

TEST_CASE("read_csv reads standard input for the path -", "[csv]") {
    TempDir dir;
    const std::string good = dir.write("stdin.csv", "a,b\n1,2\n");
    {
        RedirectFd redirect(STDIN_FILENO, good, O_RDONLY);
        std::clearerr(stdin);
        const Dataset data = read_csv("-", spec_of({"b"}));
        CHECK(data.y(0, 0) == 2.0);
    }
    const std::string bad = dir.write("stdin_bad.csv", "a,b\n1,x\n");
    {
        RedirectFd redirect(STDIN_FILENO, bad, O_RDONLY);
        std::clearerr(stdin);
        CHECK(data_error([&] { read_csv("-", spec_of({"b"})); }) ==
              "<stdin>:2: column 'b': not a number 'x'");
    }
    std::clearerr(stdin);
}

TEST_CASE("read_csv handles a file larger than the line reader's buffers", "[csv]") {
    // The reader reads blocks of 16 MiB (and parses each in pieces of 1 MiB): cross several
    // block and piece boundaries and check every value.
    TempDir dir;
    const std::string path = dir.path("big.csv");
    // About 55 MB in 220 000 lines of 250 bytes, so that a line straddles each block boundary.
    const long rows = 220000;
    const std::string padding(230, 'p');
    {
        std::string text = "i,half,text\n";
        text.reserve(static_cast<std::size_t>(rows) * 256);
        for (long i = 0; i < rows; ++i) {
            const std::string number = std::to_string(i);
            text.append(number).append(",").append(number).append(".5,").append(padding);
            text.append(number).append("\n");
        }
        std::FILE* out = std::fopen(path.c_str(), "wb");
        REQUIRE(out != nullptr);
        REQUIRE(std::fwrite(text.data(), 1, text.size(), out) == text.size());
        REQUIRE(std::fclose(out) == 0);
    }
    const Dataset data = read_csv(path, spec_of({"i"}, {"half"}));
    REQUIRE(data.n_samples() == rows);
    bool all_equal = true;
    for (long i = 0; i < rows; ++i) {
        all_equal = all_equal && data.y(i, 0) == double(i) && data.x(i, 0) == double(i) + 0.5 &&
                    data.line_numbers[static_cast<std::size_t>(i)] == i + 2;
    }
    CHECK(all_equal);
}

TEST_CASE("read_csv gives the same dataset with 1 and 2 threads on a file of many blocks", "[csv]") {
    // About 42 MB: several of the reader's 16 MiB blocks, each parsed in pieces in parallel.
    // Blank lines, CRLF, quoted and padded numbers, a text column with quoted delimiters, and
    // rows dropped for NA or empty cells all move rows away from their line numbers.
    TempDir dir;
    const std::string path = dir.path("many_blocks.csv");
    std::mt19937_64 rng(7);
    std::normal_distribution<double> normal(0.0, 1000.0);
    std::string text = "id,\"label, text\",x1,x2,w,y\r\n";
    const long rows = 700000;
    for (long i = 0; i < rows; ++i) {
        if (i % 997 == 0) text += (i % 2 == 0) ? "\n" : "  \t\r\n";
        text += std::to_string(i);
        text += i % 5 == 0 ? ",\"a, \"\"b\"\"\"," : ",plain,";
        for (int j = 0; j < 2; ++j) {
            char number[64];
            const auto end = std::to_chars(number, number + sizeof number, normal(rng)).ptr;
            const std::string cell(number, end);
            text += i % 7 == j ? " \"" + cell + "\" " : cell;
            text += ',';
        }
        text += std::to_string(1 + i % 3) + ",";
        text += i % 1009 == 3 ? "NA" : (i % 2003 == 5 ? "" : std::to_string(i % 17) + ".25");
        text += i % 3 == 0 ? "\r\n" : "\n";
    }
    write_text(path, text);
    REQUIRE(text.size() > 2 * (std::size_t(16) << 20));

    CsvSpec spec = spec_of({"y"}, {"x1", "x2"}, {"x2", "id"});
    spec.weights = "w";
    spec.missing = MissingPolicy::Drop;
    CsvReport report1;
    CsvReport report2;
    Dataset one;
    Dataset two;
    {
        const ThreadCount threads(1);
        one = read_csv(path, spec, &report1);
    }
    {
        const ThreadCount threads(2);
        two = read_csv(path, spec, &report2);
    }
    CHECK(report1.rows_read == rows);
    CHECK(report1.rows_dropped > 100);
    CHECK(one.n_samples() == rows - report1.rows_dropped);
    CHECK(report2.rows_read == report1.rows_read);
    CHECK(report2.rows_dropped == report1.rows_dropped);
    CHECK(same_bits(one.y, two.y));
    CHECK(same_bits(one.x, two.x));
    CHECK(same_bits(one.z, two.z));
    CHECK(same_bits(one.weights, two.weights));
    CHECK(one.line_numbers == two.line_numbers);
    // Spot checks against the file: row i has id i (column z2) on its own line number.
    bool ids_increase = true;
    for (Index i = 1; i < one.n_samples(); ++i)
        ids_increase = ids_increase && one.z(i, 1) > one.z(i - 1, 1) &&
                       one.line_numbers[static_cast<std::size_t>(i)] >
                           one.line_numbers[static_cast<std::size_t>(i - 1)];
    CHECK(ids_increase);
    CHECK(one.line_numbers.front() == 3); // line 2 is blank (i = 0)
    CHECK(one.z(0, 1) == 0.0);
}

TEST_CASE("read_csv reports the first bad cell of a large file with 2 threads", "[csv]") {
    // Bad cells deep in a file of several blocks; whichever thread parses them, the one
    // reported is the first in file order, with its line and column.
    TempDir dir;
    const std::string path = dir.path("deep_error.csv");
    std::string text = "a,b,c\n";
    const long rows = 1500000; // about 40 MB
    for (long i = 0; i < rows; ++i) {
        const long line = i + 2;
        if (line == 1300001) {
            text += "1.5,2.5,oops\n";
        } else if (line == 1310000) {
            text += "x,y,z\n"; // a later error: never reported
        } else if (line == 1390000) {
            text += "1,2\n"; // a ragged row, later still
        } else {
            text += std::to_string(i) + ".125,-" + std::to_string(i) + "e-3,7\n";
        }
    }
    write_text(path, text);
    const ThreadCount threads(2);
    CHECK(data_error([&] { read_csv(path, spec_of({"a"}, {"c"})); }) ==
          path + ":1300001: column 'c': not a number 'oops'");
    // Without column c, the first bad cell is at line 1310000 (before the ragged row).
    CHECK(data_error([&] { read_csv(path, spec_of({"a"}, {"b"})); }) ==
          path + ":1310000: column 'a': not a number 'x'");
    CHECK(data_error([&] { read_csv(path, spec_of({"b"})); }) ==
          path + ":1310000: column 'b': not a number 'y'");
}

TEST_CASE("read_csv reads numbers exactly as std::from_chars does", "[csv]") {
    // The reader has its own fast path for decimals of up to 19 digits (see src/csv.cpp); it
    // must give the same bits as std::from_chars, the reference, on every form: shortest
    // round-trip output of random doubles of all magnitudes, fixed notation, random digit
    // strings with a point and an exponent, values halfway between two doubles, and numbers
    // with too many digits or exponents out of the fast range.
    std::mt19937_64 rng(20240611);
    std::vector<std::string> cells = {"0", "-0", "0.0", "5.", ".5", "-.5", "1e22", "1e23",
                                      "9007199254740993", "18446744073709551615",
                                      "1844674407370955161", "9999999999999999999",
                                      "0.000000000000000000000000001", "1e-27", "1e-28", "1e55",
                                      "1e56", "7.2057594037927933e16", "00000000000000000001",
                                      "2.2250738585072014e-308", "1e+05", "1E-5"};
    std::uniform_int_distribution<int> exponent(-40, 60);
    for (int i = 0; i < 200000; ++i) {
        char buffer[128];
        const std::uint64_t bits = rng();
        double value = 0.0;
        std::string cell;
        switch (i % 5) {
        case 0: // any finite double
            value = std::bit_cast<double>(bits);
            if (!std::isfinite(value)) value = 1.0;
            cell.assign(buffer, std::to_chars(buffer, buffer + sizeof buffer, value).ptr);
            break;
        case 1: // scientific-looking data
            value = std::ldexp(double(bits >> 11), exponent(rng) - 53);
            cell.assign(buffer, std::to_chars(buffer, buffer + sizeof buffer, value).ptr);
            break;
        case 2: // fixed notation
            value = std::normal_distribution<double>(0.0, 1000.0)(rng);
            cell.assign(buffer,
                        std::to_chars(buffer, buffer + sizeof buffer, value,
                                      std::chars_format::fixed, static_cast<int>(bits % 20))
                            .ptr);
            break;
        case 3: { // digits, a point somewhere, maybe an exponent
            const int length = 1 + static_cast<int>(bits % 22);
            const int point = static_cast<int>((bits >> 8) % static_cast<std::uint64_t>(length + 1));
            if ((bits >> 16) & 1) cell += '-';
            for (int j = 0; j < length; ++j) {
                if (j == point) cell += '.';
                cell += static_cast<char>('0' + (rng() % 10));
            }
            if ((bits >> 17) & 1) cell += "e" + std::to_string(exponent(rng));
            break;
        }
        default: { // halfway between a double and the next one, written out exactly
            const double low = std::ldexp(double((bits >> 11) | 1), exponent(rng) - 53);
            const long double middle =
                (static_cast<long double>(low) + std::nextafter(low, 1e300)) / 2;
            std::snprintf(buffer, sizeof buffer, "%.30Lg", middle);
            cell = buffer;
            break;
        }
        }
        cells.push_back(cell);
    }
    std::string text = "v\n";
    for (const std::string& cell : cells)
        text.append(cell).append("\n");
    TempDir dir;
    const std::string path = dir.path("numbers.csv");
    write_text(path, text);
    const Dataset data = read_csv(path, spec_of({"v"}));
    REQUIRE(data.n_samples() == static_cast<Index>(cells.size()));
    std::size_t different = 0;
    for (std::size_t i = 0; i < cells.size(); ++i) {
        double expected = 0.0;
        const char* first = cells[i].data();
        const char* last = first + cells[i].size();
        const auto [ptr, ec] = std::from_chars(first, last, expected);
        REQUIRE(ec == std::errc());
        REQUIRE(ptr == last);
        const double read = data.y(static_cast<Index>(i), 0);
        if (std::memcmp(&read, &expected, sizeof read) != 0) {
            if (different++ < 5) UNSCOPED_INFO(cells[i] << " read as " << read);
        }
    }
    CHECK(different == 0);
}

TEST_CASE("read_csv reads a line just under the 16 MiB limit", "[csv]") {
    // 2^24 - 1 bytes before the LF (a CR counts) is the longest line accepted (the next test
    // case rejects 2^24), as with io::LineReader, which the reader replaced.
    TempDir dir;
    const std::string path = dir.path("long_line.csv");
    std::string text = "a,b\n1,2\n3,";
    text.append((std::size_t(1) << 24) - 1 - 3, '7');
    text += "\r\n5,6";
    write_text(path, text);
    const Dataset data = read_csv(path, spec_of({"a"}));
    REQUIRE(data.n_samples() == 3);
    CHECK(data.y(1, 0) == 3.0);
    CHECK(data.line_numbers == std::vector<long>{2, 3, 4});
}

TEST_CASE("read_csv ends a line at a NUL byte", "[csv]") {
    // The reader has always seen each line as a C string (io::LineReader's): the text after a
    // NUL byte on the same line is ignored, also in messages.
    CHECK(read_error(std::string("a,b\n1,2\0junk,x\n3,\0\n", 19), spec_of({"b"})) ==
          "FILE:3: column 'b': empty cell");
    CHECK(read_error(std::string("a,b\n1\0,2\n", 9), spec_of({"a"})) ==
          "FILE:2: ragged row: expected 2 fields (as in the header), found 1 '1'");
    TempDir dir;
    const std::string path = dir.write("nul.csv", std::string("a,b\n1,2\0junk,x\r\n3,4\n", 20));
    const Dataset data = read_csv(path, spec_of({"b"}, {"a"}));
    REQUIRE(data.n_samples() == 2);
    CHECK(data.y(0, 0) == 2.0);
    CHECK(data.y(1, 0) == 4.0);
}

// ------------------------------------------------------------------------------------------------
// Reading: errors

TEST_CASE("read_csv names an unknown column and lists the available ones", "[csv]") {
    CHECK(read_error("a,b,c\n1,2,3\n", spec_of({"a"}, {"d"})) ==
          "FILE:1: column 'd': no such column in the header; the columns are: 'a', 'b', 'c'");

    // A long header is trimmed.
    std::string header;
    std::string row;
    for (int j = 1; j <= 20; ++j) {
        if (j > 1) header += ',';
        header.append("col").append(std::to_string(j));
        row += (j > 1 ? ",0" : "0");
    }
    CHECK(read_error(header + "\n" + row + "\n", spec_of({"nope"})) ==
          "FILE:1: column 'nope': no such column in the header; the columns are: 'col1', 'col2', "
          "'col3', 'col4', 'col5', 'col6', 'col7', 'col8', 'col9', 'col10', 'col11', 'col12' "
          "... and 8 more");

    // Case mismatch: a hint.
    CHECK(read_error("Sepal.Length,Species\n1,x\n", spec_of({"sepal.length"})) ==
          "FILE:1: column 'sepal.length': no such column in the header; the columns are: "
          "'Sepal.Length', 'Species' (did you mean 'Sepal.Length'?)");

    // Wrong delimiter: a hint.
    CHECK(read_error("a;b\n1;2\n", spec_of({"a"})) ==
          "FILE:1: column 'a': no such column in the header; the columns are: 'a;b' (the header "
          "has one column: is the delimiter ';'?)");
}

TEST_CASE("read_csv rejects a requested column that appears twice in the header", "[csv]") {
    CHECK(read_error("a,b,a\n1,2,3\n", spec_of({"a"})) ==
          "FILE:1: column 'a': duplicate column name in the header (fields 1 and 3)");
    // A duplicate that is not requested is harmless.
    TempDir dir;
    const std::string ok = dir.write("dup.csv", "a,b,a\n1,2,3\n");
    CHECK(read_csv(ok, spec_of({"b"})).y(0, 0) == 2.0);
}

TEST_CASE("read_csv rejects misuse of the spec with InvalidArgument", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("spec.csv", "a,b\n1,2\n");
    REQUIRE_THROWS_MATCHES(
        read_csv(path, spec_of({}, {"a", "b", "a"})),
        InvalidArgument,
        Catch::Message("read_csv: spec.inputs is 'a', 'b', 'a', but a column may be listed only "
                       "once per role. Remove the second 'a'."));
    REQUIRE_THROWS_AS(read_csv(path, spec_of({"b", "b"})), InvalidArgument);
    REQUIRE_THROWS_WITH(read_csv(path, CsvSpec{}),
                        Catch::Contains("at least one column must be requested"));
    CsvSpec quote = spec_of({"a"});
    quote.delimiter = '"';
    REQUIRE_THROWS_AS(read_csv(path, quote), InvalidArgument);
}

TEST_CASE("read_csv reports ragged rows with expected and found field counts", "[csv]") {
    CHECK(read_error("a,b,c\n1,2,3\n4,5\n", spec_of({"a"})) ==
          "FILE:3: ragged row: expected 3 fields (as in the header), found 2 '4,5'");
    CHECK(read_error("a,b\n1,2\n\n3,4,5\n", spec_of({"a"})) ==
          "FILE:4: ragged row: expected 2 fields (as in the header), found 3 '3,4,5'");
    // A delimiter inside quotes does not count.
    CHECK(read_error("a,b\n\"1,2\"\n", spec_of({"b"})) ==
          "FILE:2: ragged row: expected 2 fields (as in the header), found 1 '\"1,2\"'");
}

TEST_CASE("read_csv rejects an empty file and a header without data", "[csv]") {
    CHECK(read_error("", spec_of({"a"})) == "FILE: empty file (no header line)");
    CHECK(read_error("\n \n\r\n", spec_of({"a"})) == "FILE: empty file (no header line)");
    CHECK(read_error("a,b\n", spec_of({"a"})) == "FILE: no data rows (the file has only a header)");
    CHECK(read_error("a,b\n\n\n", spec_of({"a"})) ==
          "FILE: no data rows (the file has only a header)");
    CHECK(read_error("a,b", spec_of({"a"})) == "FILE: no data rows (the file has only a header)");

    TempDir dir;
    const std::string empty = dir.write("empty.csv", "");
    CHECK(data_error([&] { moekit::read_csv_header(empty); }) ==
          empty + ": empty file (no header line)");
}

TEST_CASE("read_csv rejects unterminated quotes and text after a closing quote", "[csv]") {
    CHECK(read_error("a,b\n1,\"2\n3,4\n", spec_of({"a"})) ==
          "FILE:2: column 'b': unterminated quote (a quoted field cannot span lines) '\"2'");
    CHECK(read_error("a,\"b\n1,2\n", spec_of({"a"})) ==
          "FILE:1: unterminated quote (a quoted field cannot span lines) '\"b'");
    CHECK(read_error("a,b\n\"1\"x,2\n", spec_of({"b"})) ==
          "FILE:2: column 'a': unexpected text after the closing quote '\"1\"x'");
    // A quote problem past the last column is reported without a column name.
    CHECK(read_error("a,b\n1,2,\"3\n", spec_of({"b"})) ==
          "FILE:2: unterminated quote (a quoted field cannot span lines) '\"3'");
}

TEST_CASE("read_csv names the cell of each bad value", "[csv]") {
    const CsvSpec spec = spec_of({"y"}, {"x"});
    CHECK(read_error("x,y\n1,2\n3,\n", spec) == "FILE:3: column 'y': empty cell");
    CHECK(read_error("x,y\n  ,2\n", spec) == "FILE:2: column 'x': empty cell");
    CHECK(read_error("x,y\n\"\",2\n", spec) == "FILE:2: column 'x': empty cell");
    CHECK(read_error("x,y\n1,NA\n", spec) == "FILE:2: column 'y': missing value (NA) 'NA'");
    CHECK(read_error("x,y\nN/A,1\n", spec) == "FILE:2: column 'x': missing value (NA) 'N/A'");
    CHECK(read_error("x,y\n1,inf\n", spec) == "FILE:2: column 'y': not a finite number 'inf'");
    CHECK(read_error("x,y\n-Infinity,1\n", spec) ==
          "FILE:2: column 'x': not a finite number '-Infinity'");
    CHECK(read_error("x,y\n1,nan\n", spec) == "FILE:2: column 'y': not a finite number 'nan'");
    CHECK(read_error("x,y\n1,NaN\n", spec) == "FILE:2: column 'y': not a finite number 'NaN'");
    CHECK(read_error("x,y\n1,abc\n", spec) == "FILE:2: column 'y': not a number 'abc'");
    CHECK(read_error("x,y\n1,1.5x\n", spec) == "FILE:2: column 'y': not a number '1.5x'");
    CHECK(read_error("x,y\n1,0x10\n", spec) == "FILE:2: column 'y': not a number '0x10'");
    CHECK(read_error("x,y\n1,1e\n", spec) == "FILE:2: column 'y': not a number '1e'");
    CHECK(read_error("x,y\n1,+-1\n", spec) == "FILE:2: column 'y': not a number '+-1'");
    CHECK(read_error("x,y\n1,++1\n", spec) == "FILE:2: column 'y': not a number '++1'");
    CHECK(read_error("x,y\n1,+\n", spec) == "FILE:2: column 'y': not a number '+'");
    CHECK(read_error("x,y\n1,1 2\n", spec) == "FILE:2: column 'y': not a number '1 2'");
    CHECK(read_error("x,y\n1,\"a\"\"b\"\n", spec) == "FILE:2: column 'y': not a number 'a\"\"b'");
    CHECK(read_error("x,y\n1,1e999\n", spec) ==
          "FILE:2: column 'y': number out of range for a double '1e999'");
    CHECK(read_error("x,y\n1,1e-999\n", spec) ==
          "FILE:2: column 'y': number out of range for a double '1e-999'");
    // Decimal commas need another delimiter; with ';' they are still not numbers.
    CsvSpec semi = spec;
    semi.delimiter = ';';
    CHECK(read_error("x;y\n1;2,5\n", semi) == "FILE:2: column 'y': not a number '2,5'");
    // The line number counts blank lines; the first bad cell from the left is reported.
    CHECK(read_error("x,y\n1,2\n\n\n bad , worse\n", spec) ==
          "FILE:5: column 'x': not a number 'bad'");
    // Control characters in the text are shown as '?': the message stays on one line.
    CHECK(read_error("x,y\n1,\"a\rb\"\n", spec) == "FILE:2: column 'y': not a number 'a?b'");
}

TEST_CASE("read_csv rejects a line longer than the line reader's 16 MiB limit", "[csv]") {
    const std::string long_line(std::size_t(1) << 24, '7');
    CHECK(read_error("a\n1\n" + long_line + "\n", spec_of({"a"})) ==
          "FILE:3: line longer than the 16 MiB limit");
}

TEST_CASE("read_csv reports files that cannot be opened or read", "[csv]") {
    TempDir dir;
    const std::string missing = dir.path("no_such_file.csv");
    CHECK(data_error([&] { read_csv(missing, spec_of({"a"})); }) ==
          missing + ": cannot open file: No such file or directory");
    CHECK(data_error([&] { moekit::read_csv_header(missing); }) ==
          missing + ": cannot open file: No such file or directory");
    const std::string directory = dir.root().string();
    CHECK(data_error([&] { read_csv(directory, spec_of({"a"})); }) ==
          directory + ": cannot read file: Is a directory");
}

// ------------------------------------------------------------------------------------------------
// Writing

TEST_CASE("format_double gives the shortest text that round-trips", "[csv]") {
    using moekit::format_double;
    CHECK(format_double(0.1) == "0.1");
    CHECK(format_double(1.0) == "1");
    CHECK(format_double(-2500.0) == "-2500");
    CHECK(format_double(1e-300) == "1e-300");
    CHECK(format_double(-0.0) == "-0");
    CHECK(format_double(1.0 / 3.0) == "0.3333333333333333");
    CHECK(format_double(std::numeric_limits<double>::denorm_min()) == "5e-324");
    CHECK(format_double(std::numeric_limits<double>::max()) == "1.7976931348623157e+308");
    CHECK(format_double(123456789.0) == "123456789");
}

TEST_CASE("write_file_atomic creates and replaces files without leaving temporaries", "[csv]") {
    TempDir dir;
    const std::string path = dir.path("out.txt");
    moekit::write_file_atomic(path, "first\n");
    CHECK(read_file(path) == "first\n");
    moekit::write_file_atomic(path, "second, longer\n");
    CHECK(read_file(path) == "second, longer\n");
    moekit::write_file_atomic(path, "");
    CHECK(read_file(path).empty());
    CHECK(dir.entries() == std::vector<std::string>{"out.txt"});
}

TEST_CASE("write_file_atomic keeps the permissions of a file it replaces", "[csv]") {
    TempDir dir;
    const std::string path = dir.write("perm.txt", "old");
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
    moekit::write_file_atomic(path, "new");
    CHECK(read_file(path) == "new");
    CHECK(fs::status(path).permissions() == (fs::perms::owner_read | fs::perms::owner_write));
}

TEST_CASE("write_file_atomic fails cleanly when the directory does not exist", "[csv]") {
    TempDir dir;
    const std::string path = dir.path("no_such_dir/out.txt");
    CHECK_THAT(data_error([&] { moekit::write_file_atomic(path, "text"); }),
               Catch::StartsWith(path + ": cannot create a temporary file next to it: No such "
                                        "file or directory"));
    CHECK(dir.entries().empty());
}

TEST_CASE("write_file_atomic leaves the target untouched when the rename fails", "[csv]") {
    // The target is a non-empty directory: the temporary file is written, the rename fails.
    TempDir dir;
    const std::string target = dir.path("target");
    fs::create_directory(target);
    const std::string inside = dir.write("target/keep.txt", "keep");
    CHECK(data_error([&] { moekit::write_file_atomic(target, "text"); }) ==
          target + ": cannot replace file: Is a directory");
    CHECK(fs::is_directory(target));
    CHECK(read_file(inside) == "keep");
    CHECK(dir.entries() == std::vector<std::string>{"target"});
}

TEST_CASE("write_file_atomic leaves an existing file untouched when writing fails", "[csv]") {
    // Cap the file size (RLIMIT_FSIZE) so that write() fails part-way with EFBIG.
    TempDir dir;
    const std::string path = dir.write("existing.csv", "old content\n");
    const std::string big(1 << 16, 'x');

    struct rlimit saved {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    auto* previous_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved;
    small.rlim_cur = 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    std::string message;
    try {
        moekit::write_file_atomic(path, big);
    } catch (const DataError& e) {
        message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, previous_handler);

    CHECK(message == path + ": cannot write file: File too large");
    CHECK(read_file(path) == "old content\n");
    CHECK(dir.entries() == std::vector<std::string>{"existing.csv"});
}

TEST_CASE("write_file_atomic and write_csv write standard output for the path -", "[csv]") {
    TempDir dir;
    const std::string captured = dir.path("stdout.txt");
    {
        std::fflush(stdout);
        RedirectFd redirect(STDOUT_FILENO, captured, O_WRONLY | O_CREAT | O_TRUNC);
        moekit::write_file_atomic("-", "hello\n");
        Matrix m(1, 2);
        m << 1.5, -2.0;
        moekit::write_csv("-", {"a", "b"}, m);
        std::fflush(stdout);
    }
    CHECK(read_file(captured) == "hello\na,b\n1.5,-2\n");
}

TEST_CASE("write_csv output reads back bit for bit", "[csv]") {
    std::mt19937_64 rng(20240611);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_int_distribution<int> exponent(-300, 300);
    const Index n = 500;
    Matrix values(n, 4);
    for (Index i = 0; i < n; ++i) {
        values(i, 0) = normal(rng);
        values(i, 1) = normal(rng) * std::pow(10.0, exponent(rng));
        values(i, 2) = std::ldexp(normal(rng), -1060); // subnormal
        values(i, 3) = static_cast<double>(i) / 7.0;
    }
    values(0, 0) = -0.0;
    values(1, 0) = std::numeric_limits<double>::max();
    values(2, 0) = std::numeric_limits<double>::lowest();
    values(3, 0) = std::numeric_limits<double>::min();
    values(4, 0) = 0.1;

    TempDir dir;
    const std::string path = dir.path("round.csv");
    const std::vector<std::string> header{"plain", "with, comma", "say \"x\"", " padded "};
    moekit::write_csv(path, header, values);
    CHECK(moekit::read_csv_header(path) == header);

    const Dataset data = read_csv(path, spec_of({}, header));
    REQUIRE(data.x.rows() == n);
    REQUIRE(data.x.cols() == 4);
    bool identical = true;
    for (Index i = 0; i < n; ++i) {
        for (Index j = 0; j < 4; ++j) {
            identical = identical && std::memcmp(&data.x(i, j), &values(i, j), sizeof(double)) == 0;
        }
    }
    CHECK(identical);
    CHECK(dir.entries() == std::vector<std::string>{"round.csv"});
}

TEST_CASE("write_csv writes the header and one line per row", "[csv]") {
    TempDir dir;
    const std::string path = dir.path("small.csv");
    Matrix m(2, 3);
    m << 1.0, 0.1, -3.0, 1e-300, 2.5, 1e21;
    moekit::write_csv(path, {"a", "b", "c"}, m);
    CHECK(read_file(path) == "a,b,c\n1,0.1,-3\n1e-300,2.5,1e+21\n");

    // A block expression is accepted through Eigen::Ref.
    moekit::write_csv(path, {"b"}, m.col(1));
    CHECK(read_file(path) == "b\n0.1\n2.5\n");

    REQUIRE_THROWS_MATCHES(moekit::write_csv(path, {"a", "b"}, m),
                           InvalidArgument,
                           Catch::Message("write_csv: header.size() is 2, but it must equal "
                                          "values.cols() = 3. Give one name per column."));
}
