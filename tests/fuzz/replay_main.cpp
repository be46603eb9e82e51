/// @file replay_main.cpp
/// A plain main() for the fuzz targets, so that the test suite replays the seed corpus with any
/// compiler (g++, no libFuzzer): every file under the directories (or the files) given on the
/// command line is fed to LLVMFuzzerTestOneInput once, in sorted order. A finding aborts the
/// process (FUZZ_CHECK, a sanitizer, or an exception escaping the target), which fails the
/// test; the input being replayed is named on standard error first.

#include "fuzz_check.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    namespace fs = std::filesystem;
    std::vector<fs::path> inputs;
    for (int a = 1; a < argc; ++a) {
        const fs::path path(argv[a]);
        if (fs::is_directory(path)) {
            for (const auto& entry : fs::recursive_directory_iterator(path))
                if (entry.is_regular_file()) inputs.push_back(entry.path());
        } else if (fs::is_regular_file(path)) {
            inputs.push_back(path);
        } else {
            std::cerr << "replay: no such file or directory: " << path.string() << '\n';
            return 1;
        }
    }
    if (inputs.empty()) {
        std::cerr << "replay: no inputs (usage: replay DIR_OR_FILE...)\n";
        return 1;
    }
    std::sort(inputs.begin(), inputs.end());
    for (const fs::path& path : inputs) {
        std::ifstream in(path, std::ios::binary);
        const std::string bytes{std::istreambuf_iterator<char>(in),
                                std::istreambuf_iterator<char>()};
        std::cerr << "replay: " << path.string() << '\n';
        LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    }
    std::cout << "replayed " << inputs.size() << " inputs\n";
    return 0;
}
