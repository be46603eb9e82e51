/// @file fuzz_options.cpp
/// Fuzz target of the command-line option parser: the real `moekit` app (make_app, with every
/// flag, validator and enum word of apps/moekit) parses an argv split from the input.
///
/// Input: the arguments after "moekit", separated by newlines or NUL bytes. The subcommands'
/// callbacks are removed before parsing, so nothing is read, fitted or written: this fuzzes
/// CLI11's parsing with moekit's option definitions. Each argument is also given to the
/// library's word parsers that the fit command applies to option values (tree shapes, init
/// methods, expert, gate and covariance kinds, fit methods, variants and balance losses).
///
/// Contract checked: parse() succeeds or throws CLI::ParseError (a usage error, exit 1, or
/// --help / --version); the word parsers succeed or throw moekit::InvalidArgument with a
/// one-line message; a parsed tree shape has 1..16 levels, every factor >= 2 and at most 4096
/// leaves. Anything else escaping is a finding.

#include "fuzz_check.hpp"

#include "commands.hpp"

#include "moekit/errors.hpp"
#include "moekit/fit.hpp"
#include "moekit/gates.hpp"

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace {

std::vector<std::string> split_arguments(const std::uint8_t* data, std::size_t size) {
    std::vector<std::string> args;
    std::string current;
    for (std::size_t i = 0; i < size; ++i) {
        const char c = static_cast<char>(data[i]);
        if (c == '\n' || c == '\0') {
            args.push_back(current);
            current.clear();
        } else {
            current.push_back(c);
        }
    }
    if (!current.empty()) args.push_back(current);
    return args;
}

template <class Parse> void try_word(const std::string& word, Parse parse) {
    try {
        parse(word);
    } catch (const moekit::InvalidArgument& e) {
        FUZZ_CHECK(std::string(e.what()).find('\n') == std::string::npos ||
                   word.find('\n') != std::string::npos);
    }
}

void parse_words(const std::string& word) {
    try_word(word, [](const std::string& w) {
        const std::vector<moekit::Index> shape = moekit::parse_tree_shape(w);
        FUZZ_CHECK(!shape.empty() && shape.size() <= 16);
        moekit::Index leaves = 1;
        for (moekit::Index b : shape) {
            FUZZ_CHECK(b >= 2);
            leaves *= b;
        }
        FUZZ_CHECK(leaves <= 4096);
        FUZZ_CHECK(moekit::tree_n_nodes(shape) < leaves);
    });
    try_word(word, [](const std::string& w) { (void)moekit::parse_init_method(w); });
    try_word(word, [](const std::string& w) { (void)moekit::parse_expert_kind(w); });
    try_word(word, [](const std::string& w) { (void)moekit::parse_gate_kind(w); });
    try_word(word, [](const std::string& w) { (void)moekit::parse_covariance_type(w); });
    try_word(word, [](const std::string& w) { (void)moekit::parse_fit_method(w); });
    try_word(word, [](const std::string& w) { (void)moekit::parse_variant(w); });
    try_word(word, [](const std::string& w) { (void)moekit::parse_balance_loss(w); });
}

/// The subcommands' callbacks own their options (a shared_ptr captured by the lambda) while the
/// options' flags point into them, so a callback cannot simply be cleared: it is moved out
/// (CLI::App's members are protected: a member pointer named through a derived class reaches
/// it) and kept alive until the app is gone.
struct CallbackAccess : CLI::App {
    static constexpr std::function<void()> CLI::App::*final_callback =
        &CallbackAccess::final_callback_;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > 4096) return 0; // command lines are short; keep the executions fast
    const std::vector<std::string> args = split_arguments(data, size);
    if (args.size() > 64) return 0;

    std::vector<std::function<void()>> kept; // destroyed after the app
    const std::unique_ptr<CLI::App> app = moekit::cli::make_app();
    for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) {
        kept.push_back(std::move(sub->*CallbackAccess::final_callback));
        sub->final_callback(nullptr); // parse only: never read, fit or write
    }
    std::vector<const char*> argv{"moekit"};
    for (const std::string& arg : args)
        argv.push_back(arg.c_str());
    try {
        app->parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError&) {
        // A usage error (exit 1) or --help / --version (exit 0): what main() reports.
    }
    for (const std::string& arg : args)
        parse_words(arg);
    return 0;
}
