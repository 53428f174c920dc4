# libFuzzer targets (fuzz/README.md). A build dir of their own, configured with clang:
#   CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DFLEETD_FUZZ=ON \
#     -DFLEETD_BUILD_BENCHMARKS=OFF
# builds only the fuzz targets and the libraries they link, every one of our sources
# instrumented for coverage and checked by ASan + UBSan; ctest -L fuzz runs them briefly.
option(FLEETD_FUZZ "Build only the libFuzzer targets (clang) and what they link" OFF)

if(FLEETD_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "FLEETD_FUZZ needs clang (CC=clang CXX=clang++): libFuzzer")
  endif()
  if(FLEETD_SANITIZE)
    message(FATAL_ERROR "FLEETD_FUZZ brings its own sanitizers; drop FLEETD_SANITIZE")
  endif()
  # Asserts stay on (no NDEBUG); -O1 keeps the fuzzers fast and the stacks readable.
  set(CMAKE_C_FLAGS_RELWITHDEBINFO "-O1 -gline-tables-only")
  set(CMAKE_CXX_FLAGS_RELWITHDEBINFO "-O1 -gline-tables-only")
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined
    -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
endif()

# fleetd_fuzzer(NAME SRCS ... DEPS ... [RUNS n])
# A libFuzzer binary fuzz_<NAME> and a ctest `fuzz_<NAME>` (label fuzz) that replays
# fuzz/regressions/<NAME>/ and runs RUNS inputs (default 20000) from fuzz/corpus/<NAME>/
# with a fixed seed (fuzz/run-fuzzer.sh).
function(fleetd_fuzzer name)
  cmake_parse_arguments(ARG "" "RUNS" "SRCS;DEPS" ${ARGN})
  if(NOT FLEETD_FUZZ)
    return()
  endif()
  if(NOT ARG_RUNS)
    set(ARG_RUNS 20000)
  endif()
  add_executable(fuzz_${name} ${ARG_SRCS})
  target_compile_options(fuzz_${name} PRIVATE ${FLEETD_WARNINGS})
  target_link_libraries(fuzz_${name} PRIVATE ${ARG_DEPS})
  target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
  add_test(NAME fuzz_${name}
    COMMAND ${PROJECT_SOURCE_DIR}/fuzz/run-fuzzer.sh --fresh $<TARGET_FILE:fuzz_${name}> ${name}
      ${CMAKE_BINARY_DIR}/fuzz-work -runs=${ARG_RUNS} -seed=1 -max_total_time=120)
  set_tests_properties(fuzz_${name} PROPERTIES LABELS fuzz TIMEOUT 300)
endfunction()
