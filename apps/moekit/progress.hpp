#pragma once
/// @file progress.hpp
/// Progress of long fits on standard error, fed by moekit::FitOptions::on_iteration.
///
///  - Normal: when standard error is a terminal and the fit has run for more than about a
///    second, one line "moekit: <label> restart r/R, iteration i, log-likelihood L" redrawn in
///    place at most ten times a second and erased when the fit ends; nothing otherwise (a short
///    fit, or standard error redirected to a file or a pipe).
///  - Verbose: one line per EM iteration, whatever standard error is.
///  - Quiet: nothing.

#include "moekit/fit.hpp"

#include <chrono>
#include <functional>
#include <iosfwd>
#include <string>

namespace moekit::cli {

/// How much a command tells on standard error besides warnings and errors.
enum class Verbosity { Quiet, Normal, Verbose };

/// The Verbosity of --quiet / --verbose (both: quiet wins).
Verbosity verbosity_of(bool quiet, bool verbose);

/// Whether standard error is a terminal (isatty).
bool stderr_is_terminal();

/// Draws the progress of fits (see the file comment). Not thread-safe; one per command.
class ProgressDisplay {
  public:
    using Clock = std::chrono::steady_clock;

    /// @param out where to draw (standard error in the tool)
    /// @param terminal whether `out` is a terminal (enables the redrawn line)
    /// @param delay how long a fit runs before the line appears
    /// @param now the clock (tests inject a fake one)
    ProgressDisplay(Verbosity verbosity,
                    std::ostream& out,
                    bool terminal,
                    std::chrono::milliseconds delay = std::chrono::milliseconds(1000),
                    std::function<Clock::time_point()> now = Clock::now);
    ~ProgressDisplay();
    ProgressDisplay(const ProgressDisplay&) = delete;
    ProgressDisplay& operator=(const ProgressDisplay&) = delete;

    /// Text put before "restart" (e.g. "K=3 full constant:"); empty by default. Restarts the
    /// delay clock, so each candidate of a selection gets its own second.
    void start(const std::string& label);

    /// Reports one EM iteration.
    void update(const moekit::FitProgress& progress);

    /// Erases the redrawn line, if one is shown (called before printing anything else).
    void clear();

    /// Whether a redrawn line is currently on the terminal.
    bool line_shown() const { return shown_width_ > 0; }

  private:
    std::string text(const moekit::FitProgress& progress) const;

    Verbosity verbosity_;
    std::ostream& out_;
    bool terminal_;
    std::chrono::milliseconds delay_;
    std::function<Clock::time_point()> now_;
    std::string label_;
    Clock::time_point started_;
    Clock::time_point last_draw_;
    bool drawn_once_ = false;
    std::size_t shown_width_ = 0;
};

} // namespace moekit::cli
