// The presentation side of the tool: `moekit report` (one self-contained HTML file, rendered in
// headless Chromium to check the picture is not blank) and the progress display of long fits
// (apps/moekit/progress.cpp, compiled into this test with a fake clock).
// Truths: what a self-contained page must not contain (scripts, external URLs), the sections the
// issue asks for, the PNG format (signature, IHDR size) and the difference between a rendered
// report and a blank page; for the progress display, the documented lines and their timing.

#include "../apps/moekit/progress.cpp"

#include "moekit/model_io.hpp"
#include "support/cli_runner.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Progress display
// ---------------------------------------------------------------------------------------------

/// A clock the test moves by hand.
struct FakeClock {
    moekit::cli::ProgressDisplay::Clock::time_point now{};
    void advance(int milliseconds) { now += std::chrono::milliseconds(milliseconds); }
};

moekit::FitProgress progress(int restart, int iteration, double log_likelihood) {
    return moekit::FitProgress{restart, 3, iteration, log_likelihood};
}

} // namespace

TEST_CASE("progress: on a terminal, one redrawn line after the delay, erased at the end",
          "[progress]") {
    FakeClock clock;
    std::ostringstream out;
    {
        moekit::cli::ProgressDisplay display(
            moekit::cli::Verbosity::Normal, out, true, std::chrono::milliseconds(1000), [&clock] {
                return clock.now;
            });
        display.update(progress(0, 1, -10.0));
        clock.advance(999);
        display.update(progress(0, 2, -9.0));
        CHECK(out.str().empty()); // a fit shorter than the delay shows nothing
        clock.advance(1);
        display.update(progress(1, 7, -1130.2639601));
        CHECK(out.str() == "\rmoekit: restart 2/3, iteration 7, log-likelihood -1130.263960\x1b[K");
        CHECK(display.line_shown());
        clock.advance(50);
        display.update(progress(1, 8, -1130.0));
        CHECK(out.str().find("iteration 8") == std::string::npos); // at most 10 redraws a second
        clock.advance(50);
        display.update(progress(2, 9, -1129.5));
        CHECK(out.str().find(
                  "\rmoekit: restart 3/3, iteration 9, log-likelihood -1129.500000\x1b[K") !=
              std::string::npos);
        out.str("");
        display.clear();
        CHECK(out.str() == "\r\x1b[K");
        CHECK_FALSE(display.line_shown());
        out.str("");
        // start() resets the delay and sets the label.
        display.start("candidate 2/4 (K=2 full constant):");
        display.update(progress(0, 1, -5.0));
        CHECK(out.str().empty());
        clock.advance(1000);
        display.update(progress(0, 2, -4.0));
        CHECK(out.str() == "\rmoekit: candidate 2/4 (K=2 full constant): restart 1/3, iteration 2, "
                           "log-likelihood -4.000000\x1b[K");
        out.str("");
    }
    CHECK(out.str() == "\r\x1b[K"); // the destructor erases a line left on screen
}

TEST_CASE("progress: nothing when not a terminal or quiet, every iteration when verbose",
          "[progress]") {
    FakeClock clock;
    for (auto [verbosity, terminal] : {std::pair{moekit::cli::Verbosity::Normal, false},
                                       std::pair{moekit::cli::Verbosity::Quiet, true},
                                       std::pair{moekit::cli::Verbosity::Quiet, false}}) {
        std::ostringstream out;
        {
            moekit::cli::ProgressDisplay display(
                verbosity, out, terminal, std::chrono::milliseconds(0), [&clock] {
                    return clock.now;
                });
            for (int it = 1; it <= 5; ++it) {
                clock.advance(500);
                display.update(progress(0, it, -1.0));
            }
        }
        CHECK(out.str().empty());
    }
    for (bool terminal : {false, true}) {
        std::ostringstream out;
        moekit::cli::ProgressDisplay display(moekit::cli::Verbosity::Verbose, out, terminal);
        display.update(progress(0, 1, -2.5));
        display.update(progress(0, 2, -2.25));
        CHECK(out.str() == "moekit: restart 1/3, iteration 1, log-likelihood -2.500000\n"
                           "moekit: restart 1/3, iteration 2, log-likelihood -2.250000\n");
    }
    CHECK(moekit::cli::verbosity_of(true, true) == moekit::cli::Verbosity::Quiet);
    CHECK(moekit::cli::verbosity_of(false, true) == moekit::cli::Verbosity::Verbose);
    CHECK(moekit::cli::verbosity_of(false, false) == moekit::cli::Verbosity::Normal);
}

#ifdef MOEKIT_CLI

namespace {

const std::string data_dir = MOEKIT_DATA_DIR;

/// Fits `args` into model.json in `dir` and writes the report of it on `data` to `html`.
std::string fit_and_report(const moekit_test::TempDir& dir,
                           std::vector<std::string> fit_args,
                           const std::string& data,
                           const std::string& html) {
    fit_args.insert(fit_args.end(), {"-q", "-o", "model.json"});
    const auto fit = moekit_test::run_cli(dir, fit_args);
    INFO(fit.err);
    REQUIRE(fit.exit_code == 0);
    const auto report = moekit_test::run_cli(dir, {"report", "model.json", data, "-o", html});
    INFO(report.err);
    REQUIRE(report.exit_code == 0);
    CHECK(report.out.empty());
    return moekit_test::read_text(dir.file(html));
}

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1))
        ++n;
    return n;
}

/// What every report is: one HTML document, inline SVG and CSS, nothing fetched, nothing run.
void require_self_contained(const std::string& html) {
    CHECK(html.rfind("<!DOCTYPE html>\n<html lang=\"en\">", 0) == 0);
    CHECK(count(html, "<html") == 1);
    CHECK(count(html, "</html>") == 1);
    CHECK(count(html, "<style>") == 1);
    CHECK(count(html, "<svg") >= 4);
    CHECK(count(html, "<svg") == count(html, "</svg>"));
    for (const char* banned : {"<script",
                               "javascript:",
                               "http://",
                               "https://",
                               "src=",
                               "href=",
                               "@import",
                               "<link",
                               "<iframe",
                               "<img",
                               "nan",
                               "inf\""}) {
        INFO(banned);
        CHECK(html.find(banned) == std::string::npos);
    }
    // The only url(...) references are to gradients and clip paths in the page itself.
    for (auto pos = html.find("url("); pos != std::string::npos; pos = html.find("url(", pos + 1))
        CHECK(html.compare(pos, 5, "url(#") == 0);
    for (const char* section : {"Summary",
                                "Experts",
                                "Log-likelihood trace",
                                "Convergence",
                                "Expert sizes",
                                "Restarts",
                                "Responsibilities",
                                "Least certain samples"}) {
        INFO(section);
        CHECK(html.find(section) != std::string::npos);
    }
}

/// Width and height from a PNG's IHDR chunk; {0, 0} if the file is not a PNG.
std::pair<std::uint32_t, std::uint32_t> png_size(const std::string& bytes) {
    static const std::string signature("\x89PNG\r\n\x1a\n", 8);
    if (bytes.size() < 24 || bytes.compare(0, 8, signature) != 0 ||
        bytes.compare(12, 4, "IHDR") != 0)
        return {0, 0};
    auto be32 = [&](std::size_t at) {
        std::uint32_t v = 0;
        for (std::size_t i = 0; i < 4; ++i)
            v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
        return v;
    };
    return {be32(16), be32(20)};
}

/// Decodes the top of a PNG with Python's zlib (8-bit RGB/RGBA, no interlace) and prints
/// "<distinct colours> <share of pixels unlike the page background> <pixels of expert 1's
/// colour> <pixels of expert 2's colour>".
constexpr const char* png_probe = R"PY(
import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
pos, chunks = 8, []
width = height = 0
idat = b''
while pos < len(data):
    length, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    if kind == b'IHDR':
        width, height, depth, colour = struct.unpack('>IIBB', body[:10])
    elif kind == b'IDAT':
        idat += body
    pos += 12 + length
bpp = {2: 3, 6: 4}[colour]
raw = zlib.decompress(idat)
stride = width * bpp
rows = min(height, 900)
prev = bytearray(stride)
colours, unlike, expert1, expert2 = set(), 0, 0, 0
for y in range(rows):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    if f == 1:
        for i in range(bpp, stride): line[i] = (line[i] + line[i - bpp]) & 255
    elif f == 2:
        line = bytearray((a + b) & 255 for a, b in zip(line, prev))
    elif f == 3:
        for i in range(stride): line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
    elif f == 4:
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    prev = line
    for x in range(0, width, 2):
        px = tuple(line[x * bpp:x * bpp + 3])
        colours.add(px)
        if abs(px[0] - 243) + abs(px[1] - 245) + abs(px[2] - 248) > 12: unlike += 1
        if abs(px[0] - 0x3b) + abs(px[1] - 0x75) + abs(px[2] - 0xaf) <= 6: expert1 += 1
        if abs(px[0] - 0xef) + abs(px[1] - 0x86) + abs(px[2] - 0x36) <= 6: expert2 += 1
print(len(colours), unlike / (rows * ((width + 1) // 2)), expert1, expert2)
)PY";

} // namespace

TEST_CASE("cli: report of a softmax-gated mixture of regressions (NPreg)", "[report][cli]") {
    moekit_test::TempDir dir;
    const std::string npreg = data_dir + "/NPreg.csv";
    const std::string html = fit_and_report(dir,
                                            {"fit",
                                             npreg,
                                             "-y",
                                             "yn",
                                             "-x",
                                             "x,x2",
                                             "--gate-inputs",
                                             "x",
                                             "--expert",
                                             "linear",
                                             "--gate",
                                             "softmax",
                                             "-k",
                                             "2",
                                             "--restarts",
                                             "10",
                                             "--seed",
                                             "1"},
                                            npreg,
                                            "report.html");
    require_self_contained(html);
    CHECK(html.find("Data, experts and gate against x") != std::string::npos);
    CHECK(html.find("Softmax gate coefficients") != std::string::npos);
    CHECK(html.find("Data and expert ellipses") == std::string::npos);
    CHECK(html.find("<title>moekit report: model.json</title>") != std::string::npos);
    // The log-likelihood on the data, as fitted (the peer reference optimum).
    CHECK(html.find("&minus;642.063880") != std::string::npos);

    // Standard output by default, the same document.
    const auto to_stdout = moekit_test::run_cli(dir, {"report", "model.json", npreg});
    REQUIRE(to_stdout.exit_code == 0);
    CHECK(to_stdout.out == html);
}

TEST_CASE("cli: report of a two-target Gaussian mixture draws ellipses, one target draws densities",
          "[report][cli]") {
    moekit_test::TempDir dir;
    const std::string faithful = data_dir + "/faithful.csv";
    const std::string two = fit_and_report(
        dir,
        {"fit", faithful, "-y", "eruptions,waiting", "-k", "2", "--restarts", "3", "--seed", "1"},
        faithful,
        "two.html");
    require_self_contained(two);
    CHECK(two.find("Data and expert ellipses") != std::string::npos);
    CHECK(two.find("Data and densities") == std::string::npos);
    const std::string one = fit_and_report(
        dir,
        {"fit", faithful, "-y", "waiting", "-k", "2", "--restarts", "3", "--seed", "1"},
        faithful,
        "one.html");
    require_self_contained(one);
    CHECK(one.find("Data and densities of waiting") != std::string::npos);
    CHECK(one.find("Data and expert ellipses") == std::string::npos);
}

TEST_CASE("cli: report of a selection draws the criterion curve, a bare model file still reports",
          "[report][cli]") {
    moekit_test::TempDir dir;
    const std::string npreg = data_dir + "/NPreg.csv";
    const auto select = moekit_test::run_cli(dir,
                                             {"select",
                                              npreg,
                                              "-y",
                                              "yn",
                                              "-x",
                                              "x,x2",
                                              "--expert",
                                              "linear",
                                              "-k",
                                              "1:3",
                                              "--restarts",
                                              "4",
                                              "--seed",
                                              "2",
                                              "-q",
                                              "-o",
                                              "best.json"});
    REQUIRE(select.exit_code == 0);
    const auto report =
        moekit_test::run_cli(dir, {"report", "best.json", npreg, "-o", "select.html"});
    REQUIRE(report.exit_code == 0);
    const std::string html = moekit_test::read_text(dir.file("select.html"));
    require_self_contained(html);
    for (const char* part :
         {"Model selection", "Best candidates", "Selection table", "number of experts K"})
        CHECK(html.find(part) != std::string::npos);

    // Without its fit and diagnostics objects (a model written by the library alone): no trace,
    // no restarts, the rest is there.
    auto json = nlohmann::ordered_json::parse(moekit_test::read_text(dir.file("best.json")));
    json.erase("fit");
    json.erase("diagnostics");
    moekit_test::write_text(dir.file("bare.json"), json.dump(2));
    const auto bare = moekit_test::run_cli(
        dir, {"report", "bare.json", npreg, "-o", "bare.html", "--title", "A <bare> model"});
    REQUIRE(bare.exit_code == 0);
    const std::string bare_html = moekit_test::read_text(dir.file("bare.html"));
    CHECK(bare_html.find("<title>A &lt;bare&gt; model</title>") != std::string::npos);
    CHECK(bare_html.find("Log-likelihood trace") == std::string::npos);
    CHECK(bare_html.find("not recorded in the model file") != std::string::npos);
    CHECK(bare_html.find("Least certain samples") != std::string::npos);
}

TEST_CASE("cli: report refuses data without the model's columns and keeps an existing output",
          "[report][cli]") {
    moekit_test::TempDir dir;
    const std::string faithful = data_dir + "/faithful.csv";
    REQUIRE(moekit_test::run_cli(
                dir, {"fit", faithful, "-y", "eruptions,waiting", "-k", "2", "-q", "-o", "m.json"})
                .exit_code == 0);
    moekit_test::write_text(dir.file("out.html"), "keep");
    moekit_test::write_text(dir.file("x.csv"), "eruptions\n1\n2\n");
    const auto result = moekit_test::run_cli(dir, {"report", "m.json", "x.csv", "-o", "out.html"});
    CHECK(result.exit_code == 1);
    CHECK(result.err.find("waiting") != std::string::npos);
    CHECK(moekit_test::read_text(dir.file("out.html")) == "keep");
}

TEST_CASE("cli: the report renders in headless Chromium to a picture that is not blank",
          "[report][cli][chromium]") {
    const std::filesystem::path chromium = "/usr/bin/chromium";
    if (!std::filesystem::exists(chromium)) {
        WARN("skipped: /usr/bin/chromium is not installed (scripts/test.sh installs it)");
        return;
    }
    moekit_test::TempDir dir;
    const std::string npreg = data_dir + "/NPreg.csv";
    fit_and_report(dir,
                   {"fit",
                    npreg,
                    "-y",
                    "yn",
                    "-x",
                    "x,x2",
                    "--gate-inputs",
                    "x",
                    "--expert",
                    "linear",
                    "--gate",
                    "softmax",
                    "-k",
                    "2",
                    "--restarts",
                    "10",
                    "--seed",
                    "1"},
                   npreg,
                   "report.html");
    moekit_test::write_text(dir.file("blank.html"), "<!DOCTYPE html><html><body></body></html>\n");
    auto render = [&](const std::string& page, const std::string& png) {
        const std::string command = "timeout 120 " + chromium.string() +
                                    " --headless --no-sandbox --disable-gpu --disable-quic "
                                    "--no-first-run --disable-background-networking"
                                    " --disable-component-update --disable-sync --user-data-dir=" +
                                    moekit_test::shell_quote(dir.file("profile")) +
                                    " --screenshot=" + moekit_test::shell_quote(dir.file(png)) +
                                    " --window-size=1200,2400 " +
                                    moekit_test::shell_quote("file://" + dir.file(page)) +
                                    " >/dev/null 2>&1";
        return std::system(command.c_str());
    };
    REQUIRE(render("report.html", "report.png") == 0);
    REQUIRE(render("blank.html", "blank.png") == 0);
    const std::string report_png = moekit_test::read_text(dir.file("report.png"));
    const std::string blank_png = moekit_test::read_text(dir.file("blank.png"));
    CHECK(png_size(report_png) == std::pair<std::uint32_t, std::uint32_t>{1200, 2400});
    CHECK(png_size(blank_png) == std::pair<std::uint32_t, std::uint32_t>{1200, 2400});
    // A blank page compresses to almost nothing; text, plots and colours do not.
    CHECK(report_png.size() > 10 * blank_png.size());
    CHECK(report_png.size() > 100000);

    if (!std::filesystem::exists("/usr/bin/python3")) {
        WARN("/usr/bin/python3 not found: the PNG's pixels are not inspected (size checks only)");
        return;
    }
    moekit_test::write_text(dir.file("probe.py"), png_probe);
    const std::string out = dir.file("probe.txt");
    REQUIRE(std::system(("/usr/bin/python3 " + moekit_test::shell_quote(dir.file("probe.py")) +
                         " " + moekit_test::shell_quote(dir.file("report.png")) + " >" +
                         moekit_test::shell_quote(out))
                            .c_str()) == 0);
    std::istringstream probe(moekit_test::read_text(out));
    std::size_t colours = 0;
    double unlike = 0;
    std::size_t expert1 = 0;
    std::size_t expert2 = 0;
    probe >> colours >> unlike >> expert1 >> expert2;
    INFO("colours " << colours << ", non-background share " << unlike << ", expert pixels "
                    << expert1 << " / " << expert2);
    CHECK(colours > 100); // anti-aliased text and several plot colours
    CHECK(unlike > 0.3);  // the white panels and their content cover the page
    CHECK(expert1 >= 20); // the experts' colours (table swatches) are on screen
    CHECK(expert2 >= 20);
}

#endif
