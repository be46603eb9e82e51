#include "moekit/errors.hpp"

#include <array>
#include <charconv>

namespace moekit {

void throw_invalid_argument(std::string_view function,
                            std::string_view argument,
                            std::string_view value,
                            std::string_view requirement,
                            std::string_view remedy) {
    std::string message;
    message.append(function).append(": ").append(argument).append(" is ").append(value);
    message.append(", but ").append(requirement).append(".");
    if (!remedy.empty()) message.append(" ").append(remedy);
    throw InvalidArgument(message);
}

void throw_data_error(std::string_view file,
                      long line,
                      std::string_view column,
                      std::string_view problem,
                      std::string_view text) {
    std::string message(file);
    if (line > 0) message.append(":").append(std::to_string(line));
    message.append(": ");
    if (!column.empty()) message.append("column '").append(column).append("': ");
    message.append(problem);
    if (!text.empty()) {
        // Keep the message one line and short: control characters become '?', long text is cut.
        std::string shown;
        for (char c : text.substr(0, 60)) shown.push_back((c >= 0 && c < 32) || c == 127 ? '?' : c);
        if (text.size() > 60) shown.append("...");
        message.append(" '").append(shown).append("'");
    }
    throw DataError(message);
}

std::string format_number(double value) {
    std::array<char, 64> buffer{};
    auto [end, ec] = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value);
    if (ec != std::errc()) return "?";
    return std::string(buffer.data(), end);
}

} // namespace moekit
