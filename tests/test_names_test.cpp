// The test names themselves: catch_discover_tests registers one CTest test per Catch test case
// and hands its name back to Catch as a filter. A ';' splits the name as a CMake list, and a
// '[' starts a tag in a filter: either way CTest then runs a filter that matches nothing, and
// Catch's "No tests ran" counts as passed. Truth: the characters of every registered name.

#include <catch2/catch.hpp>

#include <string>

TEST_CASE("test names hold no semicolon or opening bracket, so each registers as its own ctest test", "[names]") {
    for (const Catch::TestCase& test : Catch::getRegistryHub().getTestCaseRegistry().getAllTests()) {
        const std::string& name = test.getTestCaseInfo().name;
        INFO("test case: " << name);
        CHECK(name.find(';') == std::string::npos);
        CHECK(name.find('[') == std::string::npos);
    }
}
