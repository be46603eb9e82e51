#pragma once
/// @file bench_io.hpp
/// The benchmark case files shared by bench_gen, moekit_em_bench, arma_gmm and the Python/R
/// peer drivers. Two files per case, both language-neutral:
///
///  - `<prefix>.bin`: the data, raw little-endian float64, row-major n×c (one sample after the
///    other). Gaussian cases: c = D columns y. Regression cases: c = 1 + d, columns (y, x1..xd);
///    the gate inputs are the expert inputs (z = x).
///  - `<prefix>.start`: the starting model as whitespace-separated numbers, one header line
///    `gmm K D` or `reg K d`, then
///      gmm: K weights, K×D means (row by row), K covariance matrices D×D (row by row);
///      reg: (d+1)×K gate coefficients V (row by row; all 0 for a constant gate with equal
///           weights, column 0 the reference), K×(d+1) coefficients β_k (intercept first),
///           K variances σ²_k.
///    A constant-gate start has weights 1/K; the gate matrix is then all 0 (softmax(0) = 1/K),
///    so one file serves both gates.

#include "moekit/model.hpp"

#include <cstdio>
#include <fstream>
#include <iomanip>
#include <stdexcept>
#include <string>
#include <vector>
#include <algorithm>

namespace bench {

using moekit::Index;
using moekit::Matrix;

/// Reads `<prefix>.bin` as an n×c column-major matrix (rows are samples).
inline Matrix read_bin(const std::string& path, Index n, Index c) {
    // Row-major on disk, column-major in memory: read 4096 rows at a time and scatter them, so
    // loading never holds a second copy of the data (the peak memory measured is the fit's).
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("cannot open " + path);
    Matrix out(n, c);
    constexpr Index chunk = 4096;
    std::vector<double> buffer(static_cast<std::size_t>(chunk * c));
    for (Index first = 0; first < n; first += chunk) {
        const Index rows = std::min(chunk, n - first);
        const auto count = static_cast<std::size_t>(rows * c);
        if (std::fread(buffer.data(), sizeof(double), count, f) != count) {
            std::fclose(f);
            throw std::runtime_error(path + ": expected " + std::to_string(n * c) + " doubles");
        }
        for (Index i = 0; i < rows; ++i)
            for (Index j = 0; j < c; ++j) out(first + i, j) = buffer[static_cast<std::size_t>(i * c + j)];
    }
    std::fclose(f);
    return out;
}

/// Writes an n×c matrix as `<prefix>.bin` (row-major float64).
inline void write_bin(const std::string& path, const Matrix& m) {
    const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows = m;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path);
    const auto count = static_cast<std::size_t>(rows.size());
    const bool ok = std::fwrite(rows.data(), sizeof(double), count, f) == count;
    if (std::fclose(f) != 0 || !ok) throw std::runtime_error("cannot write " + path);
}

/// Writes the rows of `m` to `out`, numbers with 17 significant digits.
inline void write_rows(std::ostream& out, const Matrix& m) {
    out << std::setprecision(17);
    for (Index i = 0; i < m.rows(); ++i) {
        for (Index j = 0; j < m.cols(); ++j) out << (j ? " " : "") << m(i, j);
        out << '\n';
    }
}

/// Reads r×c numbers (row by row) from `in`.
inline Matrix read_rows(std::istream& in, Index r, Index c) {
    Matrix m(r, c);
    for (Index i = 0; i < r; ++i)
        for (Index j = 0; j < c; ++j)
            if (!(in >> m(i, j))) throw std::runtime_error("start file: too few numbers");
    return m;
}

} // namespace bench
