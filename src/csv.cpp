#include "moekit/csv.hpp"
#include "moekit/gates.hpp"

#include "moekit/errors.hpp"

// io::LineReader reads synchronously: on this project's small shared machines the library's
// read-ahead thread costs more than it saves (1.5 s instead of 1.85 s wall for 1,000,000 x 10
// under load; bench/csv_read_bench), and no thread library is needed. The macro changes the
// layout of io::LineReader, so this must stay the only file that includes <libfccp/csv.h>.
#ifndef CSV_IO_NO_THREAD
#define CSV_IO_NO_THREAD
#endif
// The library's error types copy file names with strncpy, which GCC flags once inlined at -O3.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstringop-truncation"
#include <libfccp/csv.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
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

// ---------------------------------------------------------------------------------------------
// Reading lines

/// Byte source for io::LineReader that reports read errors (instead of treating them as the end
/// of the file, as the library's own FILE* source does). Owns the FILE* unless it is stdin.
class FileSource final : public io::ByteSourceBase {
  public:
    FileSource(std::FILE* file, bool owned, std::string name)
        : file_(file), owned_(owned), name_(std::move(name)) {}
    FileSource(const FileSource&) = delete;
    FileSource& operator=(const FileSource&) = delete;
    ~FileSource() override {
        if (owned_) std::fclose(file_);
    }

    int read(char* buffer, int size) override {
        const std::size_t got = std::fread(buffer, 1, static_cast<std::size_t>(size), file_);
        if (got < static_cast<std::size_t>(size) && std::ferror(file_)) {
            throw_system_error(name_, "cannot read file", errno);
        }
        return static_cast<int>(got);
    }

  private:
    std::FILE* file_;
    bool owned_;
    std::string name_;
};

/// A buffered line reader over a file or standard input, with moekit errors.
class Lines {
  public:
    Lines(const std::string& path, std::string name) : name_(std::move(name)) {
        std::unique_ptr<io::ByteSourceBase> source;
        if (path == "-") {
            source = std::make_unique<FileSource>(stdin, false, name_);
        } else {
            std::FILE* file = std::fopen(path.c_str(), "rb");
            if (file == nullptr) throw_system_error(name_, "cannot open file", errno);
            // LineReader does its own buffering.
            std::setvbuf(file, nullptr, _IONBF, 0);
            source = std::make_unique<FileSource>(file, true, name_);
        }
        reader_ = std::make_unique<io::LineReader>(name_, std::move(source));
    }

    /// The next line without its line end (CR LF or LF), or nullptr at the end of the input.
    std::string_view* next() {
        char* line = nullptr;
        try {
            line = reader_->next_line();
        } catch (const io::error::line_length_limit_exceeded&) {
            throw_data_error(name_, line_number(), {}, "line longer than the 16 MiB limit");
        }
        if (line == nullptr) return nullptr;
        current_ = std::string_view(line, std::strlen(line));
        return &current_;
    }

    /// 1-based number of the line last returned.
    long line_number() const { return static_cast<long>(reader_->get_file_line()); }

  private:
    std::string name_;
    std::unique_ptr<io::LineReader> reader_;
    std::string_view current_;
};

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

/// Reads lines until one that is not blank; nullptr at the end of the input.
std::string_view* next_nonblank(Lines& lines, char delimiter) {
    for (;;) {
        std::string_view* line = lines.next();
        if (line == nullptr || !is_blank_line(*line, delimiter)) return line;
    }
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
    const auto [ptr, ec] = std::from_chars(first, last, value);
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

  private:
    void* data_ = nullptr;
    std::size_t bytes_ = 0;
};

template <class T> class ChunkedColumn {
  public:
    void push_back(T value) {
        if (used_ == capacity_) grow();
        current_[used_++] = value;
        ++size_;
    }

    std::size_t size() const { return size_; }

    /// Calls sink(data, count, offset) for each chunk in order, freeing each one afterwards.
    template <class Sink> void drain(Sink&& sink) {
        std::size_t offset = 0;
        for (std::size_t c = 0; c < chunks_.size(); ++c) {
            const std::size_t count = c + 1 == chunks_.size() ? used_ : chunks_[c].capacity;
            sink(static_cast<const T*>(chunks_[c].block.data()), count, offset);
            offset += count;
            chunks_[c].block.reset();
        }
        chunks_.clear();
        current_ = nullptr;
        size_ = used_ = capacity_ = 0;
    }

  private:
    static constexpr std::size_t first_bytes = 4096;
    static constexpr std::size_t max_bytes = std::size_t(1) << 20;

    struct Chunk {
        PageBlock block;
        std::size_t capacity;
    };

    void grow() {
        const std::size_t bytes =
            chunks_.empty() ? first_bytes : std::min(capacity_ * sizeof(T) * 2, max_bytes);
        chunks_.push_back(Chunk{PageBlock(bytes), bytes / sizeof(T)});
        capacity_ = chunks_.back().capacity;
        current_ = static_cast<T*>(chunks_.back().block.data());
        used_ = 0;
    }

    std::vector<Chunk> chunks_;
    T* current_ = nullptr;
    std::size_t size_ = 0;
    std::size_t used_ = 0;
    std::size_t capacity_ = 0;
};

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

/// One distinct requested column.
struct Slot {
    std::string name;
    std::size_t field = 0; ///< index in the header
    bool is_weight = false;
    ChunkedColumn<double> values;
};

} // namespace

// -------------------------------------------------------------------------------------------------

std::vector<std::string> read_csv_header(const std::string& path, char delimiter) {
    const std::string name = display_name(path);
    Lines lines(path, name);
    std::string_view* line = next_nonblank(lines, delimiter);
    if (line == nullptr) throw_data_error(name, 0, {}, "empty file (no header line)");
    return parse_header(*line, delimiter, name, lines.line_number());
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
    // Held by pointer so that its 48 MiB buffer is freed before the matrices are filled.
    auto lines = std::make_unique<Lines>(path, name);

    // Header.
    std::string_view* line = next_nonblank(*lines, delimiter);
    if (line == nullptr) throw_data_error(name, 0, {}, "empty file (no header line)");
    const long header_line = lines->line_number();
    const std::vector<std::string> header = parse_header(*line, delimiter, name, header_line);

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

    // Header fields in file order that are read, for a left-to-right scan of each row.
    std::vector<std::size_t> order(slots.size());
    for (std::size_t s = 0; s < slots.size(); ++s)
        order[s] = s;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return slots[a].field < slots[b].field;
    });

    // Data rows.
    const std::size_t n_fields = header.size();
    std::vector<Field> fields;
    fields.reserve(n_fields + 1);
    std::vector<double> row(slots.size());
    ChunkedColumn<long> line_numbers;
    long rows_read = 0;
    long rows_dropped = 0;
    const bool drop_missing = spec.missing == MissingPolicy::Drop;
    while ((line = lines->next()) != nullptr) {
        if (is_blank_line(*line, delimiter)) continue;
        const long line_number = lines->line_number();
        ++rows_read;
        const std::size_t count = split_line(*line, delimiter, fields, n_fields);
        for (std::size_t f = 0; f < fields.size(); ++f) {
            if (fields[f].status == FieldStatus::Ok) continue;
            throw_field_error(
                name, line_number, f < n_fields ? printable(header[f]) : std::string(), fields[f]);
        }
        if (count != n_fields) {
            throw_data_error(name,
                             line_number,
                             {},
                             concat({"ragged row: expected ",
                                     std::to_string(n_fields),
                                     " fields (as in the header), found ",
                                     std::to_string(count)}),
                             *line);
        }
        bool missing = false;
        std::uint64_t key = 0;
        if (!spec.key.empty()) {
            const Field& field = fields[key_field];
            const std::string_view text = field.quoted ? trim(field.text, delimiter) : field.text;
            if (text.empty() || is_na(text)) {
                if (!drop_missing)
                    throw_data_error(name, line_number, printable(spec.key),
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
        for (const std::size_t s : order) {
            const Slot& slot = slots[s];
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
            if (is_missing && drop_missing) {
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
        if (missing) {
            ++rows_dropped;
            continue;
        }
        for (std::size_t s = 0; s < slots.size(); ++s)
            slots[s].values.push_back(row[s]);
        if (!spec.key.empty()) keys.push_back(key);
        line_numbers.push_back(line_number);
    }
    lines.reset();
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

    std::vector<double*> destinations;
    for (std::size_t s = 0; s < slots.size(); ++s) {
        destinations.clear();
        auto add = [&](const std::vector<std::size_t>& role, Matrix& m) {
            for (std::size_t j = 0; j < role.size(); ++j) {
                if (role[j] == s) destinations.push_back(m.col(static_cast<Index>(j)).data());
            }
        };
        add(target_slots, data.y);
        add(input_slots, data.x);
        add(gate_slots, data.z);
        if (!spec.weights.empty() && weight_slot == s) destinations.push_back(data.weights.data());
        slots[s].values.drain([&](const double* values, std::size_t count, std::size_t offset) {
            for (double* destination : destinations) {
                std::copy(values, values + count, destination + offset);
            }
        });
    }
    data.line_numbers.resize(static_cast<std::size_t>(n));
    line_numbers.drain([&](const long* values, std::size_t count, std::size_t offset) {
        std::copy(values, values + count, data.line_numbers.begin() + static_cast<long>(offset));
    });
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
