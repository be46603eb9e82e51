#include "moekit/covariance.hpp"

#include "moekit/errors.hpp"
#include "blocks.hpp"
#include "detail.hpp"

#include <boost/math/constants/constants.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
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

// The register tiles of the full-covariance kernel, per target (measured on an AMD Zen 4 core,
// docs/performance.md): how many packets of samples a chunk holds when the whole z of the
// chunk stays in registers (q <= single_max), and the panels used beyond.
#if defined(__AVX512F__)
// 32 registers of 8 doubles.
constexpr int tile_registers = 32;
constexpr int single_max = 16;
constexpr int multi_packets = 2;
constexpr int multi_rows_max = 12;
#elif defined(__AVX__)
// 16 registers of 4 doubles.
constexpr int tile_registers = 12;
constexpr int single_max = 6;
constexpr int multi_packets = 3;
constexpr int multi_rows_max = 4;
#else
// SSE2: 16 registers of 2 doubles and no FMA (a multiply-add is two instructions and a
// temporary): small tiles, and beyond q = 4 one row of z at a time for 8 packets.
constexpr int tile_registers = 12;
constexpr int single_max = 4;
constexpr int multi_packets = 8;
constexpr int multi_rows_max = 1;
#endif
static_assert(single_max >= multi_rows_max, "the first panel of a multi-panel chunk must be full");

/// Diagonal covariances: packets per chunk (8 independent chains of squares).
constexpr int diag_packets = 8;
constexpr Index diag_chunk = diag_packets * packet_size;

/// Full covariances with q <= single_max: the whole z of a chunk of samples stays in
/// registers (one panel) for single_packets(q) packets of samples, at most max_packets.
constexpr int max_packets = 8;
constexpr int single_packets(int q) { return std::max(1, std::min(max_packets, tile_registers / q)); }

/// The widest chunk of samples (scratch is sized for it).
constexpr Index max_chunk = std::max(max_packets, multi_packets) * packet_size;

/// Diagonal factor: z_j = (y_j − s_j) / L_jj, no substitution; out = c − ½ Σ_j z_j² for one
/// chunk of diag_chunk samples.
inline void diagonal_chunk(const double* y, Index ldy, Index q, const double* shift, const double* inv_diag, double c, double* out) {
    using namespace Eigen::internal;
    Packet m[diag_packets];
    for (int u = 0; u < diag_packets; ++u) m[u] = pset1<Packet>(0.0);
    for (Index j = 0; j < q; ++j) {
        const double* yj = y + j * ldy;
        const Packet s = pset1<Packet>(shift ? shift[j] : 0.0);
        const Packet d = pset1<Packet>(inv_diag[j]);
        for (int u = 0; u < diag_packets; ++u) {
            const Packet a = pmul(psub(ploadu<Packet>(yj + u * packet_size), s), d);
            m[u] = pmadd(a, a, m[u]);
        }
    }
    const Packet cc = pset1<Packet>(c);
    const Packet half = pset1<Packet>(-0.5);
    for (int u = 0; u < diag_packets; ++u) pstoreu(out + u * packet_size, pmadd(half, m[u], cc));
}

/// NP packets of partial sums Σ_j z_j².
template <int NP>
struct Sums {
    Packet v[NP];
};

/// One panel of the forward substitution z = L⁻¹ (y − s) for NP packets of samples: rows
/// [J, J + T) of z, held in registers. First the contributions of the rows l < J of earlier
/// panels (read back from z, each load shared by the T rows of the panel, each broadcast of
/// −L(j, l) by the NP packets), then the triangle inside the panel column by column
/// (right-looking: z_l is scaled by 1/L_ll and at once subtracted from the rows below it, NP·
/// (T − 1 − l) independent FMAs). Whatever T, NP and J, every z_j is accumulated as
/// ((y_j − s_j) − L_j0 z_0 − L_j1 z_1 − ...) · (1/L_jj) in that order, and ss += z_j² in the
/// order j = 0, 1, ... (the first panel starts it). `neg_lower` holds −L(j, l) row by row,
/// `inv_diag` 1/L(j, j); the panel's rows of z are stored to z (leading dimension NP packets)
/// for the panels after it if Store.
template <int T, int NP, bool First, bool Store>
inline void panel(const double* y,
                  Index ldy,
                  Index q,
                  Index J,
                  const double* shift,
                  const double* neg_lower,
                  const double* inv_diag,
                  double* z,
                  Sums<NP>& sums) {
    using namespace Eigen::internal;
    Packet* ss = sums.v;
    constexpr Index ldz = NP * packet_size;
    Packet a[T][NP];
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
        const double* yj = y + (J + t) * ldy;
        const Packet s = pset1<Packet>(shift ? shift[J + t] : 0.0);
#pragma GCC unroll 8
        for (int u = 0; u < NP; ++u) a[t][u] = psub(ploadu<Packet>(yj + u * packet_size), s);
    }
    const double* rows = neg_lower + J * q;
    if constexpr (!First) {
        for (Index l = 0; l < J; ++l) {
            Packet zl[NP];
#pragma GCC unroll 8
            for (int u = 0; u < NP; ++u) zl[u] = pload<Packet>(z + l * ldz + u * packet_size);
#pragma GCC unroll 32
            for (int t = 0; t < T; ++t) {
                const Packet b = pset1<Packet>(rows[t * q + l]);
#pragma GCC unroll 8
                for (int u = 0; u < NP; ++u) a[t][u] = pmadd(b, zl[u], a[t][u]);
            }
        }
    }
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
        const Packet d = pset1<Packet>(inv_diag[J + t]);
#pragma GCC unroll 8
        for (int u = 0; u < NP; ++u) {
            a[t][u] = pmul(a[t][u], d);
            // 0 + z² is z² exactly: starting the sum with a product frees ss's registers
            // until z_0 is dead.
            ss[u] = First && t == 0 ? pmul(a[t][u], a[t][u]) : pmadd(a[t][u], a[t][u], ss[u]);
            if constexpr (Store) pstore(z + (J + t) * ldz + u * packet_size, a[t][u]);
        }
#pragma GCC unroll 32
        for (int r = t + 1; r < T; ++r) {
            const Packet b = pset1<Packet>(rows[r * q + J + t]);
#pragma GCC unroll 8
            for (int u = 0; u < NP; ++u) a[r][u] = pmadd(b, a[t][u], a[r][u]);
        }
    }
}

/// The arguments of a run over the rows of a block.
struct Rows {
    const double* y;
    Index ldy;
    Index rows;
    Index q;
    const double* shift;
    const double* neg_lower;
    const double* inv_diag;
    double c;
    double* z;   ///< q × max_chunk, aligned to a packet
    double* pad; ///< q × max(diag_chunk, max_chunk)
    double* out;
};

/// Runs chunk(y, ldy, out) over the rows of `a` in chunks of `width` samples; the last partial
/// chunk is copied into a full one padded with the shift (residual 0), computed the same way,
/// and only its valid rows kept. So a sample's result does not depend on where it sits.
template <class Chunk>
void over_chunks(const Rows& a, Index width, Chunk chunk) {
    Index i = 0;
    for (; i + width <= a.rows; i += width) chunk(a.y + i, a.ldy, a.out + i);
    if (i == a.rows) return;
    const Index rest = a.rows - i;
    for (Index j = 0; j < a.q; ++j)
        for (Index t = 0; t < width; ++t)
            a.pad[j * width + t] = t < rest ? a.y[j * a.ldy + i + t] : (a.shift ? a.shift[j] : 0.0);
    double tail[std::max(diag_chunk, max_chunk)];
    chunk(a.pad, width, tail);
    std::copy(tail, tail + rest, a.out + i);
}

/// out = c − ½ Σ_j z_j² for the NP packets of a chunk.
template <int NP>
inline void finish(const Sums<NP>& sums, double c, double* out) {
    using namespace Eigen::internal;
    const Packet* ss = sums.v;
    const Packet cc = pset1<Packet>(c);
    const Packet half = pset1<Packet>(-0.5);
#pragma GCC unroll 8
    for (int u = 0; u < NP; ++u) pstoreu(out + u * packet_size, pmadd(half, ss[u], cc));
}

/// q = Q <= single_max: one panel per chunk, nothing stored but the result.
template <int Q>
void single_rows(const Rows& a) {
    constexpr int NP = single_packets(Q);
    over_chunks(a, NP * packet_size, [&](const double* y, Index ldy, double* out) {
        Sums<NP> ss;
        panel<Q, NP, true, false>(y, ldy, Q, 0, a.shift, a.neg_lower, a.inv_diag, nullptr, ss);
        finish(ss, a.c, out);
    });
}

/// The last panel (T rows, 1 <= T <= multi_rows_max) of a chunk with q > single_max.
template <int T>
void last_panel(const double* y, Index ldy, const Rows& a, Index J, Sums<multi_packets>& ss) {
    panel<T, multi_packets, false, false>(y, ldy, a.q, J, a.shift, a.neg_lower, a.inv_diag, a.z, ss);
}

/// last_panel<1>, ..., last_panel<multi_rows_max>.
template <int... T>
constexpr auto last_panels(std::integer_sequence<int, T...>) {
    return std::array<void (*)(const double*, Index, const Rows&, Index, Sums<multi_packets>&), sizeof...(T)>{
        &last_panel<T + 1>...};
}

/// q > single_max: panels of multi_rows_max rows (z stored for the panels after them), the
/// last one possibly shorter.
void multi_rows(const Rows& a) {
    static constexpr auto last = last_panels(std::make_integer_sequence<int, multi_rows_max>{});
    constexpr int NP = multi_packets;
    constexpr int T = multi_rows_max;
    const Index q = a.q;
    const Index J_last = (q - 1) / T * T; // the last panel: rows [J_last, q)
    const auto last_fn = last[static_cast<std::size_t>(q - J_last - 1)];
    over_chunks(a, NP * packet_size, [&](const double* y, Index ldy, double* out) {
        Sums<NP> ss;
        panel<T, NP, true, true>(y, ldy, q, 0, a.shift, a.neg_lower, a.inv_diag, a.z, ss);
        for (Index J = T; J < J_last; J += T)
            panel<T, NP, false, true>(y, ldy, q, J, a.shift, a.neg_lower, a.inv_diag, a.z, ss);
        last_fn(y, ldy, a, J_last, ss);
        finish(ss, a.c, out);
    });
}

/// single_rows<1>, ..., single_rows<single_max>.
template <int... Q>
constexpr auto single_table(std::integer_sequence<int, Q...>) {
    return std::array<void (*)(const Rows&), sizeof...(Q)>{&single_rows<Q + 1>...};
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
    const double c = log_density_constant(factor, q, offset);
    // Scratch layout: 1/L_jj (q), −L row by row (q²), padded tail (q × widest chunk), z (q ×
    // widest chunk, aligned to a packet).
    double* inv_diag = scratch;
    double* neg_lower = inv_diag + q;
    double* pad = neg_lower + q * q;
    double* z = pad + q * std::max(diag_chunk, max_chunk);
    constexpr std::uintptr_t packet_bytes = packet_size * sizeof(double);
    if (const std::uintptr_t off = reinterpret_cast<std::uintptr_t>(z) % packet_bytes)
        z += (packet_bytes - off) / sizeof(double);
    for (Index j = 0; j < q; ++j) {
        inv_diag[j] = 1.0 / factor.lower(j, j);
        for (Index l = 0; l < j; ++l) neg_lower[j * q + l] = -factor.lower(j, l);
    }
    const Rows a{y, ldy, rows, q, shift, neg_lower, inv_diag, c, z, pad, out};
    if (diagonal) {
        over_chunks(a, diag_chunk, [&](const double* yc, Index ld, double* o) {
            diagonal_chunk(yc, ld, q, shift, inv_diag, c, o);
        });
    } else if (q <= single_max) {
        static constexpr auto single = single_table(std::make_integer_sequence<int, single_max>{});
        single[static_cast<std::size_t>(q - 1)](a);
    } else {
        multi_rows(a);
    }
}

double log_density_constant(const CovarianceFactor& factor, Index q, double offset) {
    const double log_two_pi = 2.0 * boost::math::constants::log_root_two_pi<double>();
    return offset - 0.5 * (static_cast<double>(q) * log_two_pi + factor.log_det);
}

Index density_scratch_size(Index q) {
    return q + q * q + q * std::max(diag_chunk, max_chunk) + q * max_chunk + packet_size;
}

} // namespace detail

Vector log_normal_density(const ConstMatrixRef& residuals, const CovarianceFactor& factor) {
    // Mahalanobis term by forward substitution over blocks of samples: ‖L⁻¹ r_i‖².
    const Index n = residuals.rows();
    const Index q = residuals.cols();
    Vector out(n);
    const bool diagonal = factor.lower.isDiagonal(0.0);
    std::vector<detail::AlignedBuffer> scratch;
    detail::for_each_block(
        n,
        scratch,
        [&] { return detail::AlignedBuffer(static_cast<std::size_t>(detail::density_scratch_size(q))); },
        [&](Index b, detail::AlignedBuffer& s) {
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
