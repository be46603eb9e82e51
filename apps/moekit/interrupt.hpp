#pragma once
/// @file interrupt.hpp
/// Ctrl-C (SIGINT) and SIGTERM during `moekit fit`: the first signal only records itself; the
/// fit checks the record after every EM iteration (FitOptions::on_iteration), stops, saves the
/// best model so far (marked "converged": false) and the tool exits with code 130. A second
/// signal gets the default action and ends the process at once (outputs are written atomically,
/// so an existing output file is never left half-written).

namespace moekit::cli {

/// Exit code of a fit stopped by SIGINT or SIGTERM (128 + SIGINT, the shell's convention).
inline constexpr int interrupted_exit_code = 130;

/// While alive, SIGINT and SIGTERM are recorded instead of ending the process; the previous
/// handlers are restored on destruction. The record itself survives (see interrupt_signal).
class InterruptGuard {
  public:
    InterruptGuard();
    ~InterruptGuard();
    InterruptGuard(const InterruptGuard&) = delete;
    InterruptGuard& operator=(const InterruptGuard&) = delete;
};

/// The first SIGINT or SIGTERM received while an InterruptGuard was alive, or 0.
int interrupt_signal();

/// "SIGINT", "SIGTERM" or "a signal".
const char* signal_name(int signal);

} // namespace moekit::cli
