/// @file progress.cpp
/// Progress lines on standard error.

#include "progress.hpp"

#include <unistd.h>

#include <cstdio>
#include <ostream>
#include <utility>

namespace moekit::cli {

namespace {

/// Redraw the terminal line at most this often.
constexpr std::chrono::milliseconds redraw_interval(100);

} // namespace

Verbosity verbosity_of(bool quiet, bool verbose) {
    if (quiet) return Verbosity::Quiet;
    return verbose ? Verbosity::Verbose : Verbosity::Normal;
}

bool stderr_is_terminal() {
    return isatty(STDERR_FILENO) == 1;
}

ProgressDisplay::ProgressDisplay(Verbosity verbosity,
                                 std::ostream& out,
                                 bool terminal,
                                 std::chrono::milliseconds delay,
                                 std::function<Clock::time_point()> now)
    : verbosity_(verbosity), out_(out), terminal_(terminal), delay_(delay), now_(std::move(now)) {
    started_ = now_();
    last_draw_ = started_;
}

ProgressDisplay::~ProgressDisplay() {
    clear();
}

void ProgressDisplay::start(const std::string& label) {
    clear();
    label_ = label;
    started_ = now_();
    last_draw_ = started_;
    drawn_once_ = false;
}

std::string ProgressDisplay::text(const moekit::FitProgress& progress) const {
    char numbers[160];
    std::snprintf(numbers,
                  sizeof numbers,
                  "restart %d/%d, iteration %d, log-likelihood %.6f",
                  progress.restart + 1,
                  progress.n_restarts,
                  progress.iteration,
                  progress.log_likelihood);
    return "moekit: " + (label_.empty() ? std::string() : label_ + " ") + numbers;
}

void ProgressDisplay::update(const moekit::FitProgress& progress) {
    if (verbosity_ == Verbosity::Quiet) return;
    if (verbosity_ == Verbosity::Verbose) {
        out_ << text(progress) << '\n' << std::flush;
        return;
    }
    if (!terminal_) return;
    const Clock::time_point t = now_();
    if (t - started_ < delay_) return;
    if (drawn_once_ && t - last_draw_ < redraw_interval) return;
    const std::string line = text(progress);
    // "\r" back to the start of the line, the text, then ESC[K erases what a longer previous
    // line left behind.
    out_ << '\r' << line << "\x1b[K" << std::flush;
    shown_width_ = line.size();
    drawn_once_ = true;
    last_draw_ = t;
}

void ProgressDisplay::clear() {
    if (shown_width_ == 0) return;
    out_ << "\r\x1b[K" << std::flush;
    shown_width_ = 0;
}

} // namespace moekit::cli
