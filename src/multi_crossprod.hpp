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

/// A register tile shape: PT weight rows × T products, PT·T + T + 1 vector registers.
struct TileShape {
    int rows;
    int entries;
    TileFunction run;
};

/// The shapes that fit the register file: 32 vector registers with AVX-512, 16 otherwise.
#ifdef __AVX512F__
inline constexpr TileShape shapes[] = {{6, 4, tile<6, 4>}, {4, 6, tile<4, 6>}, {3, 7, tile<3, 7>},
                                       {2, 9, tile<2, 9>}, {1, 14, tile<1, 14>}, {5, 5, tile<5, 5>}};
#else
inline constexpr TileShape shapes[] = {{3, 3, tile<3, 3>}, {2, 4, tile<2, 4>}, {1, 7, tile<1, 7>}};
#endif

/// The shape with the least work for P weight rows and E products: padded FMAs plus the
/// products recomputed for every tile row (ties: the first listed).
inline const TileShape& best_shape(Index P, Index E) {
    const TileShape* best = &shapes[0];
    Index best_cost = -1;
    for (const TileShape& shape : shapes) {
        const Index p_pad = (P + shape.rows - 1) / shape.rows * shape.rows;
        const Index e_pad = (E + shape.entries - 1) / shape.entries * shape.entries;
        const Index cost = p_pad * e_pad + (p_pad / shape.rows) * e_pad;
        if (best_cost < 0 || cost < best_cost) {
            best = &shape;
            best_cost = cost;
        }
    }
    return *best;
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

struct DotTileShape {
    int rows;
    int columns;
    DotTileFunction run;
};

/// PT·T + T + 1 vector registers at most: 32 with AVX-512, 16 otherwise.
#ifdef __AVX512F__
inline constexpr DotTileShape dot_shapes[] = {{4, 6, dot_tile<4, 6>}, {3, 6, dot_tile<3, 6>}, {2, 6, dot_tile<2, 6>},
                                              {1, 6, dot_tile<1, 6>}, {6, 4, dot_tile<6, 4>}, {5, 5, dot_tile<5, 5>},
                                              {3, 7, dot_tile<3, 7>}, {2, 10, dot_tile<2, 10>}, {1, 15, dot_tile<1, 15>},
                                              {4, 4, dot_tile<4, 4>}, {4, 5, dot_tile<4, 5>}, {6, 3, dot_tile<6, 3>}};
#else
inline constexpr DotTileShape dot_shapes[] = {{3, 3, dot_tile<3, 3>}, {2, 4, dot_tile<2, 4>}, {2, 5, dot_tile<2, 5>},
                                              {1, 7, dot_tile<1, 7>}, {4, 2, dot_tile<4, 2>}, {2, 3, dot_tile<2, 3>},
                                              {1, 3, dot_tile<1, 3>}};
#endif

/// The shape with the least work for P weight rows and m columns: padded FMAs plus the loads
/// of columns (once per tile row) and of weight rows (once per tile column); ties: the first.
inline const DotTileShape& best_dot_shape(Index P, Index m) {
    const DotTileShape* best = &dot_shapes[0];
    Index best_cost = -1;
    for (const DotTileShape& shape : dot_shapes) {
        const Index p_pad = (P + shape.rows - 1) / shape.rows * shape.rows;
        const Index m_pad = (m + shape.columns - 1) / shape.columns * shape.columns;
        const Index cost = p_pad * m_pad + (p_pad / shape.rows) * m_pad + (m_pad / shape.columns) * p_pad;
        if (best_cost < 0 || cost < best_cost) {
            best = &shape;
            best_cost = cost;
        }
    }
    return *best;
}

/// Rows per chunk for P weight rows: the chunk's weight rows take at most ~16 KB of L1.
inline Index chunk_rows(Index P) {
    return std::max<Index>(4 * packet_size,
                           std::min<Index>(512, (2048 / std::max<Index>(P, 1)) / packet_size * packet_size));
}

/// The per-thread work space of both kernels, kept between calls (no allocation per block once
/// sized): the P_padded weight rows of a chunk (rows past P stay 0), `sums` packet accumulators
/// followed by a discard area for the padded rows' tiles, and a chunk of zeros.
struct Workspace {
    AlignedBuffer coef;
    AlignedBuffer sums;
    AlignedBuffer zeros;
    std::vector<double*> coef_rows; ///< the P real weight rows
    double* discard = nullptr;

    void prepare(Index P, Index P_padded, Index chunk, Index sums_count) {
        coef.assign(static_cast<std::size_t>(P_padded * chunk), 0.0);
        sums.assign(static_cast<std::size_t>((sums_count + max_tile_accumulators) * packet_size), 0.0);
        zeros.assign(static_cast<std::size_t>(chunk), 0.0);
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

/// out[p·m·m + j + l·m] = Σ_i c_p(i) u_j(i) u_l(i) for p < P, j <= l < m, over `rows` rows of
/// the m columns u (columns[j]); the strict lower triangles are not written. fill(i0, count,
/// c) writes the P weight rows for rows [i0, i0 + count) to c[p][0 .. count) (it is called
/// for chunks of whole packets, then once per remaining row with count 1).
template <class Fill>
void multi_crossprod_block(const double* const* columns, Index m, Index rows, Index P, Fill fill, double* out) {
    using namespace multi_crossprod_impl;
    const Index E = m * (m + 1) / 2;
    const TileShape& shape = best_shape(P, E);
    const Index PT = shape.rows;
    const Index T = shape.entries;
    const Index E_padded = (E + T - 1) / T * T;
    const Index P_padded = (P + PT - 1) / PT * PT;
    const Index chunk = chunk_rows(P);
    Workspace& w = workspace();
    w.prepare(P, P_padded, chunk, P * E_padded); // padded weight rows write to w.discard
    thread_local std::vector<std::pair<Index, Index>> entry;
    entry.clear();
    for (Index l = 0; l < m; ++l)
        for (Index j = 0; j <= l; ++j) entry.emplace_back(j, l); // the upper triangle by columns
    const std::vector<double*>& coef_rows = w.coef_rows;
    const double* coef = w.coef.data();
    double* sums = w.sums.data();
    const double* zeros = w.zeros.data();
    double* discard = w.discard;
    const Index full_rows = rows / packet_size * packet_size;
    const double* cptr[max_tile_accumulators];
    const double* uj[max_tile_accumulators];
    const double* ul[max_tile_accumulators];
    double* sptr[max_tile_accumulators];
    for (Index i0 = 0; i0 < full_rows; i0 += chunk) {
        const Index c = std::min(chunk, full_rows - i0);
        fill(i0, c, coef_rows.data());
        for (Index p0 = 0; p0 < P_padded; p0 += PT) {
            for (Index p = 0; p < PT; ++p) cptr[p] = coef + (p0 + p) * chunk;
            for (Index e0 = 0; e0 < E_padded; e0 += T) {
                for (Index t = 0; t < T; ++t) {
                    const Index e = e0 + t;
                    const bool real = e < E;
                    uj[t] = real ? columns[entry[static_cast<std::size_t>(e)].first] + i0 : zeros;
                    ul[t] = real ? columns[entry[static_cast<std::size_t>(e)].second] + i0 : zeros;
                }
                for (Index p = 0; p < PT; ++p)
                    for (Index t = 0; t < T; ++t)
                        sptr[p * T + t] = p0 + p < P ? sums + ((p0 + p) * E_padded + e0 + t) * packet_size
                                                     : discard + (p * T + t) * packet_size;
                shape.run(cptr, uj, ul, c / packet_size, sptr);
            }
        }
    }
    // Lanes summed in order; then the rows past the last full packet, one by one.
    for (Index p = 0; p < P; ++p)
        for (Index e = 0; e < E; ++e) {
            const double* lanes = sums + (p * E_padded + e) * packet_size;
            double total = 0.0;
            for (Index t = 0; t < packet_size; ++t) total += lanes[t];
            const auto [j, l] = entry[static_cast<std::size_t>(e)];
            out[p * m * m + j + l * m] = total;
        }
    for (Index i = full_rows; i < rows; ++i) {
        fill(i, 1, coef_rows.data());
        for (Index p = 0; p < P; ++p) {
            const double ci = coef_rows[static_cast<std::size_t>(p)][0];
            for (Index e = 0; e < E; ++e) {
                const auto [j, l] = entry[static_cast<std::size_t>(e)];
                out[p * m * m + j + l * m] += ci * (columns[j][i] * columns[l][i]);
            }
        }
    }
    w.trim();
}

/// out[p·m + j] = Σ_i c_p(i) u_j(i) for p < P, j < m, over `rows` rows of the m columns u
/// (columns[j]); fill as for multi_crossprod_block. The same summation order rules: packet
/// lanes over the whole call, summed in order, then the rows past the last full packet.
template <class Fill>
void multi_dot_block(const double* const* columns, Index m, Index rows, Index P, Fill fill, double* out) {
    using namespace multi_crossprod_impl;
    const DotTileShape& shape = best_dot_shape(P, m);
    const Index PT = shape.rows;
    const Index T = shape.columns;
    const Index m_padded = (m + T - 1) / T * T;
    const Index P_padded = (P + PT - 1) / PT * PT;
    const Index chunk = chunk_rows(P);
    Workspace& w = workspace();
    w.prepare(P, P_padded, chunk, P * m_padded);
    const std::vector<double*>& coef_rows = w.coef_rows;
    const double* coef = w.coef.data();
    double* sums = w.sums.data();
    const double* zeros = w.zeros.data();
    double* discard = w.discard;
    const Index full_rows = rows / packet_size * packet_size;
    const double* cptr[max_tile_accumulators];
    const double* u[max_tile_accumulators];
    double* sptr[max_tile_accumulators];
    for (Index i0 = 0; i0 < full_rows; i0 += chunk) {
        const Index c = std::min(chunk, full_rows - i0);
        fill(i0, c, coef_rows.data());
        for (Index p0 = 0; p0 < P_padded; p0 += PT) {
            for (Index p = 0; p < PT; ++p) cptr[p] = coef + (p0 + p) * chunk;
            for (Index j0 = 0; j0 < m_padded; j0 += T) {
                for (Index t = 0; t < T; ++t) u[t] = j0 + t < m ? columns[j0 + t] + i0 : zeros;
                for (Index p = 0; p < PT; ++p)
                    for (Index t = 0; t < T; ++t)
                        sptr[p * T + t] = p0 + p < P ? sums + ((p0 + p) * m_padded + j0 + t) * packet_size
                                                     : discard + (p * T + t) * packet_size;
                shape.run(cptr, u, c / packet_size, sptr);
            }
        }
    }
    for (Index p = 0; p < P; ++p)
        for (Index j = 0; j < m; ++j) {
            const double* lanes = sums + (p * m_padded + j) * packet_size;
            double total = 0.0;
            for (Index t = 0; t < packet_size; ++t) total += lanes[t];
            out[p * m + j] = total;
        }
    for (Index i = full_rows; i < rows; ++i) {
        fill(i, 1, coef_rows.data());
        for (Index p = 0; p < P; ++p) {
            const double ci = coef_rows[static_cast<std::size_t>(p)][0];
            for (Index j = 0; j < m; ++j) out[p * m + j] += ci * columns[j][i];
        }
    }
    w.trim();
}

} // namespace moekit::detail
