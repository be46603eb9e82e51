/// @file main.cpp
/// The `moekit` command-line tool: parses the root app (make_app, app.cpp), whose subcommands
/// run from their callbacks, and is the one place where errors become exit codes:
///  - 0: success (also --help and --version);
///  - 1: bad input or usage: a command-line parse error (CLI11's message), or
///       moekit::InvalidArgument / moekit::DataError ("moekit: error: <message>");
///  - 2: numerical failure (moekit::NumericalError) or any other unexpected exception;
///  - 130: a fit stopped by SIGINT (Ctrl-C) or SIGTERM; the best model so far was saved.

#include "commands.hpp"
#include "interrupt.hpp"

#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>
#include <memory>

int main(int argc, char** argv) {
    const std::unique_ptr<CLI::App> root = moekit::cli::make_app();
    CLI::App& app = *root;

    // Subcommands run from their CLI11 callbacks inside parse(), so this one try block covers
    // both parsing and the work itself.
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e); // --help, --version
        app.exit(e); // prints CLI11's message and the --help hint
        return 1;
    } catch (const moekit::InvalidArgument& e) {
        std::cerr << "moekit: error: " << e.what() << '\n';
        return 1;
    } catch (const moekit::DataError& e) {
        std::cerr << "moekit: error: " << e.what() << '\n';
        return 1;
    } catch (const moekit::NumericalError& e) {
        std::cerr << "moekit: error: " << e.what() << '\n';
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "moekit: error: " << e.what() << '\n';
        return 2;
    }
    // A fit stopped by SIGINT / SIGTERM saved its best model so far and reported it.
    if (moekit::cli::interrupt_signal() != 0) return moekit::cli::interrupted_exit_code;
    return 0;
}
