/// @file app.cpp
/// The root `moekit` app with its subcommands, configured but not parsed: main.cpp parses
/// it, and the option-parser fuzz target (tests/fuzz/fuzz_options.cpp) parses it with the
/// subcommand callbacks removed.

#include "commands.hpp"

namespace moekit::cli {

std::unique_ptr<CLI::App> make_app() {
    auto app = std::make_unique<CLI::App>(
        "moekit: classical statistical mixtures of experts (Gaussian and linear-regression "
        "experts, constant and softmax gates, EM)",
        "moekit");
    app->set_version_flag("--version", "moekit " MOEKIT_VERSION, "Print the version and exit");
    app->require_subcommand(1);
    app->footer("Run 'moekit <command> --help' for the options of a command.\n"
                "Example:\n"
                "  moekit fit data/faithful.csv -y eruptions,waiting -k 2 -o faithful.json");

    setup_fit(*app);
    setup_predict(*app);
    setup_score(*app);
    setup_simulate(*app);
    setup_select(*app);
    setup_report(*app);
    return app;
}

} // namespace moekit::cli
