/// @file interrupt.cpp
/// Recording SIGINT / SIGTERM with sigaction; the handler only stores the signal number and
/// re-arms the default action, both async-signal-safe.

#include "interrupt.hpp"

#include <csignal>

namespace moekit::cli {
namespace {

volatile std::sig_atomic_t received_signal = 0;

struct sigaction previous_int {};
struct sigaction previous_term {};

void record_signal(int signal) {
    if (received_signal == 0) received_signal = signal;
    // The next signal ends the process: a user who presses Ctrl-C twice means it.
    struct sigaction fallback {};
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(SIGINT, &fallback, nullptr);
    sigaction(SIGTERM, &fallback, nullptr);
}

} // namespace

InterruptGuard::InterruptGuard() {
    struct sigaction action {};
    action.sa_handler = record_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART; // reads and writes in progress continue
    sigaction(SIGINT, &action, &previous_int);
    sigaction(SIGTERM, &action, &previous_term);
}

InterruptGuard::~InterruptGuard() {
    sigaction(SIGINT, &previous_int, nullptr);
    sigaction(SIGTERM, &previous_term, nullptr);
}

int interrupt_signal() {
    return static_cast<int>(received_signal);
}

const char* signal_name(int signal) {
    switch (signal) {
    case SIGINT:
        return "SIGINT";
    case SIGTERM:
        return "SIGTERM";
    default:
        return "a signal";
    }
}

} // namespace moekit::cli
