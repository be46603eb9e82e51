// Documentation that shows code must show the code that the test suite compiles.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>
#include <string>

namespace {
std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}
} // namespace

TEST_CASE("docs/library.md shows docs/examples/library_example.cpp unchanged", "[docs]") {
    const std::string root = MOEKIT_SOURCE_DIR;
    const std::string page = slurp(root + "/docs/library.md");
    const std::string example = slurp(root + "/docs/examples/library_example.cpp");
    CHECK(page.find("```cpp\n" + example + "```") != std::string::npos);
}
