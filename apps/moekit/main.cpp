/// @file main.cpp
/// The `moekit` command-line tool: the root app, the subcommands, and the one place where
/// errors become exit codes:
///  - 0: success (also --help and --version);
///  - 1: bad input or usage: a command-line parse error (CLI11's message), or
///       moekit::InvalidArgument / moekit::DataError ("moekit: error: <message>");
///  - 2: numerical failure (moekit::NumericalError) or any other unexpected exception.

#include "commands.hpp"

#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
    CLI::App app{
        "moekit: classical statistical mixtures of experts (Gaussian and linear-regression "
        "experts, constant and softmax gates, EM)",
        "moekit"};
    app.set_version_flag("--version", "moekit " MOEKIT_VERSION, "Print the version and exit");
    app.require_subcommand(1);
    app.footer("Run 'moekit <command> --help' for the options of a command.\n"
               "Example:\n"
               "  moekit fit data/faithful.csv -y eruptions,waiting -k 2 -o faithful.json");

    moekit::cli::setup_fit(app);
    moekit::cli::setup_predict(app);
    moekit::cli::setup_score(app);
    moekit::cli::setup_simulate(app);

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
    return 0;
}
