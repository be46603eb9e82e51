# CTest test install_and_consume, run as `cmake -D... -P run_consumer_test.cmake`:
#   1. `cmake --install <MOEKIT_BINARY_DIR> --prefix <MOEKIT_WORK_DIR>/prefix`,
#   2. checks the installed tree (headers, library, package files, CLI) and that the exported
#      targets mention none of the private dependencies or build-tree paths,
#   3. configures tests/consumer against the prefix (CMAKE_PREFIX_PATH only, with Boost and
#      nlohmann_json made unfindable), builds it and runs it.
#
# Required: MOEKIT_BINARY_DIR, MOEKIT_SOURCE_DIR, MOEKIT_CONSUMER_SOURCE_DIR, MOEKIT_WORK_DIR,
#           MOEKIT_INCLUDEDIR, MOEKIT_BINDIR, MOEKIT_CMAKEDIR (install dirs, relative or absolute).
# Optional: MOEKIT_CONFIG (build configuration), MOEKIT_EXPECT_CLI (1 if the CLI is installed),
#           MOEKIT_GENERATOR, MOEKIT_MAKE_PROGRAM, MOEKIT_CXX_COMPILER, MOEKIT_CXX_FLAGS,
#           MOEKIT_CXX_FLAGS_CONFIG, MOEKIT_EXE_LINKER_FLAGS, MOEKIT_EIGEN3_DIR.
cmake_minimum_required(VERSION 3.25)

foreach(var MOEKIT_BINARY_DIR MOEKIT_SOURCE_DIR MOEKIT_CONSUMER_SOURCE_DIR MOEKIT_WORK_DIR
            MOEKIT_INCLUDEDIR MOEKIT_BINDIR MOEKIT_CMAKEDIR)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run_consumer_test.cmake: -D${var}=... is required")
    endif()
endforeach()

set(prefix "${MOEKIT_WORK_DIR}/prefix")
set(consumer_build "${MOEKIT_WORK_DIR}/consumer-build")
file(REMOVE_RECURSE "${MOEKIT_WORK_DIR}")
file(MAKE_DIRECTORY "${MOEKIT_WORK_DIR}")

set(config_args)
if(DEFINED MOEKIT_CONFIG AND NOT "${MOEKIT_CONFIG}" STREQUAL "")
    set(config_args --config "${MOEKIT_CONFIG}")
endif()

# Runs a command, echoing it; stops the test with `what` if it fails.
function(run what)
    execute_process(COMMAND ${ARGN} COMMAND_ECHO STDOUT RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "install_and_consume: ${what} failed (${rc})")
    endif()
endfunction()

function(installed_path out dir)
    if(IS_ABSOLUTE "${dir}")
        set(${out} "${dir}" PARENT_SCOPE)
    else()
        set(${out} "${prefix}/${dir}" PARENT_SCOPE)
    endif()
endfunction()

# 1. Install.
run("cmake --install" "${CMAKE_COMMAND}" --install "${MOEKIT_BINARY_DIR}" --prefix "${prefix}"
    ${config_args})

# 2. The installed tree.
installed_path(include_dir "${MOEKIT_INCLUDEDIR}")
installed_path(bin_dir "${MOEKIT_BINDIR}")
installed_path(cmake_dir "${MOEKIT_CMAKEDIR}")
set(expected "${include_dir}/moekit/moekit.hpp" "${include_dir}/moekit/types.hpp"
             "${cmake_dir}/moekitConfig.cmake" "${cmake_dir}/moekitConfigVersion.cmake"
             "${cmake_dir}/moekitTargets.cmake")
if(MOEKIT_EXPECT_CLI)
    list(APPEND expected "${bin_dir}/moekit")
endif()
foreach(file IN LISTS expected)
    if(NOT EXISTS "${file}")
        message(FATAL_ERROR "install_and_consume: not installed: ${file}")
    endif()
endforeach()
file(GLOB_RECURSE libraries "${prefix}/*libmoekit.a" "${prefix}/*libmoekit.so" "${prefix}/*moekit.lib")
if(NOT libraries)
    message(FATAL_ERROR "install_and_consume: no moekit library under ${prefix}")
endif()

file(GLOB target_files "${cmake_dir}/moekitTargets*.cmake")
foreach(file IN LISTS target_files)
    file(READ "${file}" text)
    foreach(forbidden "Boost" "nlohmann" "moekit_warnings" "${MOEKIT_SOURCE_DIR}/"
                      "${MOEKIT_BINARY_DIR}/")
        string(FIND "${text}" "${forbidden}" at)
        if(NOT at EQUAL -1)
            message(FATAL_ERROR "install_and_consume: ${file} mentions '${forbidden}'; the exported "
                                "interface must not need private dependencies or build paths")
        endif()
    endforeach()
endforeach()

# 3. Configure, build and run the consumer.
set(configure_args -S "${MOEKIT_CONSUMER_SOURCE_DIR}" -B "${consumer_build}"
    "-DCMAKE_PREFIX_PATH=${prefix}"
    -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON
    -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON
    --no-warn-unused-cli)
if(MOEKIT_GENERATOR)
    list(APPEND configure_args -G "${MOEKIT_GENERATOR}")
endif()
if(MOEKIT_MAKE_PROGRAM)
    list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MOEKIT_MAKE_PROGRAM}")
endif()
if(MOEKIT_CXX_COMPILER)
    list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${MOEKIT_CXX_COMPILER}")
endif()
# Same flags as the library (e.g. sanitizers must be linked into the consumer too).
list(APPEND configure_args "-DCMAKE_CXX_FLAGS=${MOEKIT_CXX_FLAGS}"
                           "-DCMAKE_EXE_LINKER_FLAGS=${MOEKIT_EXE_LINKER_FLAGS}")
if(DEFINED MOEKIT_CONFIG AND NOT "${MOEKIT_CONFIG}" STREQUAL "")
    string(TOUPPER "${MOEKIT_CONFIG}" config_upper)
    list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${MOEKIT_CONFIG}"
                               "-DCMAKE_CXX_FLAGS_${config_upper}=${MOEKIT_CXX_FLAGS_CONFIG}")
endif()
if(MOEKIT_EIGEN3_DIR)
    list(APPEND configure_args "-DEigen3_DIR=${MOEKIT_EIGEN3_DIR}")
endif()
run("configuring the consumer" "${CMAKE_COMMAND}" ${configure_args})

# The package must have been found in the prefix, not anywhere else.
file(STRINGS "${consumer_build}/CMakeCache.txt" found_dir REGEX "^moekit_DIR:")
string(REGEX REPLACE "^moekit_DIR:[A-Z]+=" "" found_dir "${found_dir}")
file(REAL_PATH "${found_dir}" found_dir)
file(REAL_PATH "${cmake_dir}" cmake_dir_real)
if(NOT found_dir STREQUAL cmake_dir_real)
    message(FATAL_ERROR "install_and_consume: the consumer found moekit in '${found_dir}', "
                        "expected '${cmake_dir_real}'")
endif()

run("building the consumer" "${CMAKE_COMMAND}" --build "${consumer_build}" ${config_args})

set(consumer "${consumer_build}/consumer")
if(NOT EXISTS "${consumer}" AND DEFINED MOEKIT_CONFIG)
    set(consumer "${consumer_build}/${MOEKIT_CONFIG}/consumer")
endif()
run("running the consumer" "${consumer}")

if(MOEKIT_EXPECT_CLI)
    run("running the installed CLI" "${bin_dir}/moekit" --help)
endif()
message(STATUS "install_and_consume: OK")
