/// @file fuzz_csv.cpp
/// Fuzz target of the CSV reader (moekit::read_csv, moekit::read_csv_header).
///
/// Input: one control byte, then the bytes of a CSV file. The control byte chooses the
/// CsvSpec: bits 0-1 the delimiter (',' ';' TAB ' '), bit 2 --missing drop, bit 3
/// targets_optional, bit 4 a weight column 'w', bit 5 expert inputs {x}, bit 6 gate inputs
/// {x, z}, bit 7 one target {a} instead of {a, b}. The file is written to a per-process
/// temporary file (in /dev/shm when it exists), so the reader runs exactly as on a real file.
///
/// Contract checked: read_csv either throws moekit::DataError / InvalidArgument with a one-line
/// message (anything else escaping is a finding), or returns a dataset that passes
/// moekit::validate, with the requested names, one line number per row (strictly increasing,
/// after the header) and a report whose counts agree with the rows; read_csv_header then finds
/// every column that was read exactly once in the header.

#include "fuzz_check.hpp"

#include "moekit/csv.hpp"
#include "moekit/dataset.hpp"
#include "moekit/errors.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace {

const std::string& temp_path() {
    static const std::string path = [] {
        std::error_code error;
        const std::filesystem::path dir = std::filesystem::is_directory("/dev/shm", error)
                                              ? std::filesystem::path("/dev/shm")
                                              : std::filesystem::temp_directory_path();
        return (dir / ("moekit_fuzz_csv_" + std::to_string(::getpid()) + ".csv")).string();
    }();
    return path;
}

struct RemoveAtExit {
    ~RemoveAtExit() { std::remove(temp_path().c_str()); }
};
const RemoveAtExit remove_at_exit;

void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
    std::FILE* file = std::fopen(path.c_str(), "wb");
    FUZZ_CHECK(file != nullptr);
    FUZZ_CHECK(size == 0 || std::fwrite(data, 1, size, file) == size);
    FUZZ_CHECK(std::fclose(file) == 0);
}

moekit::CsvSpec spec_of(std::uint8_t control) {
    moekit::CsvSpec spec;
    constexpr char delimiters[] = {',', ';', '\t', ' '};
    spec.delimiter = delimiters[control & 3U];
    spec.missing = (control & 4U) != 0 ? moekit::MissingPolicy::Drop : moekit::MissingPolicy::Error;
    spec.targets_optional = (control & 8U) != 0;
    if ((control & 16U) != 0) spec.weights = "w";
    if ((control & 32U) != 0) spec.inputs = {"x"};
    if ((control & 64U) != 0) spec.gate_inputs = {"x", "z"};
    spec.targets =
        (control & 128U) != 0 ? std::vector<std::string>{"a"} : std::vector<std::string>{"a", "b"};
    return spec;
}

void check_dataset(const moekit::Dataset& data,
                   const moekit::CsvSpec& spec,
                   const moekit::CsvReport& report) {
    moekit::validate(data, "fuzz_csv"); // throws InvalidArgument: escapes as a finding below
    const moekit::Index n = data.n_samples();
    FUZZ_CHECK(n >= 1);
    FUZZ_CHECK(data.input_names == spec.inputs);
    FUZZ_CHECK(data.gate_input_names == spec.gate_inputs);
    FUZZ_CHECK(data.target_names == spec.targets ||
               (spec.targets_optional && data.target_names.empty()));
    FUZZ_CHECK(data.line_numbers.size() == static_cast<std::size_t>(n));
    long previous = 1; // the header is at least line 1
    for (long line : data.line_numbers) {
        FUZZ_CHECK(line > previous);
        previous = line;
    }
    FUZZ_CHECK(report.rows_read - report.rows_dropped == n);
    if (spec.missing == moekit::MissingPolicy::Error) FUZZ_CHECK(report.rows_dropped == 0);
    if (spec.weights.empty()) FUZZ_CHECK((data.weights.array() == 1.0).all());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const moekit::CsvSpec spec = spec_of(data[0]);
    const std::string& path = temp_path();
    write_file(path, data + 1, size - 1);

    bool accepted = false;
    moekit::Dataset dataset;
    moekit::CsvReport report;
    try {
        dataset = moekit::read_csv(path, spec, &report);
        accepted = true;
    } catch (const moekit::DataError& e) {
        // One line naming the file.
        const std::string message = e.what();
        FUZZ_CHECK(message.find('\n') == std::string::npos);
        FUZZ_CHECK(message.rfind(path, 0) == 0);
    } catch (const moekit::InvalidArgument& e) {
        FUZZ_CHECK(std::string(e.what()).find('\n') == std::string::npos);
    }
    if (!accepted) return 0;
    check_dataset(dataset, spec, report);
    // The header names every column that was read.
    const std::vector<std::string> header = moekit::read_csv_header(path, spec.delimiter);
    for (const auto* names :
         {&dataset.target_names, &dataset.input_names, &dataset.gate_input_names})
        for (const std::string& name : *names)
            FUZZ_CHECK(std::count(header.begin(), header.end(), name) == 1);
    return 0;
}
