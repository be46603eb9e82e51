#include "moekit/log_sum_exp.hpp"

#include "blocks.hpp"

#include <algorithm>
#include <cassert>
#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <limits>
#include <vector>

namespace moekit {

namespace {
constexpr double negative_infinity = -std::numeric_limits<double>::infinity();
} // namespace

double log_add_exp(double a, double b) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
    const double m = std::max(a, b);
    if (!std::isfinite(m)) return m; // both −∞, or a +∞
    // log(e^a + e^b) = m + log1p(e^{−|a−b|}); exp underflows harmlessly to 0.
    return m + std::log1p(std::exp(std::min(a, b) - m));
}

double log_sum_exp(const ConstVectorRef& v) {
    if (v.size() == 0) return negative_infinity;
    if (v.hasNaN()) return std::numeric_limits<double>::quiet_NaN();
    const double m = v.maxCoeff();
    if (!std::isfinite(m)) return m;
    double sum = 0.0; // in order, with std::exp (no Eigen packet transcendentals: see log_plus)
    for (Index k = 0; k < v.size(); ++k) sum += std::exp(v(k) - m);
    return m + std::log(sum);
}

namespace {

/// The reference (scalar) log-sum-exp of row i of a block, used for rows whose fast result is
/// not finite: it applies the contract exactly (NaN propagates, m = ±∞ gives m).
double log_sum_exp_row(const double* a, Index lda, Index cols) {
    double m = negative_infinity;
    for (Index k = 0; k < cols; ++k) {
        const double v = a[k * lda];
        if (std::isnan(v)) return std::numeric_limits<double>::quiet_NaN();
        m = std::max(m, v);
    }
    if (!std::isfinite(m)) return m;
    double sum = 0.0;
    for (Index k = 0; k < cols; ++k) sum += std::exp(a[k * lda] - m);
    return m + std::log(sum);
}

} // namespace

namespace detail {

namespace {

/// A register of doubles as a GCC vector (four with AVX, two with SSE2), and the same bits
/// as unsigned integers.
#if defined(__AVX512F__)
// Eight lanes: the exponential's loops are bound by how many operations the scheduler holds
// while their dependency chains resolve, so one instruction per eight values instead of four
// nearly doubles their throughput (measured on Zen 4, which executes it as two 256-bit halves).
constexpr Index lanes = 8;
using vd = double __attribute__((vector_size(64)));
using vu = std::uint64_t __attribute__((vector_size(64)));
#elif defined(__AVX__)
constexpr Index lanes = 4;
using vd = double __attribute__((vector_size(32)));
using vu = std::uint64_t __attribute__((vector_size(32)));
#else
constexpr Index lanes = 2;
using vd = double __attribute__((vector_size(16)));
using vu = std::uint64_t __attribute__((vector_size(16)));
#endif

inline vd splat(double c) { return vd{} + c; }
inline vd loadv(const double* p) {
    vd v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void storev(double* p, vd v) { std::memcpy(p, &v, sizeof v); }

/// a·b + c: one fused multiply-add where the target has one (-march=native builds), else a
/// multiply and an add (a library fma call would be slow).
inline double madd(double a, double b, double c) {
#ifdef __FMA__
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
}
inline vd madd(vd a, vd b, vd c) {
#if defined(__AVX512F__)
    return _mm512_fmadd_pd(a, b, c);
#elif defined(__FMA__)
    return _mm256_fmadd_pd(a, b, c);
#else
    return a * b + c;
#endif
}
inline vd madd(vd a, vd b, double c) { return madd(a, b, splat(c)); }
inline double select_below(double x, double bound, double then, double otherwise) { return x < bound ? then : otherwise; }
inline double select_above(double x, double bound, double then, double otherwise) { return x > bound ? then : otherwise; }
inline vd select_above(vd x, double bound, vd then, vd otherwise) { return x > splat(bound) ? then : otherwise; }
inline vd select_below(vd x, double bound, vd then, vd otherwise) { return x < splat(bound) ? then : otherwise; }
inline double constant_like(double, double c) { return c; }
inline vd constant_like(vd, double c) { return splat(c); }
inline std::uint64_t bits_of(double x) { return std::bit_cast<std::uint64_t>(x); }
inline vu bits_of(vd x) { return std::bit_cast<vu>(x); }
inline double from_bits(std::uint64_t b) { return std::bit_cast<double>(b); }
inline vd from_bits(vu b) { return std::bit_cast<vd>(b); }

/// Cody and Waite's reduction for the exponential: kd = x·scale + 1.5·2⁵² (the shifter leaves
/// n = round(x·scale) in kd's low bits), and x − n/scale in two parts, hi (few enough
/// significant bits that n·hi is exact) and lo. Returns the reduced argument r.
template <class T> T cody_waite(T x, double scale, double hi, double lo, T& kd) {
    constexpr double shifter = 0x1.8p52;
    kd = madd(x, constant_like(x, scale), shifter);
    const T n = kd - shifter;
    return madd(-n, constant_like(x, lo), madd(-n, constant_like(x, hi), x));
}

#if defined(__AVX512F__)
/// 2^(j/16), j = 0..15, correctly rounded (a wrong entry would fail the accuracy test of
/// tests/log_sum_exp_test.cpp by far more than its bound).
alignas(64) constexpr double exp2_sixteenths[16] = {
    0x1p+0,                0x1.0b5586cf9890fp+0, 0x1.172b83c7d517bp+0, 0x1.2387a6e756238p+0,
    0x1.306fe0a31b715p+0,  0x1.3dea64c123422p+0, 0x1.4bfdad5362a27p+0, 0x1.5ab07dd485429p+0,
    0x1.6a09e667f3bcdp+0,  0x1.7a11473eb0187p+0, 0x1.8ace5422aa0dbp+0, 0x1.9c49182a3f09p+0,
    0x1.ae89f995ad3adp+0,  0x1.c199bdd85529cp+0, 0x1.d5818dcfba487p+0, 0x1.ea4afa2a490dap+0};
inline double exp2_sixteenth(double, std::uint64_t bits) { return exp2_sixteenths[bits & 15u]; }
/// The same entries for eight lanes at once: one two-register permute (its index is the low four
/// bits of each lane), no memory gather.
inline vd exp2_sixteenth(vd, vu bits) {
    const __m512d lo = _mm512_load_pd(exp2_sixteenths);
    const __m512d hi = _mm512_load_pd(exp2_sixteenths + 8);
    return std::bit_cast<vd>(_mm512_permutex2var_pd(lo, std::bit_cast<__m512i>(bits), hi));
}

/// exp(x) for x in [−708, 709] (T = double, or a register of them as vd), AVX-512 builds: x =
/// (16m + j) ln 2 / 16 + r with 16m + j = round(16x / ln 2) (the 1.5·2⁵² shifter leaves it in the
/// low bits of kd) and |r| <= ln 2 / 32 by Cody and Waite's two-part ln 2 / 16; e^r − 1 by its
/// Taylor polynomial of degree 7 (truncation below 2e-18 relative on that interval, Estrin's
/// scheme), then exp(x) = 2^m · (t + t·(e^r − 1)) with t = 2^(j/16) from a 16-entry table read
/// by a register permute. Eight fewer operations than the degree-13 form below (0.54 against
/// 0.78 ns per value on Zen 4) and more accurate: within 1.02 ulp of the exact exponential over
/// 4·10⁶ values (2.1 for the other form). The same bits in the vector and the scalar form.
template <class T> T exp_core(T x) {
    constexpr double sixteen_log2e = 0x1.71547652b82fep4;
    constexpr double ln2_hi = 0x1.62e42fee00000p-5; // ln 2 / 16 in two parts: n·ln2_hi is exact
    constexpr double ln2_lo = 0x1.a39ef35793c76p-37;
    T kd;
    const T r = cody_waite(x, sixteen_log2e, ln2_hi, ln2_lo, kd);
    const T r2 = r * r;
    const T r4 = r2 * r2;
    // e^r − 1 = r + r²(c2 + c3 r) + r⁴[(c4 + c5 r) + r²(c6 + c7 r)], c_k = 1/k!.
    const T p23 = madd(r, constant_like(x, 1.0 / 6.0), 0.5);
    const T p45 = madd(r, constant_like(x, 1.0 / 120.0), 1.0 / 24.0);
    const T p67 = madd(r, constant_like(x, 1.0 / 5040.0), 1.0 / 720.0);
    const T q = madd(madd(p67, r2, p45), r4, madd(p23, r2, r));
    const auto bits = bits_of(kd);
    // kd's bits are those of 1.5·2⁵² (a multiple of 16) plus 16m + j: shifted right by four,
    // their low 12 bits are m mod 2¹²; shifted into the exponent field and added, mod 2⁶⁴, to
    // the bits of t = 2^(j/16) in [1, 2) (exponent 1023) they make t·2^m (exponent field
    // 1023 + m in [1, 2046], sign 0). Then t·2^m + t·2^m·(e^r − 1) in one rounding: the bits of
    // (t + t·(e^r − 1))·2^m, as the result is normal (x >= −708: m >= −1022 with j >= 9). A NaN
    // x (whose payload ends up in `scaled`) still gives NaN: e^r − 1 is NaN.
    const T scaled = from_bits(bits_of(exp2_sixteenth(x, bits)) + ((bits >> 4) << 52));
    return madd(scaled, q, scaled);
}
#else
/// exp(x) for x in [−708, 709] (T = double, or a register of them as vd), builds without
/// AVX-512: x = n ln 2 + r with n =
/// round(x / ln 2) (the 1.5·2⁵² shifter leaves n in the low bits of kd) and |r| <= ln 2 / 2
/// by Cody and Waite's two-part ln 2; e^r by its Taylor polynomial of degree 13 (truncation
/// below 5e-18 relative on that interval), then 2ⁿ built directly in the exponent field. No
/// division, no table, no branch. The polynomial is evaluated by Estrin's scheme (pairs, then
/// pairs of pairs by r², r⁴, r⁸): its longest dependency chain is 5 operations instead of
/// Horner's 13, so one exponential's latency no longer stalls the loops that call it (the
/// loops were latency-bound). Accuracy: a few ulp of std::exp (tests/log_sum_exp_test.cpp
/// checks the relative error over the whole range).
template <class T> T exp_core(T x) {
    constexpr double log2e = 0x1.71547652b82fep0;
    constexpr double ln2_hi = 0x1.62e42fee00000p-1; // 32 significant bits: n·ln2_hi is exact
    constexpr double ln2_lo = 0x1.a39ef35793c76p-33;
    T kd;
    const T r = cody_waite(x, log2e, ln2_hi, ln2_lo, kd);
    const T r2 = r * r;
    const T r4 = r2 * r2;
    const T r8 = r4 * r4;
    // c_k = 1/k!: (c0 + c1 r) + r²(c2 + c3 r) + r⁴[(c4 + c5 r) + r²(c6 + c7 r)]
    //             + r⁸[(c8 + c9 r) + r²(c10 + c11 r) + r⁴(c12 + c13 r)]
    const T p01 = madd(r, constant_like(x, 1.0), 1.0);
    const T p23 = madd(r, constant_like(x, 1.0 / 6.0), 0.5);
    const T p45 = madd(r, constant_like(x, 1.0 / 120.0), 1.0 / 24.0);
    const T p67 = madd(r, constant_like(x, 1.0 / 5040.0), 1.0 / 720.0);
    const T p89 = madd(r, constant_like(x, 1.0 / 362880.0), 1.0 / 40320.0);
    const T p1011 = madd(r, constant_like(x, 1.0 / 39916800.0), 1.0 / 3628800.0);
    const T p1213 = madd(r, constant_like(x, 1.0 / 6227020800.0), 1.0 / 479001600.0);
    const T p03 = madd(p23, r2, p01);
    const T p47 = madd(p67, r2, p45);
    const T p811 = madd(p1011, r2, p89);
    const T p07 = madd(p47, r4, p03);
    const T p813 = madd(p1213, r4, p811);
    const T p = madd(p813, r8, p07);
    // The low 12 bits of kd's representation are n mod 2¹², and n + 1023 in [1, 2046] for x in
    // [−708, 709] is the biased exponent of 2ⁿ. A multiplication, not an addition into p's
    // exponent bits: for a NaN x those low bits are the NaN's payload, which added into p
    // (NaN) would carry through its exponent and leave a finite number.
    return p * from_bits((bits_of(kd) + 1023u) << 52);
}

#endif

/// exp(x) for x <= 709 (a log-sum-exp term is <= 0) with results below the smallest normal
/// double (x < −708, so exp(−∞)) flushed to 0: subnormal results cost a microcode assist each
/// and are below the resolution of every sum they enter. NaN propagates.
template <class T> T exp_flushed(T x) {
    const T lo = constant_like(x, -708.0);
    const T e = exp_core(select_below(x, -708.0, lo, x)); // every lane computed, then selected
    return select_below(x, -708.0, constant_like(x, 0.0), e);
}

/// m[i] = max_k a[i + k·lda] (cols >= 1), and whether the block is clean: every row maximum
/// finite and no NaN anywhere (then every exp argument a − m is in [−∞, 0]).
bool row_max(const double* a, Index lda, Index rows, Index cols, double* m) {
    double bad = 0.0; // NaN entries, then non-finite maxima (−∞ entries are fine)
#pragma omp simd reduction(+ : bad)
    for (Index i = 0; i < rows; ++i) {
        m[i] = a[i];
        bad += a[i] != a[i] ? 1.0 : 0.0;
    }
    for (Index k = 1; k < cols; ++k) {
        const double* ak = a + k * lda;
#pragma omp simd reduction(+ : bad)
        for (Index i = 0; i < rows; ++i) {
            m[i] = ak[i] > m[i] ? ak[i] : m[i];
            bad += ak[i] != ak[i] ? 1.0 : 0.0;
        }
    }
#pragma omp simd reduction(+ : bad)
    for (Index i = 0; i < rows; ++i) bad += m[i] - m[i] == 0.0 ? 0.0 : 1.0;
    return bad == 0.0;
}


/// s[i] = Σ_k exp(a_ik − m_i) over the `cols` columns of a clean block (row_max held), and
/// with `e` also e[i + k·lde] = exp(a_ik − m_i) (e may be a itself). Per step two registers of
/// rows (two independent exponentials in flight) through all columns, their sums kept in
/// registers and added in column order; then one register, then the scalar tail: the one loop
/// of log_sum_exp_block and softmax_block, so their sums have the same bits.
void sum_exp(const double* a, Index lda, Index rows, Index cols, const double* m, double* s, double* e, Index lde) {
    Index i = 0;
    for (; i + 2 * lanes <= rows; i += 2 * lanes) {
        const vd m0 = loadv(m + i);
        const vd m1 = loadv(m + i + lanes);
        vd s0 = splat(0.0);
        vd s1 = splat(0.0);
        for (Index k = 0; k < cols; ++k) {
            const double* ak = a + k * lda;
            const vd e0 = exp_flushed(loadv(ak + i) - m0);
            const vd e1 = exp_flushed(loadv(ak + i + lanes) - m1);
            if (e) {
                storev(e + k * lde + i, e0);
                storev(e + k * lde + i + lanes, e1);
            }
            s0 = s0 + e0;
            s1 = s1 + e1;
        }
        storev(s + i, s0);
        storev(s + i + lanes, s1);
    }
    for (; i + lanes <= rows; i += lanes) {
        const vd m0 = loadv(m + i);
        vd s0 = splat(0.0);
        for (Index k = 0; k < cols; ++k) {
            const vd e0 = exp_flushed(loadv(a + k * lda + i) - m0);
            if (e) storev(e + k * lde + i, e0);
            s0 = s0 + e0;
        }
        storev(s + i, s0);
    }
    for (; i < rows; ++i) {
        double s0 = 0.0;
        for (Index k = 0; k < cols; ++k) {
            const double e0 = exp_flushed(a[i + k * lda] - m[i]);
            if (e) e[i + k * lde] = e0;
            s0 += e0;
        }
        s[i] = s0;
    }
}

/// log(x) for a positive, normal, finite x (T = double, or a register of them as vd): x = 2^e·m
/// with m in [√½, √2) (the exponent read from the bits, converted exactly by the 2⁵² trick),
/// f = m − 1, s = f / (2 + f), and log(1 + f) = f − (f²/2 − s(f²/2 + R)) with R = Σ_{k=1..11}
/// 2 s^{2k}/(2k + 1) (the series of 2 atanh(s), |s| <= 0.172: truncation below 1e-19
/// relative), then e·ln 2 in two parts. Within 1 ulp of the exact logarithm (measured 0.77
/// ulp over 4·10⁵ values from 1e−304 to 1e304 and the edges), the same bits in the vector and
/// the scalar form, about twice as fast as Eigen's packet log; no table.
template <class T> T log_core(T x) {
    constexpr double ln2_hi = 0x1.62e42fee00000p-1; // 32 significant bits: e·ln2_hi is exact
    constexpr double ln2_lo = 0x1.a39ef35793c76p-33;
    constexpr std::uint64_t mantissa = 0x000fffffffffffffULL;
    constexpr std::uint64_t one = 0x3ff0000000000000ULL;
    constexpr std::uint64_t two52 = 0x4330000000000000ULL; // the bits of 2⁵²
    const auto b = bits_of(x);
    const T m = from_bits((b & mantissa) | one);
    // The biased exponent as a double: 2⁵² + E − 2⁵² (exact), minus the bias.
    T e = from_bits((b >> 52) | two52) - constant_like(x, 4503599627370496.0 + 1023.0);
    const T big = select_above(m, 1.4142135623730951, constant_like(x, 1.0), constant_like(x, 0.0));
    const T f = m * (constant_like(x, 1.0) - constant_like(x, 0.5) * big) - constant_like(x, 1.0);
    e = e + big;
    const T s = f / (constant_like(x, 2.0) + f);
    const T z = s * s;
    T r = constant_like(x, 2.0 / 23.0);
    r = madd(r, z, 2.0 / 21.0);
    r = madd(r, z, 2.0 / 19.0);
    r = madd(r, z, 2.0 / 17.0);
    r = madd(r, z, 2.0 / 15.0);
    r = madd(r, z, 2.0 / 13.0);
    r = madd(r, z, 2.0 / 11.0);
    r = madd(r, z, 2.0 / 9.0);
    r = madd(r, z, 2.0 / 7.0);
    r = madd(r, z, 2.0 / 5.0);
    r = madd(r, z, 2.0 / 3.0);
    r = r * z;
    const T hfsq = constant_like(x, 0.5) * f * f;
    const T lo = madd(s, hfsq + r, e * constant_like(x, ln2_lo));
    return madd(e, constant_like(x, ln2_hi), f - (hfsq - lo));
}

/// out[i] = m[i] + log(s[i]) for s[i] in [1, 2⁵³) (a log-sum-exp's sum of terms whose largest is
/// 1): log_core on full registers, then the scalar form (the same bits) for the tail, so every
/// row gets the same bits wherever it sits in a block. Not Eigen's packet log: its 8-lane
/// AVX-512 form returns results whose last bit depends on whatever the stack held before (in
/// Eigen 3.4 with GCC 12, measured: the same input gave different results after an unrelated
/// call), which made -march=native fits irreproducible; and log_core is faster.
void log_plus(const double* m, const double* s, Index rows, double* out) {
    Index i = 0;
    for (; i + lanes <= rows; i += lanes) storev(out + i, loadv(m + i) + log_core(loadv(s + i)));
    for (; i < rows; ++i) out[i] = m[i] + log_core(s[i]);
}

/// Whether row `a` (cols >= 1 entries, stride lda) is clean: no NaN and a finite maximum, which
/// goes to m (the maximum as row_max forms it).
bool clean_row(const double* a, Index lda, Index cols, double& m) {
    m = a[0];
    bool nan = a[0] != a[0];
    for (Index k = 1; k < cols; ++k) {
        const double v = a[k * lda];
        m = v > m ? v : m;
        nan = nan || v != v;
    }
    return !nan && m - m == 0.0;
}

/// Σ_k exp(a_k − m) of a clean row: sum_exp's operations for one row (the same bits).
double row_sum_exp(const double* a, Index lda, Index cols, double m) {
    double s = 0.0;
    for (Index k = 0; k < cols; ++k) s += exp_flushed(a[k * lda] - m);
    return s;
}

/// softmax_block for row i alone, whatever the other rows hold. A clean row: its maximum and
/// sum go to m[i] and s[i] and its probabilities e_k · (1/s) are written, with the operations
/// of the block path (the same bits). Otherwise the reference: m[i] = log_sum_exp_row, s[i] =
/// 1 (so that m + log s is that normaliser exactly), the log-probabilities v_k = a_k − norm
/// (a_k itself when the normaliser is not finite) and p_k = exp(v_k); with prob the
/// probabilities go there and a is left for the caller's subtraction, else p replaces a.
void softmax_row(double* a, Index lda, Index cols, double* m, double* s, double* prob, Index ldp) {
    double mi = 0.0;
    if (clean_row(a, lda, cols, mi)) {
        double* p = prob ? prob : a;
        const Index ld = prob ? ldp : lda;
        double si = 0.0;
        for (Index k = 0; k < cols; ++k) {
            const double e = exp_flushed(a[k * lda] - mi);
            p[k * ld] = e;
            si += e;
        }
        const double inv = 1.0 / si;
        for (Index k = 0; k < cols; ++k) p[k * ld] *= inv;
        *m = mi;
        *s = si;
        return;
    }
    const double norm = log_sum_exp_row(a, lda, cols);
    for (Index k = 0; k < cols; ++k) {
        const double v = std::isfinite(norm) ? a[k * lda] - norm : a[k * lda];
        const double p = v > 709.0 ? std::exp(v) : exp_flushed(v);
        if (prob)
            prob[k * ldp] = p;
        else
            a[k * lda] = p;
    }
    *m = norm;
    *s = 1.0;
}

/// softmax_block for C columns, on pairs of registers of rows: the row maxima, then s = Σ_k
/// exp(a_k − m) into s and the probabilities e_k / s (into prob, or over a when prob is null),
/// the C values and then their exponentials kept in registers instead of passing over the block
/// for the maxima and storing the exponentials for the division. Per row the operations of
/// row_max, sum_exp and the block normalisation in their order (the same bits). A pair of
/// registers with a row that is not clean goes row by row (softmax_row), as do the rows after
/// the last pair.
template <int C>
void softmax_registers(double* a, Index lda, Index rows, double* m, double* s, double* prob, Index ldp) {
    Index i = 0;
    for (; i + 2 * lanes <= rows; i += 2 * lanes) {
        vd x0[C];
        vd x1[C];
        vd bad = splat(0.0);
#pragma GCC unroll 8
        for (int k = 0; k < C; ++k) {
            x0[k] = loadv(a + k * lda + i);
            x1[k] = loadv(a + k * lda + i + lanes);
            bad = bad + (x0[k] != x0[k] ? splat(1.0) : splat(0.0)) + (x1[k] != x1[k] ? splat(1.0) : splat(0.0));
        }
        vd m0 = x0[0];
        vd m1 = x1[0];
#pragma GCC unroll 8
        for (int k = 1; k < C; ++k) {
            m0 = x0[k] > m0 ? x0[k] : m0;
            m1 = x1[k] > m1 ? x1[k] : m1;
        }
        bad = bad + (m0 - m0 == splat(0.0) ? splat(0.0) : splat(1.0)) + (m1 - m1 == splat(0.0) ? splat(0.0) : splat(1.0));
        bool clean = true;
        for (Index t = 0; t < lanes; ++t) clean = clean && bad[t] == 0.0;
        if (!clean) {
            for (Index r = i; r < i + 2 * lanes; ++r)
                softmax_row(a + r, lda, C, m + r, s + r, prob ? prob + r : nullptr, ldp);
            continue;
        }
        vd s0 = splat(0.0);
        vd s1 = splat(0.0);
#pragma GCC unroll 8
        for (int k = 0; k < C; ++k) {
            x0[k] = exp_flushed(x0[k] - m0);
            x1[k] = exp_flushed(x1[k] - m1);
            s0 = s0 + x0[k];
            s1 = s1 + x1[k];
        }
        storev(m + i, m0);
        storev(m + i + lanes, m1);
        storev(s + i, s0);
        storev(s + i + lanes, s1);
        const vd inv0 = splat(1.0) / s0;
        const vd inv1 = splat(1.0) / s1;
#pragma GCC unroll 8
        for (int k = 0; k < C; ++k) {
            double* pk = prob ? prob + k * ldp : a + k * lda;
            storev(pk + i, x0[k] * inv0);
            storev(pk + i + lanes, x1[k] * inv1);
        }
    }
    for (; i < rows; ++i) softmax_row(a + i, lda, C, m + i, s + i, prob ? prob + i : nullptr, ldp);
}

using SoftmaxRegisters = void (*)(double*, Index, Index, double*, double*, double*, Index);

/// softmax_registers<C> by C − 2, for C = 2 .. 8 (more columns than registers hold: sum_exp).
constexpr SoftmaxRegisters softmax_register_table[] = {softmax_registers<2>, softmax_registers<3>, softmax_registers<4>,
                                                       softmax_registers<5>, softmax_registers<6>, softmax_registers<7>,
                                                       softmax_registers<8>};

/// a_ik −= norm_i, the log-probabilities from the log joint; rows with a non-finite
/// normaliser keep their values (log_softmax's contract).
void subtract_normalisers(double* a, Index lda, Index rows, Index cols, const double* norm) {
    const Eigen::Map<const Eigen::ArrayXd> lse(norm, rows);
    if (lse.isFinite().all()) {
        for (Index k = 0; k < cols; ++k) Eigen::Map<Eigen::ArrayXd>(a + k * lda, rows) -= lse;
        return;
    }
    for (Index i = 0; i < rows; ++i)
        if (std::isfinite(norm[i]))
            for (Index k = 0; k < cols; ++k) a[i + k * lda] -= norm[i];
}

} // namespace

void log_sum_exp_block(const double* a, Index lda, Index rows, Index cols, double* out) {
    assert(rows <= block_rows);
    if (cols == 0) {
        std::fill(out, out + rows, negative_infinity);
        return;
    }
    // Column-major storage: m = the row maxima, then m + log Σ_k exp(a_k − m), column by
    // column over the rows (vectorised). In a block with a NaN or a non-finite row maximum,
    // row by row: the clean rows with the same operations (the same bits), the others through
    // the reference, which applies the contract exactly.
    double m[block_rows];
    double s[block_rows];
    if (!row_max(a, lda, rows, cols, m)) {
        for (Index r = 0; r < rows; ++r) {
            double mr = 0.0;
            out[r] = clean_row(a + r, lda, cols, mr) ? mr + log_core(row_sum_exp(a + r, lda, cols, mr))
                                                     : log_sum_exp_row(a + r, lda, cols);
        }
        return;
    }
    sum_exp(a, lda, rows, cols, m, s, nullptr, 0);
    // Every term is <= 1 and the largest is 1: the sum is in [1, cols], its log finite.
    log_plus(m, s, rows, out);
}

void softmax_block(double* a, Index lda, Index rows, Index cols, double* norm, double* prob, Index ldp) {
    assert(rows <= block_rows);
    assert(prob != a);
    if (cols == 0) {
        std::fill(norm, norm + rows, negative_infinity);
        return;
    }
    // The normalisers are m + log s (a clean row's sum is in [1, cols]; a row through the
    // reference has its normaliser in m and s = 1), exactly as log_sum_exp_block computes them:
    // both give the same bits (the gate's Newton steps compare values from both). With prob, a
    // becomes the log-probabilities, as log_softmax_block leaves them.
    double m[block_rows];
    double s[block_rows];
    if (cols >= 2 && cols <= 8) {
        // Up to 8 columns: one pass with the values in registers (softmax_registers).
        softmax_register_table[cols - 2](a, lda, rows, m, s, prob, ldp);
        log_plus(m, s, rows, norm);
    } else if (!row_max(a, lda, rows, cols, m)) {
        // A block with a NaN or a non-finite row maximum: row by row (softmax_row).
        for (Index r = 0; r < rows; ++r) softmax_row(a + r, lda, cols, m + r, s + r, prob ? prob + r : nullptr, ldp);
        log_plus(m, s, rows, norm);
    } else {
        // e = exp(a − m) into the probabilities (a itself when prob is null), s = Σ_k e, then
        // e · (1/s).
        sum_exp(a, lda, rows, cols, m, s, prob ? prob : a, prob ? ldp : lda);
        log_plus(m, s, rows, norm);
        Eigen::Map<Eigen::ArrayXd> inv(s, rows);
        inv = inv.inverse();
        for (Index k = 0; k < cols; ++k) Eigen::Map<Eigen::ArrayXd>(prob ? prob + k * ldp : a + k * lda, rows) *= inv;
    }
    if (prob) subtract_normalisers(a, lda, rows, cols, norm);
}

void log_softmax_block(double* a, Index lda, Index rows, Index cols, double* norm) {
    log_sum_exp_block(a, lda, rows, cols, norm);
    subtract_normalisers(a, lda, rows, cols, norm);
}

void exp_block(const double* a, Index rows, double* out) {
    Index i = 0;
    for (; i + lanes <= rows; i += lanes) {
        const vd x = loadv(a + i);
        storev(out + i, exp_flushed(x < splat(709.0) ? x : splat(709.0))); // x > 709, NaN: below
    }
    for (; i < rows; ++i) out[i] = exp_flushed(a[i] < 709.0 ? a[i] : 709.0);
    for (i = 0; i < rows; ++i)
        if (!(a[i] <= 709.0)) out[i] = std::exp(a[i]); // overflow to +∞, NaN: the exact function
}

Vector weighted_column_sums(const ConstMatrixRef& a, const ConstVectorRef& w) {
    const Index n = a.rows();
    const Index K = a.cols();
    Vector total = Vector::Zero(K);
    std::vector<char> unused;
    reduce_blocks(
        n,
        K,
        unused,
        [] { return char{}; },
        [&](Index b, double* slot, char&) {
            const Index begin = block_begin(b);
            const Index rows = block_size(b, n);
            const Eigen::Map<const Vector> wb(w.data() + begin, rows);
            for (Index k = 0; k < K; ++k)
                slot[k] = wb.dot(Eigen::Map<const Vector>(a.data() + k * a.outerStride() + begin, rows));
        },
        [&](const double* slot, Index) { total += Eigen::Map<const Vector>(slot, K); });
    return total;
}

} // namespace detail

Vector log_sum_exp_rows(const ConstMatrixRef& a) {
    const Index n = a.rows();
    Vector out(n);
    std::vector<char> unused;
    detail::for_each_block(
        n, unused, [] { return char{}; }, [&](Index b, char&) {
            const Index begin = detail::block_begin(b);
            detail::log_sum_exp_block(
                a.data() + begin, a.outerStride(), detail::block_size(b, n), a.cols(), out.data() + begin);
        });
    return out;
}

Vector log_softmax_rows_in_place(Matrix& a) {
    const Index n = a.rows();
    Vector norm(n);
    std::vector<char> unused;
    detail::for_each_block(
        n, unused, [] { return char{}; }, [&](Index b, char&) {
            const Index begin = detail::block_begin(b);
            detail::log_softmax_block(
                a.data() + begin, a.outerStride(), detail::block_size(b, n), a.cols(), norm.data() + begin);
        });
    return norm;
}

Matrix exp_of_log(const ConstMatrixRef& a) {
    // In parallel over sample blocks; exp_block flushes exp(x < −708), so exp(−∞), to 0.
    const Index n = a.rows();
    const Index K = a.cols();
    Matrix out(n, K);
    std::vector<char> unused;
    detail::for_each_block(
        n, unused, [] { return char{}; }, [&](Index b, char&) {
            const Index begin = detail::block_begin(b);
            const Index rows = detail::block_size(b, n);
            for (Index k = 0; k < K; ++k)
                detail::exp_block(a.data() + k * a.outerStride() + begin, rows, out.data() + k * n + begin);
        });
    return out;
}

} // namespace moekit
