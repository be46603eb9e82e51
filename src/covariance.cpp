#include "moekit/covariance.hpp"

#include "moekit/errors.hpp"
#include "blocks.hpp"
#include "detail.hpp"

#include <boost/math/constants/constants.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <vector>

namespace moekit {

std::optional<CovarianceFactor> try_factor(const ConstMatrixRef& s) {
    if (s.rows() != s.cols() || s.rows() == 0 || !s.allFinite()) return std::nullopt;
    CovarianceFactor f;
    f.covariance = 0.5 * (s + s.transpose());
    Eigen::LLT<Matrix> llt(f.covariance);
    if (llt.info() != Eigen::Success) return std::nullopt;
    f.lower = llt.matrixL();
    const auto diag = f.lower.diagonal().array();
    if (!(diag > 0.0).all() || !diag.allFinite()) return std::nullopt;
    f.log_det = detail::log_det_of_factor(f.lower);
    if (!std::isfinite(f.log_det)) return std::nullopt;
    return f;
}

CovarianceFactor factor_or_throw(const ConstMatrixRef& s, std::string_view function, std::string_view what) {
    auto f = try_factor(s);
    if (!f) {
        std::string message(function);
        message.append(": ").append(what).append(
            " is not symmetric positive definite. Increase --reg-covar, reduce the number of "
            "experts, or check the data for constant or collinear columns.");
        throw NumericalError(message);
    }
    return *std::move(f);
}

namespace detail {

namespace {

using Packet = Eigen::internal::packet_traits<double>::type;
constexpr Index packet_size = Eigen::internal::packet_traits<double>::size;
/// Packets per chunk of the forward substitution: 8 packets (32 samples with AVX), so each
/// coefficient of L loaded is used 8 times and 8 independent FMA chains cover the FMA latency.
constexpr int chunk_packets = 8;
constexpr Index chunk = chunk_packets * packet_size;

/// One chunk of samples: z = L⁻¹ (y_i − shift) by forward substitution, row j of L at a time,
/// vectorised over the samples; out = c − ½ Σ_j z_j². `neg_lower` holds −L(j, l) row by row,
/// `inv_diag` 1/L(j, j); z is q×chunk scratch.
template <bool Diagonal>
inline void density_chunk(const double* y,
                          Index ldy,
                          Index q,
                          const double* shift,
                          const double* neg_lower,
                          const double* inv_diag,
                          double c,
                          double* z,
                          double* out) {
    using namespace Eigen::internal;
    Packet a[chunk_packets];
    if constexpr (Diagonal) {
        // z_j = (y_j − s_j) / L_jj: no substitution, accumulate the squares directly.
        Packet m[chunk_packets];
        for (int u = 0; u < chunk_packets; ++u) m[u] = pset1<Packet>(0.0);
        for (Index j = 0; j < q; ++j) {
            const double* yj = y + j * ldy;
            const Packet s = pset1<Packet>(shift ? shift[j] : 0.0);
            const Packet d = pset1<Packet>(inv_diag[j]);
            for (int u = 0; u < chunk_packets; ++u) {
                a[u] = pmul(psub(ploadu<Packet>(yj + u * packet_size), s), d);
                m[u] = pmadd(a[u], a[u], m[u]);
            }
        }
        const Packet cc = pset1<Packet>(c);
        const Packet half = pset1<Packet>(-0.5);
        for (int u = 0; u < chunk_packets; ++u) pstoreu(out + u * packet_size, pmadd(half, m[u], cc));
        return;
    }
    for (Index j = 0; j < q; ++j) {
        const double* yj = y + j * ldy;
        const Packet s = pset1<Packet>(shift ? shift[j] : 0.0);
        for (int u = 0; u < chunk_packets; ++u) a[u] = psub(ploadu<Packet>(yj + u * packet_size), s);
        const double* row = neg_lower + j * q;
        for (Index l = 0; l < j; ++l) {
            const Packet b = pset1<Packet>(row[l]);
            const double* zl = z + l * chunk;
            for (int u = 0; u < chunk_packets; ++u) a[u] = pmadd(b, ploadu<Packet>(zl + u * packet_size), a[u]);
        }
        const Packet d = pset1<Packet>(inv_diag[j]);
        double* zj = z + j * chunk;
        for (int u = 0; u < chunk_packets; ++u) pstoreu(zj + u * packet_size, pmul(a[u], d));
    }
    // ½‖z‖² in a second sweep over z (still in L1), keeping the registers for the chains above.
    for (int u = 0; u < chunk_packets; ++u) a[u] = pset1<Packet>(0.0);
    for (Index j = 0; j < q; ++j) {
        const double* zj = z + j * chunk;
        for (int u = 0; u < chunk_packets; ++u) {
            const Packet v = ploadu<Packet>(zj + u * packet_size);
            a[u] = pmadd(v, v, a[u]);
        }
    }
    const Packet cc = pset1<Packet>(c);
    const Packet half = pset1<Packet>(-0.5);
    for (int u = 0; u < chunk_packets; ++u) pstoreu(out + u * packet_size, pmadd(half, a[u], cc));
}

template <bool Diagonal>
void density_rows(const double* y,
                  Index ldy,
                  Index rows,
                  Index q,
                  const double* shift,
                  const double* neg_lower,
                  const double* inv_diag,
                  double c,
                  double* z,
                  double* out) {
    Index i = 0;
    for (; i + chunk <= rows; i += chunk)
        density_chunk<Diagonal>(y + i, ldy, q, shift, neg_lower, inv_diag, c, z, out + i);
    if (i == rows) return;
    // The last partial chunk: copied into a full one (padded with the shift, so the padding
    // has residual 0), computed the same way, and only its valid rows kept.
    const Index rest = rows - i;
    double* pad = z + q * chunk;
    for (Index j = 0; j < q; ++j)
        for (Index t = 0; t < chunk; ++t)
            pad[j * chunk + t] = t < rest ? y[j * ldy + i + t] : (shift ? shift[j] : 0.0);
    double tail[chunk];
    density_chunk<Diagonal>(pad, chunk, q, shift, neg_lower, inv_diag, c, z, tail);
    std::copy(tail, tail + rest, out + i);
}

} // namespace

void gaussian_log_density_block(const double* y,
                                Index ldy,
                                Index rows,
                                Index q,
                                const double* shift,
                                const CovarianceFactor& factor,
                                bool diagonal,
                                double* out,
                                double* scratch,
                                double offset) {
    const double log_two_pi = 2.0 * boost::math::constants::log_root_two_pi<double>();
    const double c = offset - 0.5 * (static_cast<double>(q) * log_two_pi + factor.log_det);
    // Scratch layout: 1/L_jj (q), −L row by row (q²), z (q × chunk), padded tail (q × chunk).
    double* inv_diag = scratch;
    double* neg_lower = inv_diag + q;
    double* z = neg_lower + q * q;
    for (Index j = 0; j < q; ++j) {
        inv_diag[j] = 1.0 / factor.lower(j, j);
        for (Index l = 0; l < j; ++l) neg_lower[j * q + l] = -factor.lower(j, l);
    }
    if (diagonal)
        density_rows<true>(y, ldy, rows, q, shift, neg_lower, inv_diag, c, z, out);
    else
        density_rows<false>(y, ldy, rows, q, shift, neg_lower, inv_diag, c, z, out);
}

Index density_scratch_size(Index q) { return q + q * q + 2 * q * chunk; }

} // namespace detail

Vector log_normal_density(const ConstMatrixRef& residuals, const CovarianceFactor& factor) {
    // Mahalanobis term by forward substitution over blocks of samples: ‖L⁻¹ r_i‖².
    const Index n = residuals.rows();
    const Index q = residuals.cols();
    Vector out(n);
    const bool diagonal = factor.lower.isDiagonal(0.0);
    std::vector<std::vector<double>> scratch;
    detail::for_each_block(
        n,
        scratch,
        [&] { return std::vector<double>(static_cast<std::size_t>(detail::density_scratch_size(q))); },
        [&](Index b, std::vector<double>& s) {
            const Index begin = detail::block_begin(b);
            detail::gaussian_log_density_block(residuals.data() + begin,
                                               residuals.outerStride(),
                                               detail::block_size(b, n),
                                               q,
                                               nullptr,
                                               factor,
                                               diagonal,
                                               out.data() + begin,
                                               s.data());
        });
    return out;
}

Index covariance_n_parameters(CovarianceType type, Index q, Index n_experts) {
    switch (type) {
    case CovarianceType::Full: return n_experts * q * (q + 1) / 2;
    case CovarianceType::Tied: return q * (q + 1) / 2;
    case CovarianceType::Diag: return n_experts * q;
    case CovarianceType::Spherical: return n_experts;
    }
    return 0;
}

std::string_view to_string(CovarianceType type) {
    switch (type) {
    case CovarianceType::Full: return "full";
    case CovarianceType::Tied: return "tied";
    case CovarianceType::Diag: return "diag";
    case CovarianceType::Spherical: return "spherical";
    }
    return "?";
}

namespace detail {
double log_det_of_factor(const Matrix& lower) {
    // Summed in order with std::log: Eigen's 8-lane AVX-512 log is not reproducible
    // (log_sum_exp.cpp, log_plus).
    double sum = 0.0;
    for (Index j = 0; j < lower.rows(); ++j) sum += std::log(lower(j, j));
    return 2.0 * sum;
}

std::string lower_case(std::string_view text) {
    std::string out(text);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}
} // namespace detail

CovarianceType parse_covariance_type(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "full") return CovarianceType::Full;
    if (t == "tied") return CovarianceType::Tied;
    if (t == "diag" || t == "diagonal") return CovarianceType::Diag;
    if (t == "spherical") return CovarianceType::Spherical;
    throw_invalid_argument("parse_covariance_type",
                           "covariance",
                           "'" + std::string(text) + "'",
                           "must be one of full, tied, diag, spherical");
}

} // namespace moekit
