# Helpers that give every target of ours the same warnings, sanitizers and test labels.
# Third-party and generated code is compiled without -Werror.

# Designated initializers that leave fields at their defaults are intended, so
# -Wmissing-field-initializers (part of -Wextra) is off.
set(FLEETD_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
if(FLEETD_WERROR)
  list(APPEND FLEETD_WARNINGS -Werror)
endif()

if(FLEETD_SANITIZE)
  set(_fleetd_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_compile_options(${_fleetd_san})
  add_link_options(${_fleetd_san})
endif()

# fleetd_library(NAME SRCS ... DEPS ... [PRIVATE_DEPS ...])
function(fleetd_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${FLEETD_WARNINGS})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
endfunction()

# fleetd_executable(NAME SRCS ... DEPS ...)
function(fleetd_executable name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${FLEETD_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
endfunction()

# fleetd_test(NAME SRCS ... DEPS ... [LABELS unit|integration|e2e] [TIMEOUT s])
# Registers a GoogleTest binary with ctest. Tests labelled `unit` also run in the
# sanitizer build.
function(fleetd_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(FLEETD_UNIT_ONLY AND NOT "unit" IN_LIST ARG_LABELS)
    return()
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${FLEETD_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  # The fuzz build (cmake/FleetdFuzz.cmake) neither builds nor registers tests.
  if(FLEETD_FUZZ)
    set_target_properties(${name} PROPERTIES EXCLUDE_FROM_ALL ON)
    return()
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
endfunction()

# fleetd_benchmark(NAME SRCS ... DEPS ...)
function(fleetd_benchmark name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  if(NOT FLEETD_BUILD_BENCHMARKS)
    return()
  endif()
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${FLEETD_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} benchmark::benchmark benchmark::benchmark_main)
endfunction()
