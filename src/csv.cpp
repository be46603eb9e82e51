#include "moekit/csv.hpp"
#include "moekit/gates.hpp"

#include "blocks.hpp"
#include "moekit/errors.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <initializer_list>
#include <memory>
#include <new>
#include <string_view>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace moekit {

namespace {

constexpr std::string_view stdin_name = "<stdin>";
constexpr std::string_view stdout_name = "<stdout>";

/// Joins pieces of text (GCC 12 warns falsely, -Wrestrict, on "literal" + std::string&&).
std::string concat(std::initializer_list<std::string_view> pieces) {
    std::string out;
    for (std::string_view piece : pieces)
        out.append(piece);
    return out;
}

/// The name used for `path` in messages.
std::string display_name(const std::string& path) {
    return path == "-" ? std::string(stdin_name) : path;
}

/// Column names come from the file: keep messages on one line.
std::string printable(std::string_view text, std::size_t max_length = 60) {
    std::string shown;
    for (char c : text.substr(0, max_length)) {
        shown.push_back((c >= 0 && c < 32) || c == 127 ? '?' : c);
    }
    if (text.size() > max_length) shown.append("...");
    return shown;
}

[[noreturn]] void throw_system_error(std::string_view file, std::string_view what, int error) {
    throw_data_error(file, 0, {}, concat({what, ": ", std::strerror(error)}));
}

bool is_blank(char c, char delimiter) {
    return (c == ' ' || c == '\t') && c != delimiter;
}

/// Empty or only spaces and tabs; a line of tab delimiters (empty fields) is not blank.
bool is_blank_line(std::string_view line, char delimiter) {
    return std::all_of(
        line.begin(), line.end(), [delimiter](char c) { return is_blank(c, delimiter); });
}

std::string_view trim(std::string_view text, char delimiter) {
    while (!text.empty() && is_blank(text.front(), delimiter))
        text.remove_prefix(1);
    while (!text.empty() && is_blank(text.back(), delimiter))
        text.remove_suffix(1);
    return text;
}

// ---------------------------------------------------------------------------------------------
// Splitting fields

enum class FieldStatus {
    Ok,
    Unterminated, ///< a quote that is not closed before the end of the line
    TrailingText  ///< text between the closing quote and the delimiter
};

struct Field {
    std::string_view raw;  ///< the field as in the file (for messages)
    std::string_view text; ///< content: blanks trimmed, outer quotes removed ("" still doubled)
    bool quoted = false;
    bool escaped = false; ///< the quoted content holds "" pairs
    FieldStatus status = FieldStatus::Ok;
};

/// Scans one field starting at `p`; returns the position of the delimiter that ends it, or
/// `end`.
const char* scan_field(const char* p, const char* end, char delimiter, Field& field) {
    const char* start = p;
    while (p != end && is_blank(*p, delimiter))
        ++p;
    field.quoted = false;
    field.escaped = false;
    field.status = FieldStatus::Ok;
    if (p != end && *p == '"') {
        field.quoted = true;
        const char* q = p + 1;
        for (;;) {
            const auto* close =
                static_cast<const char*>(std::memchr(q, '"', static_cast<std::size_t>(end - q)));
            if (close == nullptr) {
                field.status = FieldStatus::Unterminated;
                field.raw = std::string_view(start, static_cast<std::size_t>(end - start));
                field.text = field.raw;
                return end;
            }
            if (close + 1 != end && close[1] == '"') {
                field.escaped = true;
                q = close + 2;
                continue;
            }
            field.text = std::string_view(p + 1, static_cast<std::size_t>(close - (p + 1)));
            const char* after = close + 1;
            while (after != end && is_blank(*after, delimiter))
                ++after;
            if (after != end && *after != delimiter) {
                field.status = FieldStatus::TrailingText;
                const auto* stop = static_cast<const char*>(
                    std::memchr(after, delimiter, static_cast<std::size_t>(end - after)));
                if (stop == nullptr) stop = end;
                field.raw = std::string_view(start, static_cast<std::size_t>(stop - start));
                return stop;
            }
            field.raw = std::string_view(start, static_cast<std::size_t>(after - start));
            return after;
        }
    }
    const auto* stop =
        static_cast<const char*>(std::memchr(p, delimiter, static_cast<std::size_t>(end - p)));
    if (stop == nullptr) stop = end;
    const char* last = stop;
    while (last != p && is_blank(last[-1], delimiter))
        --last;
    field.text = std::string_view(p, static_cast<std::size_t>(last - p));
    field.raw = std::string_view(start, static_cast<std::size_t>(stop - start));
    return stop;
}

/// Splits `line` into `fields` (reused). Returns the number of fields; fields past `max_fields`
/// are counted but not stored.
std::size_t split_line(std::string_view line,
                       char delimiter,
                       std::vector<Field>& fields,
                       std::size_t max_fields) {
    fields.clear();
    const char* p = line.data();
    const char* end = p + line.size();
    std::size_t count = 0;
    Field scratch;
    for (;;) {
        Field& field = count < max_fields ? fields.emplace_back() : scratch;
        const char* stop = scan_field(p, end, delimiter, field);
        ++count;
        if (count > max_fields && field.status != FieldStatus::Ok) {
            // A broken quote past the last column: keep it so the caller can report it.
            fields.push_back(field);
        }
        if (stop == end) break;
        p = stop + 1;
    }
    return count;
}

/// The content of a field with "" turned back into ".
std::string unescape(const Field& field) {
    if (!field.escaped) return std::string(field.text);
    std::string out;
    out.reserve(field.text.size());
    for (std::size_t i = 0; i < field.text.size(); ++i) {
        out.push_back(field.text[i]);
        if (field.text[i] == '"') ++i; // skip the second quote of the pair
    }
    return out;
}

[[noreturn]] void
throw_field_error(std::string_view file, long line, std::string_view column, const Field& field) {
    if (field.status == FieldStatus::Unterminated) {
        throw_data_error(
            file, line, column, "unterminated quote (a quoted field cannot span lines)", field.raw);
    }
    throw_data_error(file, line, column, "unexpected text after the closing quote", field.raw);
}

/// Parses the header line into column names.
std::vector<std::string>
parse_header(std::string_view line, char delimiter, const std::string& name, long line_number) {
    // io::LineReader already skips a byte-order mark at the start of the input; this also
    // catches one after leading blank lines.
    if (line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);
    std::vector<Field> fields;
    const std::size_t count = split_line(line, delimiter, fields, static_cast<std::size_t>(-1));
    std::vector<std::string> names;
    names.reserve(count);
    for (const Field& field : fields) {
        if (field.status != FieldStatus::Ok) throw_field_error(name, line_number, {}, field);
        names.push_back(unescape(field));
    }
    return names;
}

// ---------------------------------------------------------------------------------------------
// Reading numbers: std::from_chars, with a faster path for the usual forms
//
// Most cells are short decimals ("-45.83937186736918", "0.5", "1e-3"). For those with at most
// 19 digits and a decimal exponent q in [-27, 55] (after moving the point behind the last
// digit), the value is computed here by Eisel and Lemire's method: the digits times a 128-bit
// power of five, which in this range always decides the correctly rounded double (D. Lemire,
// "Number parsing at a gigabyte per second", Software: Practice and Experience 51 (2021),
// sections 5 and 6). Every other text (more digits, larger exponents, inf, nan, malformed)
// goes to std::from_chars itself. Both give the nearest double, ties to even, so the result
// is the same bits and the same end of the number as std::from_chars alone; tests/csv_test.cpp
// compares the two on a large sample of numbers.

__extension__ typedef unsigned __int128 uint128;

/// Decimal exponents for which the 128-bit powers of five below are exact (q >= 0: 5^55 <
/// 2^128) or rounded up from a quotient of 64-bit numbers (q < 0: 5^27 < 2^64); in this range
/// the Eisel-Lemire product never needs more than 128 bits to decide the rounding.
constexpr int min_power_of_five = -27;
constexpr int max_power_of_five = 55;

struct Power128 {
    std::uint64_t high;
    std::uint64_t low;
};

/// 5^q scaled by a power of two into [2^127, 2^128): exact for q >= 0, for q < 0 the
/// quotient 2^b / 5^-q (b = 127 + the bit length of 5^-q) rounded down, plus one.
constexpr std::array<Power128, max_power_of_five - min_power_of_five + 1> powers_of_five = [] {
    std::array<Power128, max_power_of_five - min_power_of_five + 1> table{};
    for (int q = min_power_of_five; q <= max_power_of_five; ++q) {
        uint128 value = 0;
        if (q >= 0) {
            value = 1;
            for (int i = 0; i < q; ++i)
                value *= 5;
            while ((value >> 127) == 0)
                value <<= 1;
        } else {
            std::uint64_t divisor = 1;
            for (int i = 0; i < -q; ++i)
                divisor *= 5;
            int bits = 0; // smallest z with 2^z >= 5^-q
            while ((uint128(1) << bits) < divisor)
                ++bits;
            // 2^(bits + 127) / divisor by long division in base 2^64 (numerator of 3 words).
            const int top = bits + 127 - 128; // the high word is 2^top
            const std::uint64_t words[3] = {std::uint64_t(1) << top, 0, 0};
            uint128 remainder = 0;
            uint128 quotient = 0;
            for (const std::uint64_t word : words) {
                const uint128 current = (remainder << 64) | word;
                quotient = (quotient << 64) | (current / divisor);
                remainder = current % divisor;
            }
            value = quotient + 1;
        }
        table[static_cast<std::size_t>(q - min_power_of_five)] = {
            static_cast<std::uint64_t>(value >> 64), static_cast<std::uint64_t>(value)};
    }
    return table;
}();

/// w × 10^q rounded to the nearest double (ties to even) by the Eisel-Lemire method, for
/// w != 0 and q in [min_power_of_five, max_power_of_five]; false in the rare case the method
/// cannot decide, which the caller leaves to std::from_chars.
bool eisel_lemire(std::uint64_t w, int q, bool negative, double& value) {
    const Power128& power = powers_of_five[static_cast<std::size_t>(q - min_power_of_five)];
    const int leading_zeros = __builtin_clzll(w);
    w <<= leading_zeros;
    // The top 64 bits of w × 5^q; a second product refines them when the 9 bits below the
    // mantissa and its rounding bit are all ones (a carry from the low part could change them).
    uint128 product = uint128(w) * power.high;
    std::uint64_t high = static_cast<std::uint64_t>(product >> 64);
    std::uint64_t low = static_cast<std::uint64_t>(product);
    if ((high & 0x1FF) == 0x1FF) {
        const auto refinement = static_cast<std::uint64_t>((uint128(w) * power.low) >> 64);
        low += refinement;
        if (refinement > low) ++high;
    }
    const int upper_bit = static_cast<int>(high >> 63);
    std::uint64_t mantissa = high >> (upper_bit + 9);
    // Binary exponent: floor(q log2(10)) + 63 (217706 / 2^16 approximates log2(10) closely
    // enough), plus 1023 for the bias.
    int exponent = ((q * 217706) >> 16) + 63 + upper_bit - leading_zeros + 1023;
    if (exponent <= 0 || exponent >= 2046) return false; // subnormal or near overflow
    // Exactly halfway between two doubles: possible only when the product is exact (5^q fits
    // in 64 bits, q in [-4, 23]); then round to even instead of up.
    if (low <= 1 && q >= -4 && q <= 23 && (mantissa & 3) == 1 &&
        (mantissa << (upper_bit + 9)) == high) {
        mantissa &= ~std::uint64_t(1);
    }
    mantissa += mantissa & 1;
    mantissa >>= 1;
    if (mantissa >= (std::uint64_t(2) << 52)) { // rounding carried into a new bit
        mantissa = std::uint64_t(1) << 52;
        ++exponent;
    }
    mantissa &= ~(std::uint64_t(1) << 52);
    const std::uint64_t bits = mantissa | (static_cast<std::uint64_t>(exponent) << 52) |
                               (negative ? std::uint64_t(1) << 63 : 0);
    value = std::bit_cast<double>(bits);
    return true;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

/// 10^0 ... 10^8.
constexpr std::uint64_t integer_powers_of_ten[] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

/// The value of 8 decimal digits read as a little-endian word (the first digit in the lowest
/// byte): pairs, then quadruples, then the 8 digits, each step one multiplication.
std::uint64_t eight_digits_value(std::uint64_t chunk) {
    chunk -= 0x3030303030303030;
    chunk = (chunk * 10) + (chunk >> 8); // byte pairs: 10 × first + second
    chunk = (((chunk & 0x000000FF000000FF) * 0x000F424000000064) +
             (((chunk >> 16) & 0x000000FF000000FF) * 0x0000271000000001)) >>
            32;
    return chunk & 0xFFFFFFFF;
}

/// Appends the decimal digits at p to w and counts them in `digits` (w holds them all as
/// long as digits <= 19); returns the position after the last digit. Eight bytes at a time
/// while eight remain before `last`: the first byte that is not a digit is found by a bit
/// trick, and the digits before it are read as an 8-digit number with leading zeros.
[[gnu::always_inline]] inline const char*
read_digits(const char* p, const char* last, std::uint64_t& w, int& digits) {
    while (last - p >= 8) {
        std::uint64_t chunk;
        std::memcpy(&chunk, p, 8);
        // High bit of each byte that is not '0'-'9' (exact up to the first such byte, as no
        // carry or borrow crosses the digit bytes before it).
        const std::uint64_t others =
            ((chunk + 0x4646464646464646) | (chunk - 0x3030303030303030)) & 0x8080808080808080;
        const int n = others == 0 ? 8 : __builtin_ctzll(others) / 8;
        if (n > 0) {
            if (digits + n <= 19) {
                // Shift the n digits to the top and fill the bottom with '0's.
                const std::uint64_t shifted =
                    n == 8 ? chunk
                           : (chunk << (8 * (8 - n))) | (0x3030303030303030 >> (8 * n));
                w = w * integer_powers_of_ten[n] + eight_digits_value(shifted);
            }
            digits += n;
            p += n;
        }
        if (n < 8) return p;
    }
    while (p != last && is_digit(*p)) {
        if (digits < 19) w = w * 10 + static_cast<std::uint64_t>(*p - '0');
        ++digits;
        ++p;
    }
    return p;
}

/// std::from_chars for a double (general format), faster for decimals of up to 19 digits.
std::from_chars_result parse_number(const char* first, const char* last, double& value) {
    const char* p = first;
    const bool negative = p != last && *p == '-';
    if (negative) ++p;
    std::uint64_t w = 0;
    int digits = 0;
    const char* start = p;
    p = read_digits(p, last, w, digits);
    int exponent = 0;
    bool any_digit = p != start;
    if (p != last && *p == '.') {
        ++p;
        const char* fraction = p;
        p = read_digits(p, last, w, digits);
        exponent = -static_cast<int>(p - fraction);
        any_digit = any_digit || p != fraction;
    }
    if (!any_digit || digits > 19) return std::from_chars(first, last, value);
    if (p != last && (*p == 'e' || *p == 'E')) {
        const char* q = p + 1;
        const bool negative_exponent = q != last && *q == '-';
        if (q != last && (*q == '-' || *q == '+')) ++q;
        if (q != last && is_digit(*q)) {
            int e = 0;
            while (q != last && is_digit(*q)) {
                if (e > 100000) return std::from_chars(first, last, value);
                e = e * 10 + (*q - '0');
                ++q;
            }
            exponent += negative_exponent ? -e : e;
            p = q;
        } // else "1e" or "1e+": the number ends before the 'e', as for std::from_chars
    }
    if (w == 0) {
        value = negative ? -0.0 : 0.0;
        return {p, std::errc()};
    }
    if (exponent >= min_power_of_five && exponent <= max_power_of_five &&
        eisel_lemire(w, exponent, negative, value)) {
        return {p, std::errc()};
    }
    return std::from_chars(first, last, value);
}

// ---------------------------------------------------------------------------------------------
// Parsing cells

enum class CellKind {
    Number,
    Empty,      ///< empty cell (missing)
    NA,         ///< NA, N/A, #N/A, NULL (missing)
    NonFinite,  ///< inf, nan (missing)
    NotANumber, ///< anything else that is not a number
    OutOfRange  ///< a number too large (or too small) for a double
};

bool equals_ignoring_case(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
               return lower(x) == lower(y);
           });
}

bool is_na(std::string_view text) {
    for (std::string_view token : {"NA", "N/A", "#N/A", "NULL"}) {
        if (equals_ignoring_case(text, token)) return true;
    }
    return false;
}

/// Parses a trimmed cell: std::from_chars (exact, locale-independent), plus a leading '+'.
CellKind parse_cell(const Field& field, char delimiter, double& value) {
    std::string_view text = field.quoted ? trim(field.text, delimiter) : field.text;
    if (text.empty()) return CellKind::Empty;
    if (field.escaped) return CellKind::NotANumber;
    const char* first = text.data();
    const char* last = first + text.size();
    if (*first == '+') {
        ++first;
        if (first == last || *first == '+' || *first == '-') return CellKind::NotANumber;
    }
    const auto [ptr, ec] = parse_number(first, last, value);
    if (ec == std::errc() && ptr == last) {
        return std::isfinite(value) ? CellKind::Number : CellKind::NonFinite;
    }
    if (ec == std::errc::result_out_of_range && ptr == last) return CellKind::OutOfRange;
    return is_na(text) ? CellKind::NA : CellKind::NotANumber;
}

// ---------------------------------------------------------------------------------------------
// Column storage: values go into chunks that are freed one by one while the matrices are filled,
// so the peak memory is the data plus one chunk (no doubling reallocations, no second copy).

/// Memory mapped directly from the kernel, so that freeing it returns the pages at once (malloc
/// would keep freed blocks of this size in its heap and the peak would double).
class PageBlock {
  public:
    PageBlock() = default;
    explicit PageBlock(std::size_t bytes) : bytes_(bytes) {
        void* data =
            ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (data == MAP_FAILED) throw std::bad_alloc();
        data_ = data;
    }
    PageBlock(PageBlock&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), bytes_(other.bytes_) {}
    PageBlock& operator=(PageBlock&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(bytes_, other.bytes_);
        return *this;
    }
    PageBlock(const PageBlock&) = delete;
    PageBlock& operator=(const PageBlock&) = delete;
    ~PageBlock() { reset(); }

    void reset() noexcept {
        if (data_ != nullptr) ::munmap(data_, bytes_);
        data_ = nullptr;
    }

    void* data() const { return data_; }
    std::size_t size() const { return data_ != nullptr ? bytes_ : 0; }

  private:
    void* data_ = nullptr;
    std::size_t bytes_ = 0;
};

/// A column of values in chunks of 1 MiB. It grows by resize(); the new positions are then
/// written with write() (by several threads at once, each in its own rows), and drain_chunk()
/// finally hands each chunk to the matrices and frees it.
template <class T> class ChunkedColumn {
    static_assert(sizeof(T) == 8, "read_csv drains the columns and the line numbers alike");

  public:
    static constexpr std::size_t chunk_values = (std::size_t(1) << 20) / sizeof(T);

    /// Makes room for `size` values; the positions from the old size on are left to write().
    void resize(std::size_t size) {
        while (chunks_.size() * chunk_values < size)
            chunks_.emplace_back(chunk_values * sizeof(T));
        size_ = size;
    }

    std::size_t size() const { return size_; }

    /// Writes `count` values, taken `stride` apart from `values`, from position `at` on.
    void write(std::size_t at, const T* values, std::size_t count, std::size_t stride) {
        while (count > 0) {
            T* chunk = static_cast<T*>(chunks_[at / chunk_values].data());
            const std::size_t offset = at % chunk_values;
            const std::size_t n = std::min(count, chunk_values - offset);
            for (std::size_t i = 0; i < n; ++i)
                chunk[offset + i] = values[i * stride];
            at += n;
            values += n * stride;
            count -= n;
        }
    }

    T& operator[](std::size_t i) {
        return static_cast<T*>(chunks_[i / chunk_values].data())[i % chunk_values];
    }

    std::size_t chunk_count() const { return chunks_.size(); }

    /// Calls sink(data, count, offset) for chunk c (its values from position offset on) and
    /// frees it. Different chunks may be drained by different threads.
    template <class Sink> void drain_chunk(std::size_t c, Sink&& sink) {
        const std::size_t offset = c * chunk_values;
        sink(static_cast<const T*>(chunks_[c].data()), std::min(chunk_values, size_ - offset), offset);
        chunks_[c].reset();
    }

  private:
    std::vector<PageBlock> chunks_;
    std::size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Reading the input: large blocks of whole lines

/// The longest line accepted (line end excluded), 16 MiB: the limit of the io::LineReader this
/// reader replaced, kept so that the error and its message stay the same.
constexpr std::size_t max_line_bytes = std::size_t(1) << 24;

/// Bytes read at a time. The complete lines of a block are parsed in parallel, with a barrier
/// at the end of each block: on this project's shared 2-core machine, where a waiting thread
/// spins and competes for a core, 16 MiB blocks read 10^6 x 10 doubles with 2 threads in
/// 0.55 s against 1.0 s with 4 MiB blocks (load average 3.5; bench/csv_read_bench). The
/// reader holds two such buffers (the block being parsed and the next one being read); a line
/// of up to max_line_bytes always fits.
constexpr std::size_t block_bytes = std::size_t(16) << 20;

/// The bytes of a line as the reader's callers see them: without its line end (LF or CR LF)
/// and cut at the first NUL byte (io::LineReader handed out C strings, so the text of a line
/// stopped there, and messages quote that text). `end` points at the LF or the end of the input.
std::string_view line_text(const char* begin, const char* end) {
    if (end != begin && end[-1] == '\r') --end;
    const auto* nul =
        static_cast<const char*>(std::memchr(begin, '\0', static_cast<std::size_t>(end - begin)));
    return std::string_view(begin, static_cast<std::size_t>((nul != nullptr ? nul : end) - begin));
}

/// Reads a file or standard input in blocks of whole lines, with moekit errors: a file that
/// cannot be opened or read, a line longer than max_line_bytes. A UTF-8 byte-order mark at the
/// start of the input is skipped. The whole file is never held: a buffer keeps one block, and
/// while the lines of a block are parsed, prefetch() can read the next block into a second one.
class InputBlocks {
  public:
    InputBlocks(const std::string& path, std::string name)
        : name_(std::move(name)), buffer_(block_bytes) {
        if (path == "-") {
            file_ = stdin;
            return;
        }
        file_ = std::fopen(path.c_str(), "rb");
        if (file_ == nullptr) throw_system_error(name_, "cannot open file", errno);
        owned_ = true;
        // The reads below are large; stdio's own buffer would only add a copy.
        std::setvbuf(file_, nullptr, _IONBF, 0);
    }
    InputBlocks(const InputBlocks&) = delete;
    InputBlocks& operator=(const InputBlocks&) = delete;
    ~InputBlocks() {
        if (owned_) std::fclose(file_);
    }

    /// The next line (see line_text), or false at the end of the input.
    bool next_line(std::string_view& line) {
        for (;;) {
            const char* begin = data() + begin_;
            const auto* newline =
                static_cast<const char*>(std::memchr(begin, '\n', end_ - begin_));
            if (newline != nullptr || eof_) {
                if (begin_ == end_) return false;
                const char* end = newline != nullptr ? newline : data() + end_;
                ++lines_;
                if (static_cast<std::size_t>(end - begin) >= max_line_bytes) throw_too_long(lines_);
                line = line_text(begin, end);
                begin_ = newline != nullptr ? static_cast<std::size_t>(newline + 1 - data()) : end_;
                return true;
            }
            read_more();
        }
    }

    /// All complete lines in the buffer after reading as much input as fits (or taking the
    /// block prefetch() read): the text from the current position to just after the last LF,
    /// or to the end of the input (whose last line needs no line end). Empty at the end of the
    /// input. The text stays valid until the next call; the caller reports how many lines it
    /// held with add_lines(), and checks their lengths against max_line_bytes itself.
    std::string_view next_lines() {
        if (prefetched_) {
            prefetched_ = false;
            std::swap(buffer_, spare_);
            begin_ = 0;
            end_ = spare_end_;
            eof_ = spare_eof_;
            if (spare_failure_) std::rethrow_exception(std::exchange(spare_failure_, nullptr));
        } else if (!eof_) {
            read_more();
        }
        for (;;) {
            const char* begin = data() + begin_;
            const char* end = data() + end_;
            if (!eof_) {
                const auto* newline = static_cast<const char*>(::memrchr(begin, '\n', end_ - begin_));
                if (newline == nullptr) { // one partial line fills the buffer: grow it
                    read_more();
                    continue;
                }
                end = newline + 1;
            }
            begin_ = static_cast<std::size_t>(end - data());
            return std::string_view(begin, static_cast<std::size_t>(end - begin));
        }
    }

    /// Reads the next block into the second buffer: the partial line left after the text
    /// next_lines() returned, then as much input as fits. Meant to run on one thread while
    /// others parse that text (which it does not touch); the next call of next_lines() takes
    /// the block, and raises any error the reading met. Never throws.
    void prefetch() noexcept {
        if (eof_ || !started_) return; // nothing to read, or the byte-order mark still pending
        try {
            const std::size_t kept = end_ - begin_;
            if (spare_.size() < buffer_.size()) spare_ = PageBlock(buffer_.size());
            char* spare = static_cast<char*>(spare_.data());
            std::memcpy(spare, data() + begin_, kept);
            spare_end_ = kept;
            spare_eof_ = fill(spare, spare_end_, spare_.size());
        } catch (...) {
            spare_failure_ = std::current_exception();
        }
        prefetched_ = true;
    }

    /// Counts lines handed out by next_lines().
    void add_lines(long count) { lines_ += count; }

    /// Number of lines handed out so far (the 1-based number of the last one).
    long line_number() const { return lines_; }

    [[noreturn]] void throw_too_long(long line) const {
        throw_data_error(name_, line, {}, "line longer than the 16 MiB limit");
    }

  private:
    char* data() const { return static_cast<char*>(buffer_.data()); }

    /// Reads into buffer[end, capacity) until it is full or the input ends; returns whether
    /// the input ended.
    bool fill(char* buffer, std::size_t& end, std::size_t capacity) {
        while (end < capacity) {
            const std::size_t wanted = capacity - end;
            const std::size_t got = std::fread(buffer + end, 1, wanted, file_);
            end += got;
            if (got < wanted) {
                if (std::ferror(file_)) throw_system_error(name_, "cannot read file", errno);
                return true;
            }
        }
        return false;
    }

    /// Moves the unread text to the front of the buffer and fills the rest from the input. A
    /// buffer full of one partial line is doubled first, unless that line is already too long.
    void read_more() {
        const std::size_t kept = end_ - begin_;
        if (kept == buffer_.size()) {
            if (kept >= max_line_bytes) throw_too_long(lines_ + 1);
            PageBlock larger(std::min(buffer_.size() * 2, max_line_bytes));
            std::memcpy(larger.data(), data() + begin_, kept);
            buffer_ = std::move(larger);
        } else if (begin_ > 0) {
            std::memmove(data(), data() + begin_, kept);
        }
        begin_ = 0;
        end_ = kept;
        eof_ = fill(data(), end_, buffer_.size());
        if (!started_) {
            // Nothing has been handed out yet: skip a byte-order mark once it is known whether
            // the input starts with one (no line can end inside its 3 bytes).
            const std::size_t seen = std::min<std::size_t>(end_, 3);
            const bool prefix = std::memcmp(data(), "\xEF\xBB\xBF", seen) == 0;
            if (prefix && seen == 3) begin_ = 3;
            started_ = !prefix || seen == 3 || eof_;
        }
    }

    std::string name_;
    std::FILE* file_ = nullptr;
    bool owned_ = false;
    PageBlock buffer_;
    std::size_t begin_ = 0; ///< start of the text not handed out yet
    std::size_t end_ = 0;   ///< end of the text read
    bool eof_ = false;
    bool started_ = false;
    long lines_ = 0;
    // The block prefetch() read.
    PageBlock spare_;
    std::size_t spare_end_ = 0;
    bool spare_eof_ = false;
    bool prefetched_ = false;
    std::exception_ptr spare_failure_;
};

/// Reads lines until one that is not blank; false at the end of the input.
bool next_nonblank(InputBlocks& input, char delimiter, std::string_view& line) {
    for (;;) {
        if (!input.next_line(line)) return false;
        if (!is_blank_line(line, delimiter)) return true;
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing data rows

/// One distinct requested column.
struct Slot {
    std::string name;
    std::size_t field = 0; ///< index in the header
    bool is_weight = false;
};

/// What a data row is checked against: the header and the requested columns.
struct RowLayout {
    std::string file; ///< name for messages
    std::vector<std::string> header;
    char delimiter = ',';
    bool drop_missing = false;
    std::vector<Slot> slots;
    std::vector<std::size_t> order; ///< slots in file order, for a left-to-right scan of a row
    bool has_key = false;
    std::size_t key_field = 0;
    std::string key_name;
    /// Per header field: the slot read from it, key_field_role, or unread_field_role.
    std::vector<long> roles;
    /// Whether parse_row_fast may be tried: no number contains the delimiter.
    bool fast = false;
};

constexpr long unread_field_role = -1;
constexpr long key_field_role = -2;

/// Whether `delimiter` can never be part of a finite number that std::from_chars reads, so
/// that the first delimiter after a number is where its field ends.
bool delimiter_outside_numbers(char delimiter) {
    const bool digit = delimiter >= '0' && delimiter <= '9';
    const bool letter = (delimiter >= 'a' && delimiter <= 'z') || (delimiter >= 'A' && delimiter <= 'Z');
    return !digit && !letter && std::string_view("+-._").find(delimiter) == std::string_view::npos;
}

/// The exact parse of one data line that is not blank: every rule and message of docs/csv.md.
/// Writes the requested values to row[slot] and the key; returns false for a row dropped under
/// MissingPolicy::Drop. Throws DataError for the first problem: broken quotes from the left,
/// then a ragged row, then the key, then the requested cells from the left.
bool parse_row(const RowLayout& layout,
               std::string_view line,
               long line_number,
               double* row,
               std::uint64_t& key,
               std::vector<Field>& fields) {
    const std::string& name = layout.file;
    const char delimiter = layout.delimiter;
    const std::size_t n_fields = layout.header.size();
    const std::size_t count = split_line(line, delimiter, fields, n_fields);
    for (std::size_t f = 0; f < fields.size(); ++f) {
        if (fields[f].status == FieldStatus::Ok) continue;
        throw_field_error(
            name, line_number, f < n_fields ? printable(layout.header[f]) : std::string(), fields[f]);
    }
    if (count != n_fields) {
        throw_data_error(name,
                         line_number,
                         {},
                         concat({"ragged row: expected ",
                                 std::to_string(n_fields),
                                 " fields (as in the header), found ",
                                 std::to_string(count)}),
                         line);
    }
    bool missing = false;
    if (layout.has_key) {
        const Field& field = fields[layout.key_field];
        const std::string_view text = field.quoted ? trim(field.text, delimiter) : field.text;
        if (text.empty() || is_na(text)) {
            if (!layout.drop_missing)
                throw_data_error(name, line_number, printable(layout.key_name),
                                 text.empty() ? "empty cell" : "missing value (NA)", field.text);
            missing = true;
        } else if (field.escaped) {
            std::string unescaped; // "" inside quotes is one literal quote
            for (std::size_t c = 0; c < text.size(); ++c) {
                unescaped.push_back(text[c]);
                if (text[c] == '"' && c + 1 < text.size() && text[c + 1] == '"') ++c;
            }
            key = hash_key(unescaped);
        } else {
            key = hash_key(text);
        }
    }
    for (const std::size_t s : layout.order) {
        const Slot& slot = layout.slots[s];
        const Field& field = fields[slot.field];
        double value = 0.0;
        const CellKind kind = parse_cell(field, delimiter, value);
        if (kind == CellKind::Number) {
            if (slot.is_weight && !(value > 0.0)) {
                throw_data_error(
                    name, line_number, printable(slot.name), "weight must be > 0", field.text);
            }
            row[s] = value;
            continue;
        }
        const bool is_missing =
            kind == CellKind::Empty || kind == CellKind::NA || kind == CellKind::NonFinite;
        if (is_missing && layout.drop_missing) {
            missing = true;
            continue;
        }
        const char* problem = "not a number";
        switch (kind) {
        case CellKind::Empty:
            problem = "empty cell";
            break;
        case CellKind::NA:
            problem = "missing value (NA)";
            break;
        case CellKind::NonFinite:
            problem = "not a finite number";
            break;
        case CellKind::OutOfRange:
            problem = "number out of range for a double";
            break;
        case CellKind::Number:
        case CellKind::NotANumber:
            break;
        }
        throw_data_error(name, line_number, printable(slot.name), problem, field.text);
    }
    return !missing;
}

/// The common case of a line, without building the list of fields: exactly as many fields as
/// the header, no broken quotes, a key that is present, and requested cells that are finite
/// numbers (weights > 0). Writes row[slot] and the key and returns true only then; any other
/// line returns false and goes to parse_row, which drops it or reports its first problem. The
/// values are those of parse_row: std::from_chars stops at the end of the number, and the
/// delimiter cannot be part of a number (RowLayout::fast), so the text it reads is the field
/// with its blanks trimmed, as parse_row's.
bool parse_row_fast(const RowLayout& layout,
                    const char* p,
                    const char* end,
                    double* row,
                    std::uint64_t& key) {
    const char delimiter = layout.delimiter;
    const std::size_t n_fields = layout.roles.size();
    for (std::size_t f = 0; f < n_fields; ++f) {
        while (p != end && is_blank(*p, delimiter))
            ++p;
        const long role = layout.roles[f];
        if (p != end && *p == '"') {
            // A quoted field: split it the exact way.
            Field field;
            p = scan_field(p, end, delimiter, field);
            if (field.status != FieldStatus::Ok || role == key_field_role) return false;
            if (role >= 0) {
                const Slot& slot = layout.slots[static_cast<std::size_t>(role)];
                double value = 0.0;
                if (parse_cell(field, delimiter, value) != CellKind::Number) return false;
                if (slot.is_weight && !(value > 0.0)) return false;
                row[role] = value;
            }
        } else if (role >= 0) {
            const char* first = p;
            if (first != end && *first == '+') {
                ++first;
                if (first == end || *first == '+' || *first == '-') return false;
            }
            double value = 0.0;
            const auto [stop, ec] = parse_number(first, end, value);
            if (ec != std::errc() || !std::isfinite(value)) return false;
            if (layout.slots[static_cast<std::size_t>(role)].is_weight && !(value > 0.0)) {
                return false;
            }
            row[role] = value;
            p = stop;
            while (p != end && is_blank(*p, delimiter))
                ++p;
        } else {
            const char* text = p;
            const auto* stop = static_cast<const char*>(
                std::memchr(p, delimiter, static_cast<std::size_t>(end - p)));
            p = stop != nullptr ? stop : end;
            if (role == key_field_role) {
                const char* last = p;
                while (last != text && is_blank(last[-1], delimiter))
                    --last;
                const std::string_view cell(text, static_cast<std::size_t>(last - text));
                if (cell.empty() || is_na(cell)) return false;
                key = hash_key(cell);
            }
        }
        // p is now at the end of the field: the delimiter before the next one, or the line end.
        if (f + 1 < n_fields) {
            if (p == end || *p != delimiter) return false;
            ++p;
        } else if (p != end) {
            return false;
        }
    }
    return true;
}

enum class LineKind { Blank, Row, Dropped };

/// Parses one line: blank, a row (values in row[slot], the key in `key`) or a row dropped.
/// Throws DataError as parse_row.
LineKind parse_line(const RowLayout& layout,
                    std::string_view line,
                    long line_number,
                    double* row,
                    std::uint64_t& key,
                    std::vector<Field>& fields) {
    if ((line.empty() || is_blank(line.front(), layout.delimiter)) &&
        is_blank_line(line, layout.delimiter)) {
        return LineKind::Blank;
    }
    if (layout.fast && parse_row_fast(layout, line.data(), line.data() + line.size(), row, key)) {
        return LineKind::Row;
    }
    return parse_row(layout, line, line_number, row, key, fields) ? LineKind::Row
                                                                   : LineKind::Dropped;
}

/// A run of consecutive lines of a block, parsed by one thread into its own rows. Aligned to
/// a cache line: pieces side by side are written by different threads.
struct alignas(64) Piece {
    const char* begin = nullptr;
    const char* end = nullptr;
    std::size_t rows = 0;              ///< rows kept
    std::vector<double> values;        ///< rows × slots, row by row
    std::vector<std::uint64_t> keys;   ///< one per row kept (with a key column)
    std::vector<long> line_indices;    ///< per row kept: its line's index in the piece, from 0
    long lines = 0;                    ///< lines in the piece, blank ones included
    long rows_read = 0;                ///< lines that are not blank
    long rows_dropped = 0;
    long failed_line = -1;             ///< index of the first line that failed, or -1
    std::size_t first_row = 0;         ///< the dataset row of the piece's first row
    long first_line = 0;               ///< lines before the piece
    const char* failed_begin = nullptr; ///< that line, line end excluded
    const char* failed_end = nullptr;
    std::exception_ptr failure;        ///< what it threw (nothing for a line too long)
};

/// Parses the lines of a piece until the end or the first line that fails, which is noted in
/// the piece (the error is raised again, with its line number, by the caller: the line number
/// is known only once the lines of the pieces before are counted). Never throws.
void parse_piece(const RowLayout& layout, Piece& piece) noexcept {
    const std::size_t n_slots = layout.slots.size();
    piece.rows = 0;
    piece.keys.clear();
    piece.line_indices.clear();
    piece.lines = piece.rows_read = piece.rows_dropped = 0;
    piece.failed_line = -1;
    piece.failure = nullptr;
    const char* p = piece.begin;
    const char* line_end = p;
    std::vector<Field> fields;
    std::uint64_t key = 0;
    // Lines are cut at a NUL byte (line_text); finding the next one once per piece (usually
    // there is none) spares a search per line.
    auto next_nul = [&](const char* from) {
        const auto* nul = static_cast<const char*>(
            std::memchr(from, '\0', static_cast<std::size_t>(piece.end - from)));
        return nul != nullptr ? nul : piece.end;
    };
    const char* nul = next_nul(p);
    try {
        while (p < piece.end) {
            const auto* newline = static_cast<const char*>(
                std::memchr(p, '\n', static_cast<std::size_t>(piece.end - p)));
            line_end = newline != nullptr ? newline : piece.end;
            if (static_cast<std::size_t>(line_end - p) >= max_line_bytes) break;
            std::string_view line;
            if (nul < line_end) {
                line = line_text(p, line_end);
                nul = next_nul(line_end);
            } else {
                const char* stop = line_end != p && line_end[-1] == '\r' ? line_end - 1 : line_end;
                line = std::string_view(p, static_cast<std::size_t>(stop - p));
            }
            if ((piece.rows + 1) * n_slots > piece.values.size()) {
                piece.values.resize(std::max<std::size_t>(2 * piece.values.size(), 64 * n_slots));
            }
            const LineKind kind =
                parse_line(layout, line, 0, piece.values.data() + piece.rows * n_slots, key, fields);
            if (kind != LineKind::Blank) ++piece.rows_read;
            if (kind == LineKind::Dropped) ++piece.rows_dropped;
            if (kind == LineKind::Row) {
                ++piece.rows;
                piece.line_indices.push_back(piece.lines);
                if (layout.has_key) piece.keys.push_back(key);
            }
            ++piece.lines;
            p = line_end + 1;
        }
        if (p < piece.end) { // stopped at a line too long
            piece.failed_line = piece.lines;
            piece.failed_begin = p;
            piece.failed_end = line_end;
        }
    } catch (...) {
        piece.failed_line = piece.lines;
        piece.failed_begin = p;
        piece.failed_end = line_end;
        piece.failure = std::current_exception();
    }
}

/// Raises the error of a piece's failed line, now that its number is known: the line is parsed
/// again, on this thread, and throws exactly what it threw in the piece (parsing is
/// deterministic), this time with the line number in the message.
[[noreturn]] void throw_piece_failure(const RowLayout& layout,
                                      const InputBlocks& input,
                                      const Piece& piece,
                                      long line_number) {
    if (static_cast<std::size_t>(piece.failed_end - piece.failed_begin) >= max_line_bytes) {
        input.throw_too_long(line_number);
    }
    std::vector<double> row(layout.slots.size());
    std::vector<Field> fields;
    std::uint64_t key = 0;
    parse_line(layout, line_text(piece.failed_begin, piece.failed_end), line_number, row.data(), key, fields);
    std::rethrow_exception(piece.failure); // not reached unless the failure was not the line's
}

/// Splits the block [begin, end) of whole lines into pieces of about piece_bytes each, at line
/// starts; returns their number. The split depends only on the text, never on the number of
/// threads.
std::size_t split_block(const char* begin, const char* end, std::vector<Piece>& pieces) {
    constexpr std::size_t piece_bytes = std::size_t(1) << 20;
    std::size_t count = 0;
    const char* p = begin;
    while (p < end) {
        const char* stop = end;
        if (static_cast<std::size_t>(end - p) > piece_bytes) {
            const auto* newline = static_cast<const char*>(
                std::memchr(p + piece_bytes, '\n', static_cast<std::size_t>(end - p - piece_bytes)));
            if (newline != nullptr) stop = newline + 1;
        }
        if (count == pieces.size()) pieces.emplace_back();
        pieces[count].begin = p;
        pieces[count].end = stop;
        ++count;
        p = stop;
    }
    return count; // pieces past count are kept for their buffers
}

// ---------------------------------------------------------------------------------------------
// Resolving the requested columns against the header

void check_role(const std::vector<std::string>& names, const char* role) {
    for (std::size_t i = 0; i < names.size(); ++i) {
        for (std::size_t j = 0; j < i; ++j) {
            if (names[i] != names[j]) continue;
            std::string listed;
            for (const std::string& n : names) {
                listed += concat({listed.empty() ? "'" : ", '", n, "'"});
            }
            throw_invalid_argument("read_csv",
                                   concat({"spec.", role}),
                                   listed,
                                   "a column may be listed only once per role",
                                   concat({"Remove the second '", names[i], "'."}));
        }
    }
}

/// "no such column" with the available columns (trimmed if long) and hints.
std::string unknown_column_problem(const std::string& wanted,
                                   const std::vector<std::string>& header,
                                   char delimiter) {
    constexpr std::size_t max_listed = 12;
    std::string problem = "no such column in the header; the columns are: ";
    for (std::size_t i = 0; i < header.size() && i < max_listed; ++i) {
        problem += concat({i == 0 ? "'" : ", '", printable(header[i], 30), "'"});
    }
    if (header.size() > max_listed) {
        problem += concat({" ... and ", std::to_string(header.size() - max_listed), " more"});
    }
    for (const std::string& name : header) {
        if (equals_ignoring_case(name, wanted)) {
            problem += concat({" (did you mean '", printable(name, 30), "'?)"});
            break;
        }
    }
    if (header.size() == 1) {
        for (char other : {',', ';', '\t', '|'}) {
            if (other != delimiter && header[0].find(other) != std::string::npos) {
                const std::string shown = other == '\t' ? "TAB" : concat({"'", {&other, 1}, "'"});
                problem += concat({" (the header has one column: is the delimiter ", shown, "?)"});
                break;
            }
        }
    }
    return problem;
}

} // namespace

// -------------------------------------------------------------------------------------------------

std::vector<std::string> read_csv_header(const std::string& path, char delimiter) {
    const std::string name = display_name(path);
    InputBlocks input(path, name);
    std::string_view line;
    if (!next_nonblank(input, delimiter, line)) {
        throw_data_error(name, 0, {}, "empty file (no header line)");
    }
    return parse_header(line, delimiter, name, input.line_number());
}

Dataset read_csv(const std::string& path, const CsvSpec& spec, CsvReport* report) {
    if (spec.delimiter == '"' || spec.delimiter == '\n' || spec.delimiter == '\r' ||
        spec.delimiter == '\0') {
        throw_invalid_argument("read_csv",
                               "spec.delimiter",
                               concat({"'", printable(std::string_view(&spec.delimiter, 1)), "'"}),
                               "it cannot be a quote, a line end or NUL",
                               "Use ',', ';', '\\t' or another single character.");
    }
    if (spec.targets.empty() && spec.inputs.empty() && spec.gate_inputs.empty() &&
        spec.weights.empty() && spec.key.empty()) {
        throw_invalid_argument("read_csv",
                               "spec",
                               "empty (no targets, inputs, gate inputs or weights)",
                               "at least one column must be requested",
                               "Name the columns to read in CsvSpec.");
    }
    check_role(spec.targets, "targets");
    check_role(spec.inputs, "inputs");
    check_role(spec.gate_inputs, "gate_inputs");

    const std::string name = display_name(path);
    const char delimiter = spec.delimiter;
    // Held by pointer so that its buffer is freed before the matrices are filled.
    auto input = std::make_unique<InputBlocks>(path, name);

    // Header.
    std::string_view header_text;
    if (!next_nonblank(*input, delimiter, header_text)) {
        throw_data_error(name, 0, {}, "empty file (no header line)");
    }
    const long header_line = input->line_number();
    const std::vector<std::string> header = parse_header(header_text, delimiter, name, header_line);

    auto count_in_header = [&](const std::string& wanted) {
        return std::count(header.begin(), header.end(), wanted);
    };
    std::vector<std::string> targets = spec.targets;
    if (spec.targets_optional &&
        std::none_of(targets.begin(), targets.end(), [&](const std::string& t) {
            return count_in_header(t) > 0;
        })) {
        targets.clear();
    }

    // Distinct requested columns, each mapped to its header field.
    std::vector<Slot> slots;
    auto slot_of = [&](const std::string& wanted) -> std::size_t {
        for (std::size_t s = 0; s < slots.size(); ++s) {
            if (slots[s].name == wanted) return s;
        }
        const auto found = std::find(header.begin(), header.end(), wanted);
        if (found == header.end()) {
            throw_data_error(name,
                             header_line,
                             printable(wanted),
                             unknown_column_problem(wanted, header, delimiter));
        }
        const auto field = static_cast<std::size_t>(found - header.begin());
        const auto again = std::find(found + 1, header.end(), wanted);
        if (again != header.end()) {
            throw_data_error(name,
                             header_line,
                             printable(wanted),
                             concat({"duplicate column name in the header (fields ",
                                     std::to_string(field + 1),
                                     " and ",
                                     std::to_string(again - header.begin() + 1),
                                     ")"}));
        }
        slots.emplace_back();
        slots.back().name = wanted;
        slots.back().field = field;
        return slots.size() - 1;
    };
    auto resolve = [&](const std::vector<std::string>& names) {
        std::vector<std::size_t> result;
        result.reserve(names.size());
        for (const std::string& n : names)
            result.push_back(slot_of(n));
        return result;
    };
    const std::vector<std::size_t> target_slots = resolve(targets);
    const std::vector<std::size_t> input_slots = resolve(spec.inputs);
    const std::vector<std::size_t> gate_slots = resolve(spec.gate_inputs);
    std::size_t weight_slot = 0;
    if (!spec.weights.empty()) {
        weight_slot = slot_of(spec.weights);
        slots[weight_slot].is_weight = true;
    }
    // The key column is text: located in the header, hashed row by row, never parsed as a number.
    std::size_t key_field = 0;
    if (!spec.key.empty()) {
        const auto found = std::find(header.begin(), header.end(), spec.key);
        if (found == header.end())
            throw_data_error(name, header_line, printable(spec.key), unknown_column_problem(spec.key, header, delimiter));
        if (std::find(found + 1, header.end(), spec.key) != header.end())
            throw_data_error(name, header_line, printable(spec.key), "duplicate column name in the header");
        key_field = static_cast<std::size_t>(found - header.begin());
    }
    std::vector<std::uint64_t> keys;

    RowLayout layout;
    layout.file = name;
    layout.header = header;
    layout.delimiter = delimiter;
    layout.drop_missing = spec.missing == MissingPolicy::Drop;
    layout.slots = slots;
    // Header fields in file order that are read, for a left-to-right scan of each row.
    layout.order.resize(slots.size());
    for (std::size_t s = 0; s < slots.size(); ++s)
        layout.order[s] = s;
    std::sort(layout.order.begin(), layout.order.end(), [&](std::size_t a, std::size_t b) {
        return slots[a].field < slots[b].field;
    });
    layout.has_key = !spec.key.empty();
    layout.key_field = key_field;
    layout.key_name = spec.key;
    layout.roles.assign(header.size(), unread_field_role);
    for (std::size_t s = 0; s < slots.size(); ++s)
        layout.roles[slots[s].field] = static_cast<long>(s);
    layout.fast = delimiter_outside_numbers(delimiter);
    if (layout.has_key) {
        // A key column that is also read as numbers is left to the exact parse.
        if (layout.roles[key_field] != unread_field_role) layout.fast = false;
        layout.roles[key_field] = key_field_role;
    }

    // Data rows. The input comes in blocks of whole lines; each block is cut into pieces that
    // are parsed in parallel, each into rows of its own (while one thread reads the next
    // block), and the rows are then copied to their places in file order. A piece stops at its
    // first bad line; the first such line in file order is the one reported, as when reading
    // line by line. So the dataset and the error do not depend on the number of threads.
    const std::size_t n_slots = slots.size();
    std::vector<ChunkedColumn<double>> columns(n_slots);
    ChunkedColumn<long> line_numbers;
    std::vector<Piece> pieces;
    long rows_read = 0;
    long rows_dropped = 0;
    const int threads = detail::max_threads();
    for (;;) {
        const std::string_view block = input->next_lines();
        if (block.empty()) break;
        const auto n_pieces = static_cast<long>(
            split_block(block.data(), block.data() + block.size(), pieces));
        const int team = static_cast<int>(std::min<long>(threads, n_pieces + 1));
#pragma omp parallel num_threads(team) if (team > 1)
        {
#pragma omp single nowait
            input->prefetch();
#pragma omp for schedule(dynamic) nowait
            for (long k = 0; k < n_pieces; ++k)
                parse_piece(layout, pieces[static_cast<std::size_t>(k)]);
        }

        // Where the rows of each piece go; the first failure in file order is raised.
        std::size_t row = line_numbers.size();
        long line = input->line_number(); // lines before the piece
        for (long k = 0; k < n_pieces; ++k) {
            Piece& piece = pieces[static_cast<std::size_t>(k)];
            if (piece.failed_line >= 0) {
                throw_piece_failure(layout, *input, piece, line + piece.failed_line + 1);
            }
            piece.first_row = row;
            piece.first_line = line;
            row += piece.rows;
            line += piece.lines;
            rows_read += piece.rows_read;
            rows_dropped += piece.rows_dropped;
        }
        input->add_lines(line - input->line_number());
        for (ChunkedColumn<double>& column : columns)
            column.resize(row);
        line_numbers.resize(row);
        if (layout.has_key) keys.resize(row);
#pragma omp parallel for schedule(dynamic) num_threads(team) if (team > 1)
        for (long k = 0; k < n_pieces; ++k) {
            const Piece& piece = pieces[static_cast<std::size_t>(k)];
            for (std::size_t s = 0; s < n_slots; ++s)
                columns[s].write(piece.first_row, piece.values.data() + s, piece.rows, n_slots);
            for (std::size_t r = 0; r < piece.rows; ++r)
                line_numbers[piece.first_row + r] = piece.first_line + piece.line_indices[r] + 1;
            std::copy(piece.keys.begin(), piece.keys.end(), keys.begin() + static_cast<long>(piece.first_row));
        }
    }
    input.reset();
    pieces = std::vector<Piece>();
    if (rows_read == 0) throw_data_error(name, 0, {}, "no data rows (the file has only a header)");
    if (rows_dropped == rows_read) {
        throw_data_error(name,
                         0,
                         {},
                         concat({"no data rows left: all ",
                                 std::to_string(rows_read),
                                 " rows have missing values and were dropped"}));
    }
    if (report != nullptr) {
        report->rows_read = rows_read;
        report->rows_dropped = rows_dropped;
    }

    // Move the columns into the matrices, freeing the chunks as they are copied.
    const auto n = static_cast<Index>(line_numbers.size());
    Dataset data;
    data.y.resize(n, static_cast<Index>(target_slots.size()));
    data.x.resize(n, static_cast<Index>(spec.inputs.size()));
    data.z.resize(n, static_cast<Index>(gate_slots.size()));
    if (spec.weights.empty()) {
        data.weights = Vector::Ones(n);
    } else {
        data.weights.resize(n);
    }
    data.target_names = targets;
    data.input_names = spec.inputs;
    data.gate_input_names = spec.gate_inputs;
    data.keys = std::move(keys);
    data.key_name = spec.key;

    // Where each column goes (a column may serve several roles).
    std::vector<std::vector<double*>> destinations(n_slots);
    auto add = [&](const std::vector<std::size_t>& role, Matrix& m) {
        for (std::size_t j = 0; j < role.size(); ++j)
            destinations[role[j]].push_back(m.col(static_cast<Index>(j)).data());
    };
    add(target_slots, data.y);
    add(input_slots, data.x);
    add(gate_slots, data.z);
    if (!spec.weights.empty()) destinations[weight_slot].push_back(data.weights.data());
    data.line_numbers.resize(static_cast<std::size_t>(n));
    // One job per chunk of a column (the line numbers last), in parallel: memory-bound copies
    // that also fault in the new matrices' pages.
    const std::size_t chunks_per_column = line_numbers.chunk_count();
    const auto n_jobs = static_cast<long>((n_slots + 1) * chunks_per_column);
    const int team = static_cast<int>(std::min<long>(threads, n_jobs));
#pragma omp parallel for schedule(dynamic) num_threads(team) if (team > 1)
    for (long job = 0; job < n_jobs; ++job) {
        const auto s = static_cast<std::size_t>(job) / chunks_per_column;
        const auto c = static_cast<std::size_t>(job) % chunks_per_column;
        if (s == n_slots) {
            line_numbers.drain_chunk(c, [&](const long* values, std::size_t count, std::size_t offset) {
                std::copy(values, values + count, data.line_numbers.data() + offset);
            });
            continue;
        }
        columns[s].drain_chunk(c, [&](const double* values, std::size_t count, std::size_t offset) {
            for (double* destination : destinations[s])
                std::copy(values, values + count, destination + offset);
        });
    }
    return data;
}

// -------------------------------------------------------------------------------------------------
// Writing

std::string format_double(double value) {
    char buffer[64];
    const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
    (void)ec; // 64 characters always suffice for the shortest form of a double
    return std::string(buffer, end);
}

namespace {

/// Writes a file through a temporary in the same directory that is renamed over the target on
/// commit() and removed otherwise; "-" writes to standard output.
class AtomicWriter {
  public:
    explicit AtomicWriter(const std::string& path) : path_(path) {
        if (path == "-") return;
        static std::atomic<unsigned long> counter{0};
        temp_ = concat({path, ".tmp.", std::to_string(::getpid()), ".", std::to_string(counter++)});
        fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd_ < 0) {
            const int error = errno;
            temp_.clear();
            throw_system_error(path_, "cannot create a temporary file next to it", error);
        }
        // Keep the permissions of a file being replaced.
        struct stat existing {};
        if (::stat(path.c_str(), &existing) == 0 && S_ISREG(existing.st_mode)) {
            (void)::fchmod(fd_, existing.st_mode & 07777);
        }
    }
    AtomicWriter(const AtomicWriter&) = delete;
    AtomicWriter& operator=(const AtomicWriter&) = delete;

    ~AtomicWriter() { discard(); }

    void write(const char* data, std::size_t size) {
        if (path_ == "-") {
            if (std::fwrite(data, 1, size, stdout) != size) {
                throw_system_error(stdout_name, "cannot write", errno);
            }
            return;
        }
        while (size > 0) {
            const ssize_t written = ::write(fd_, data, size);
            if (written < 0) {
                if (errno == EINTR) continue;
                fail("cannot write file", errno);
            }
            data += written;
            size -= static_cast<std::size_t>(written);
        }
    }

    void write(std::string_view text) { write(text.data(), text.size()); }

    void commit() {
        if (path_ == "-") {
            if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
                throw_system_error(stdout_name, "cannot write", errno);
            }
            return;
        }
        if (::fsync(fd_) != 0) fail("cannot flush file", errno);
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0) fail("cannot close file", errno);
        if (std::rename(temp_.c_str(), path_.c_str()) != 0) fail("cannot replace file", errno);
        temp_.clear();
    }

  private:
    void discard() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
        if (!temp_.empty()) ::unlink(temp_.c_str());
        temp_.clear();
    }

    [[noreturn]] void fail(const char* what, int error) {
        discard();
        throw_system_error(path_, what, error);
    }

    std::string path_;
    std::string temp_;
    int fd_ = -1;
};

/// A header name as a CSV field, quoted when needed.
std::string csv_field(const std::string& name) {
    const bool needs_quotes = name.find_first_of(",\"\r\n") != std::string::npos ||
                              (!name.empty() && (name.front() == ' ' || name.front() == '\t' ||
                                                 name.back() == ' ' || name.back() == '\t'));
    if (!needs_quotes) return name;
    std::string out = "\"";
    for (char c : name) {
        out.push_back(c);
        if (c == '"') out.push_back('"');
    }
    out.push_back('"');
    return out;
}

} // namespace

void write_file_atomic(const std::string& path, const std::string& content) {
    AtomicWriter writer(path);
    writer.write(content);
    writer.commit();
}

void write_csv(const std::string& path,
               const std::vector<std::string>& header,
               const ConstMatrixRef& values) {
    if (header.size() != static_cast<std::size_t>(values.cols())) {
        throw_invalid_argument(
            "write_csv",
            "header.size()",
            std::to_string(header.size()),
            concat({"it must equal values.cols() = ", std::to_string(values.cols())}),
            "Give one name per column.");
    }
    AtomicWriter writer(path);
    std::string buffer;
    constexpr std::size_t flush_at = std::size_t(1) << 20;
    buffer.reserve(flush_at + 4096);
    for (std::size_t j = 0; j < header.size(); ++j) {
        if (j > 0) buffer.push_back(',');
        buffer += csv_field(header[j]);
    }
    buffer.push_back('\n');
    char number[64];
    for (Index i = 0; i < values.rows(); ++i) {
        for (Index j = 0; j < values.cols(); ++j) {
            if (j > 0) buffer.push_back(',');
            const auto [end, ec] = std::to_chars(number, number + sizeof number, values(i, j));
            (void)ec;
            buffer.append(number, end);
        }
        buffer.push_back('\n');
        if (buffer.size() >= flush_at) {
            writer.write(buffer);
            buffer.clear();
        }
    }
    writer.write(buffer);
    writer.commit();
}

} // namespace moekit
