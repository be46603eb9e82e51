#pragma once
// Internal (not installed): weighted cross products of one set of columns under several weight
// rows at once, Σ_i c_p(i) u_j(i) u_l(i) for every weight row p and every j <= l: the gate's
// Hessian (one weight row per pair of classes) and the design part X̃ᵀ diag(w h_k) X̃ of the
// linear experts' M-step statistics (one weight row per expert); and the weighted sums
// Σ_i c_p(i) u_j(i) (multi_dot_block): the gate's gradient (one weight row per class) and the
// linear experts' X̃ᵀ A_k R_k (one weight row per expert and output).
//
// Rows go in chunks whose P weight rows stay in L1 (the caller fills them per chunk); register
// tiles of (weight rows × column products) accumulate per SIMD lane across the whole call, and
// the lanes are summed once at the end, then the rows past the last full packet are added in
// order. The summation order depends only on the number of rows and the shapes, never on
// threads.

#include "aligned_buffer.hpp"
#include "moekit/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cstddef>
#include <utility>
#include <vector>

namespace moekit::detail {

namespace multi_crossprod_impl {

using Packet = Eigen::internal::packet_traits<double>::type;
inline constexpr Index packet_size = Eigen::internal::packet_traits<double>::size;

/// One register tile over the packets of a chunk: acc[p][t] += c[p] · u_j u_l for PT weight
/// rows c[p] and T products of columns uj[t]·ul[t], then added lane by lane to the packet
/// accumulators sums[p·T + t].
template <int PT, int T>
void tile(const double* const* c, const double* const* uj, const double* const* ul, Index packets,
          double* const* sums) {
    using namespace Eigen::internal;
    Packet acc[PT][T];
    for (int p = 0; p < PT; ++p)
        for (int t = 0; t < T; ++t) acc[p][t] = pset1<Packet>(0.0);
    for (Index v = 0; v < packets; ++v) {
        const Index i = v * packet_size;
        Packet prod[T];
        for (int t = 0; t < T; ++t) prod[t] = pmul(ploadu<Packet>(uj[t] + i), ploadu<Packet>(ul[t] + i));
        for (int p = 0; p < PT; ++p) {
            const Packet cp = ploadu<Packet>(c[p] + i);
            for (int t = 0; t < T; ++t) acc[p][t] = pmadd(cp, prod[t], acc[p][t]);
        }
    }
    for (int p = 0; p < PT; ++p)
        for (int t = 0; t < T; ++t) {
            double* sum = sums[p * T + t];
            pstoreu(sum, padd(ploadu<Packet>(sum), acc[p][t]));
        }
}

using TileFunction = void (*)(const double* const*, const double* const*, const double* const*, Index, double* const*);

/// Up to 15 entries per tile (the widest shapes below: 14 products, 15 weighted-sum columns).
inline constexpr int max_tile_entries = 15;

/// tile<PT, 1> ... tile<PT, T>, by entries − 1: a row of tiles ends with a narrower tile for
/// the entries left, instead of padding them.
template <int PT, int... T>
constexpr std::array<TileFunction, max_tile_entries> tile_widths(std::integer_sequence<int, T...>) {
    return {tile<PT, T + 1>...};
}

/// A register tile shape: PT weight rows × T products, PT·T + T + 1 vector registers;
/// narrower[t − 1] is the tile of PT rows × t products.
struct TileShape {
    int rows;
    int entries;
    std::array<TileFunction, max_tile_entries> narrower;
};

template <int PT, int T> constexpr TileShape make_shape() {
    return {PT, T, tile_widths<PT>(std::make_integer_sequence<int, T>{})};
}

/// The shapes that fit the register file: 32 vector registers with AVX-512, 16 otherwise.
#ifdef __AVX512F__
inline constexpr TileShape shapes[] = {make_shape<6, 4>(), make_shape<4, 6>(), make_shape<3, 7>(),
                                       make_shape<2, 9>(), make_shape<1, 14>(), make_shape<5, 5>()};
#else
inline constexpr TileShape shapes[] = {make_shape<3, 3>(), make_shape<2, 4>(), make_shape<1, 7>()};
#endif

/// The shape of `list` with the least cost(P padded to its rows, the shape) for P weight rows
/// (ties: the first listed).
template <class Shape, std::size_t N, class Cost>
const Shape& least_cost(const Shape (&list)[N], Index P, Cost cost) {
    const Shape* best = &list[0];
    Index best_cost = -1;
    for (const Shape& shape : list) {
        const Index p_pad = (P + shape.rows - 1) / shape.rows * shape.rows;
        const Index c = cost(p_pad, shape);
        if (best_cost < 0 || c < best_cost) {
            best = &shape;
            best_cost = c;
        }
    }
    return *best;
}

/// The shape with the least work for P weight rows and E products: FMAs (weight rows padded
/// to the shape's; the entries are not, the last tile of a row is narrower) plus the products
/// recomputed for every tile row.
inline const TileShape& best_shape(Index P, Index E) {
    return least_cost(shapes, P, [E](Index p_pad, const TileShape& shape) {
        return p_pad * E + (p_pad / shape.rows) * E;
    });
}

inline constexpr int max_tile_accumulators = 32;

/// One register tile of weighted sums: acc[p][t] += c[p] · u[t] for PT weight rows and T
/// columns, then added lane by lane to the packet accumulators sums[p·T + t].
template <int PT, int T>
void dot_tile(const double* const* c, const double* const* u, Index packets, double* const* sums) {
    using namespace Eigen::internal;
    Packet acc[PT][T];
    for (int p = 0; p < PT; ++p)
        for (int t = 0; t < T; ++t) acc[p][t] = pset1<Packet>(0.0);
    for (Index v = 0; v < packets; ++v) {
        const Index i = v * packet_size;
        Packet col[T];
        for (int t = 0; t < T; ++t) col[t] = ploadu<Packet>(u[t] + i);
        for (int p = 0; p < PT; ++p) {
            const Packet cp = ploadu<Packet>(c[p] + i);
            for (int t = 0; t < T; ++t) acc[p][t] = pmadd(cp, col[t], acc[p][t]);
        }
    }
    for (int p = 0; p < PT; ++p)
        for (int t = 0; t < T; ++t) {
            double* sum = sums[p * T + t];
            pstoreu(sum, padd(ploadu<Packet>(sum), acc[p][t]));
        }
}

using DotTileFunction = void (*)(const double* const*, const double* const*, Index, double* const*);

/// dot_tile<PT, 1> ... dot_tile<PT, T>, by columns − 1 (as tile_widths).
template <int PT, int... T>
constexpr std::array<DotTileFunction, max_tile_entries> dot_tile_widths(std::integer_sequence<int, T...>) {
    return {dot_tile<PT, T + 1>...};
}

/// PT weight rows × T columns; narrower[t − 1]: PT rows × t columns.
struct DotTileShape {
    int rows;
    int entries;
    std::array<DotTileFunction, max_tile_entries> narrower;
};

template <int PT, int T> constexpr DotTileShape make_dot_shape() {
    return {PT, T, dot_tile_widths<PT>(std::make_integer_sequence<int, T>{})};
}

/// PT·T + T + 1 vector registers at most: 32 with AVX-512, 16 otherwise.
#ifdef __AVX512F__
inline constexpr DotTileShape dot_shapes[] = {
    make_dot_shape<4, 6>(), make_dot_shape<3, 6>(), make_dot_shape<2, 6>(),  make_dot_shape<1, 6>(),
    make_dot_shape<6, 4>(), make_dot_shape<5, 5>(), make_dot_shape<3, 7>(),  make_dot_shape<2, 10>(),
    make_dot_shape<1, 15>(), make_dot_shape<4, 4>(), make_dot_shape<4, 5>(), make_dot_shape<6, 3>()};
#else
inline constexpr DotTileShape dot_shapes[] = {make_dot_shape<3, 3>(), make_dot_shape<2, 4>(), make_dot_shape<2, 5>(),
                                              make_dot_shape<1, 7>(), make_dot_shape<4, 2>(), make_dot_shape<2, 3>(),
                                              make_dot_shape<1, 3>()};
#endif

/// The shape with the least work for P weight rows and m columns: FMAs (weight rows padded, the
/// last tile of a row narrower) plus the loads of columns (once per tile row) and of weight
/// rows (once per tile).
inline const DotTileShape& best_dot_shape(Index P, Index m) {
    return least_cost(dot_shapes, P, [m](Index p_pad, const DotTileShape& shape) {
        return p_pad * m + (p_pad / shape.rows) * m + (m + shape.entries - 1) / shape.entries * p_pad;
    });
}

/// Rows per chunk for P weight rows: the chunk's weight rows take at most ~16 KB of L1.
inline Index chunk_rows(Index P) {
    return std::max<Index>(4 * packet_size,
                           std::min<Index>(512, (2048 / std::max<Index>(P, 1)) / packet_size * packet_size));
}

/// The per-thread work space of both kernels, kept between calls (no allocation per block once
/// sized): the P_padded weight rows of a chunk (rows past P stay 0), `sums` packet accumulators
/// followed by a discard area for the padded rows' tiles.
struct Workspace {
    AlignedBuffer coef;
    AlignedBuffer sums;
    std::vector<double*> coef_rows; ///< the P real weight rows
    double* discard = nullptr;

    void prepare(Index P, Index P_padded, Index chunk, Index sums_count) {
        // The padded rows' tiles write to `discard` only; they are zeroed so that what those
        // tiles read stays finite and normal (no slow subnormal or NaN arithmetic). The other
        // rows are written by the fill before they are read.
        const auto coef_size = static_cast<std::size_t>(P_padded * chunk);
        if (coef.size() != coef_size) coef.assign(coef_size, 0.0);
        std::fill(coef.begin() + P * chunk, coef.end(), 0.0);
        sums.assign(static_cast<std::size_t>((sums_count + max_tile_accumulators) * packet_size), 0.0);
        coef_rows.resize(static_cast<std::size_t>(P));
        for (Index p = 0; p < P; ++p) coef_rows[static_cast<std::size_t>(p)] = coef.data() + p * chunk;
        discard = sums.data() + sums_count * packet_size;
    }
    /// Large problems (many weight rows × many products: a softmax gate with dozens of classes
    /// and inputs) would otherwise keep tens of MB per thread after the fit.
    void trim() {
        constexpr std::size_t keep_limit = std::size_t{1} << 19; // doubles (4 MB)
        if (sums.size() > keep_limit) AlignedBuffer().swap(sums);
        if (coef.size() > keep_limit) AlignedBuffer().swap(coef);
    }
};

/// This thread's work space (the kernels do not nest).
inline Workspace& workspace() {
    thread_local Workspace w;
    return w;
}

} // namespace multi_crossprod_impl

namespace multi_crossprod_impl {

/// The driver of both kernels: totals[p·E + e] = Σ_i c_p(i) a_e(i) b_e(i) (Products) or
/// Σ_i c_p(i) a_e(i) over `rows` rows, for P weight rows and E entries (a[e], b[e]: column
/// pointers). Chunks of rows get their weight rows from fill (or read them from the columns
/// direct[p], when the caller has them in memory already), register tiles accumulate per
/// SIMD lane across the whole call, the lanes are summed in order, then the rows past the last
/// full packet are added one by one: each total depends only on its own entry, its weight row
/// and the row count, never on the tile shape or on threads.
template <bool Products, class Fill>
void tiled_sums(const double* const* a, const double* const* b, Index E, Index rows, Index P, Fill fill,
                const double* const* direct, double* totals) {
    const auto& shape = [&]() -> const auto& {
        if constexpr (Products)
            return best_shape(P, E);
        else
            return best_dot_shape(P, E);
    }();
    const Index PT = shape.rows;
    const Index T = shape.entries;
    const Index P_padded = (P + PT - 1) / PT * PT;
    const Index chunk = chunk_rows(P);
    Workspace& w = workspace();
    w.prepare(P, P_padded, chunk, P * E); // padded weight rows write to w.discard
    const double* coef = w.coef.data();
    double* sums = w.sums.data();
    const Index full_rows = rows / packet_size * packet_size;
    const double* cptr[max_tile_accumulators];
    const double* ua[max_tile_accumulators];
    const double* ub[max_tile_accumulators];
    double* sptr[max_tile_accumulators];
    for (Index i0 = 0; i0 < full_rows; i0 += chunk) {
        const Index c = std::min(chunk, full_rows - i0);
        if (direct == nullptr) fill(i0, c, w.coef_rows.data());
        for (Index p0 = 0; p0 < P_padded; p0 += PT) {
            for (Index p = 0; p < PT; ++p)
                cptr[p] = direct != nullptr && p0 + p < P ? direct[p0 + p] + i0 : coef + (p0 + p) * chunk;
            for (Index e0 = 0; e0 < E; e0 += T) {
                const Index width = std::min(T, E - e0); // the last tile of the row: the entries left
                for (Index t = 0; t < width; ++t) {
                    ua[t] = a[e0 + t] + i0;
                    if constexpr (Products) ub[t] = b[e0 + t] + i0;
                }
                for (Index p = 0; p < PT; ++p)
                    for (Index t = 0; t < width; ++t)
                        sptr[p * width + t] = p0 + p < P ? sums + ((p0 + p) * E + e0 + t) * packet_size
                                                         : w.discard + (p * width + t) * packet_size;
                const auto run = shape.narrower[static_cast<std::size_t>(width - 1)];
                if constexpr (Products)
                    run(cptr, ua, ub, c / packet_size, sptr);
                else
                    run(cptr, ua, c / packet_size, sptr);
            }
        }
    }
    for (Index p = 0; p < P; ++p)
        for (Index e = 0; e < E; ++e) {
            const double* lanes = sums + (p * E + e) * packet_size;
            double total = 0.0;
            for (Index t = 0; t < packet_size; ++t) total += lanes[t];
            totals[p * E + e] = total;
        }
    for (Index i = full_rows; i < rows; ++i) {
        if (direct == nullptr) fill(i, 1, w.coef_rows.data());
        for (Index p = 0; p < P; ++p) {
            const double ci = direct != nullptr ? direct[p][i] : w.coef_rows[static_cast<std::size_t>(p)][0];
            for (Index e = 0; e < E; ++e) {
                if constexpr (Products)
                    totals[p * E + e] += ci * (a[e][i] * b[e][i]);
                else
                    totals[p * E + e] += ci * a[e][i];
            }
        }
    }
    w.trim();
}

} // namespace multi_crossprod_impl

/// out[p·m·m + j + l·m] = Σ_i c_p(i) u_j(i) u_l(i) for p < P, j <= l < m, over `rows` rows of
/// the m columns u (columns[j]); the strict lower triangles are not written. fill(i0, count,
/// c) writes the P weight rows for rows [i0, i0 + count) to c[p][0 .. count) (it is called
/// for chunks of whole packets, then once per remaining row with count 1). With `direct` (P
/// pointers to columns of `rows` weights) the weights are read from there and fill is not
/// called: no copy where the weights are in memory already.
template <class Fill>
void multi_crossprod_block(const double* const* columns, Index m, Index rows, Index P, Fill fill, double* out,
                           const double* const* direct = nullptr) {
    // The entries: the upper triangle by columns, as pairs of column pointers.
    thread_local std::vector<const double*> first;
    thread_local std::vector<const double*> second;
    thread_local std::vector<double> totals;
    first.clear();
    second.clear();
    for (Index l = 0; l < m; ++l)
        for (Index j = 0; j <= l; ++j) {
            first.push_back(columns[j]);
            second.push_back(columns[l]);
        }
    const Index E = m * (m + 1) / 2;
    totals.resize(static_cast<std::size_t>(P * E));
    multi_crossprod_impl::tiled_sums<true>(first.data(), second.data(), E, rows, P, fill, direct, totals.data());
    for (Index p = 0; p < P; ++p) {
        Index e = 0;
        for (Index l = 0; l < m; ++l)
            for (Index j = 0; j <= l; ++j, ++e) out[p * m * m + j + l * m] = totals[static_cast<std::size_t>(p * E + e)];
    }
}

/// out[p·m + j] = Σ_i c_p(i) u_j(i) for p < P, j < m, over `rows` rows of the m columns u
/// (columns[j]); fill as for multi_crossprod_block, and the same summation order rules.
template <class Fill>
void multi_dot_block(const double* const* columns, Index m, Index rows, Index P, Fill fill, double* out) {
    multi_crossprod_impl::tiled_sums<false>(columns, nullptr, m, rows, P, fill, nullptr, out);
}

} // namespace moekit::detail
