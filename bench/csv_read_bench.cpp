// csv_read_bench: times moekit::read_csv on a 1,000,000 x 10 CSV of random doubles.
//
// Usage: csv_read_bench [path [rows [columns]]]
//   path     where to write the temporary CSV (default /tmp/moekit_csv_read_bench_<pid>.csv);
//            the file is deleted at the end
//   rows     number of data rows (default 1000000)
//   columns  number of columns (default 10; 2 for the D = 2 benchmark cases)
//
// The file is written once (fixed seed, shortest round-trip formatting, about 19 characters per
// value), then read 3 times. Printed: the median read time (wall clock and process CPU time),
// rows/s and MB/s, and the peak
// resident memory (VmHWM from /proc/self/status, reset before reading where the kernel allows)
// minus the size of the data matrix, i.e. what the reader needs beyond its result.

#include "moekit/csv.hpp"
#include "moekit/errors.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

int n_columns = 10; // the third argument
constexpr int n_runs = 3;

/// A "Vm...:" field of /proc/self/status in kB, or -1 if unavailable.
long status_kb(const std::string& field) {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.compare(0, field.size() + 1, field + ":") == 0) {
            return std::stol(line.substr(field.size() + 1));
        }
    }
    return -1;
}

/// Resets VmHWM to the current RSS (Linux >= 4.0); false if the kernel does not allow it.
bool reset_peak_rss() {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
    clear.close();
    return clear.good();
}

void write_random_csv(const std::string& path, long rows) {
    std::FILE* file = std::fopen(path.c_str(), "wb");
    if (file == nullptr) throw moekit::DataError(path + ": cannot create the benchmark file");
    std::mt19937_64 rng(20240611);
    std::normal_distribution<double> normal(0.0, 100.0);
    std::string buffer;
    buffer.reserve(1 << 20);
    for (int j = 0; j < n_columns; ++j) {
        if (j > 0) buffer += ',';
        buffer += 'c';
        buffer += std::to_string(j + 1);
    }
    buffer += '\n';
    char number[64];
    for (long i = 0; i < rows; ++i) {
        for (int j = 0; j < n_columns; ++j) {
            if (j > 0) buffer += ',';
            const auto [end, ec] = std::to_chars(number, number + sizeof number, normal(rng));
            (void)ec;
            buffer.append(number, end);
        }
        buffer += '\n';
        if (buffer.size() > (1 << 20) - 512) {
            std::fwrite(buffer.data(), 1, buffer.size(), file);
            buffer.clear();
        }
    }
    std::fwrite(buffer.data(), 1, buffer.size(), file);
    if (std::fclose(file) != 0) throw moekit::DataError(path + ": cannot write the benchmark file");
}

} // namespace

int main(int argc, char** argv) {
    const std::string path =
        argc > 1 ? std::string(argv[1])
                 : "/tmp/moekit_csv_read_bench_" + std::to_string(::getpid()) + ".csv";
    const long rows = argc > 2 ? std::stol(argv[2]) : 1000000;
    if (argc > 3) n_columns = std::stoi(argv[3]);
    if (n_columns < 1) {
        std::fprintf(stderr, "csv_read_bench: the number of columns must be >= 1\n");
        return 2;
    }

    int status = 0;
    try {
        std::printf("writing %ld x %d random doubles to %s\n", rows, n_columns, path.c_str());
        write_random_csv(path, rows);
        std::ifstream probe(path, std::ios::binary | std::ios::ate);
        const double file_mb = static_cast<double>(probe.tellg()) / 1e6;
        probe.close();

        moekit::CsvSpec spec;
        for (int j = 0; j < n_columns; ++j) {
            std::string column = "c";
            column += std::to_string(j + 1);
            spec.inputs.push_back(column);
        }

        const bool reset = reset_peak_rss();
        const long baseline_kb = status_kb("VmRSS");
        std::vector<double> seconds;
        std::vector<double> cpu_seconds;
        for (int run = 0; run < n_runs; ++run) {
            const std::clock_t cpu_start = std::clock();
            const auto start = std::chrono::steady_clock::now();
            const moekit::Dataset data = moekit::read_csv(path, spec);
            const auto stop = std::chrono::steady_clock::now();
            const std::clock_t cpu_stop = std::clock();
            if (data.n_samples() != rows || data.n_inputs() != n_columns) {
                throw moekit::DataError(path + ": read back the wrong shape");
            }
            seconds.push_back(std::chrono::duration<double>(stop - start).count());
            cpu_seconds.push_back(static_cast<double>(cpu_stop - cpu_start) / CLOCKS_PER_SEC);
            std::printf(
                "run %d: %.3f s (CPU time %.3f s)\n", run + 1, seconds.back(), cpu_seconds.back());
        }
        std::sort(seconds.begin(), seconds.end());
        std::sort(cpu_seconds.begin(), cpu_seconds.end());
        const double median = seconds[seconds.size() / 2];
        const double cpu_median = cpu_seconds[cpu_seconds.size() / 2];
        const long peak_kb = status_kb("VmHWM");
        const double matrix_mb = static_cast<double>(rows) * n_columns * sizeof(double) / 1e6;
        const double peak_mb = static_cast<double>(peak_kb) * 1024.0 / 1e6;
        const double baseline_mb = static_cast<double>(baseline_kb) * 1024.0 / 1e6;

        std::printf("file: %.1f MB\n", file_mb);
        std::printf("median read time: %.3f s  (%.0f rows/s, %.0f MB/s)\n",
                    median,
                    static_cast<double>(rows) / median,
                    file_mb / median);
        std::printf("median CPU time: %.3f s  (%.0f rows/s; wall time suffers on a busy machine)\n",
                    cpu_median,
                    static_cast<double>(rows) / cpu_median);
        std::printf("data matrix: %.1f MB\n", matrix_mb);
        std::printf("peak RSS%s: %.1f MB; minus the matrix: %.1f MB "
                    "(RSS before reading: %.1f MB)\n",
                    reset ? " while reading" : " (whole process)",
                    peak_mb,
                    peak_mb - matrix_mb,
                    baseline_mb);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "csv_read_bench: %s\n", e.what());
        status = 1;
    }
    std::remove(path.c_str());
    return status;
}
