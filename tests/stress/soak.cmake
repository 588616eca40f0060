# soak: the long-running reliability program (tests/stress/soak.c, no
# Criterion). Included from tests/CMakeLists.txt, so EB_TEST_ENV,
# EB_TEST_TIMEOUT and EB_SANITIZER are those of the test suite.
#
# ctest runs a short version (soak_short, label "stress"); the long run is
# by hand, e.g. `build/tests/soak --duration 600` (docs/SOAK.md).
add_executable(soak ${CMAKE_CURRENT_LIST_DIR}/soak.c)
set_target_properties(soak PROPERTIES
  C_STANDARD 11 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
# eventbus_internal brings the sanitizer and warning flags (eb_flags).
target_link_libraries(soak PRIVATE eventbus_internal)

# ~15 s uninstrumented; ASan+UBSan is ~3x slower and TSan ~10x, so they
# publish for less time (they still go through warm-up, churn, retries and
# dead letters many times over) and get the scaled wait budget of
# EB_TEST_ENV (EB_TEST_WAIT_SCALE).
if(EB_SANITIZER STREQUAL "thread")
  set(EB_SOAK_SHORT_SECONDS 6)
elseif(EB_SANITIZER STREQUAL "address" OR EB_SANITIZER STREQUAL "undefined")
  set(EB_SOAK_SHORT_SECONDS 10)
else()
  set(EB_SOAK_SHORT_SECONDS 15)
endif()
add_test(NAME soak_short
  COMMAND soak --duration ${EB_SOAK_SHORT_SECONDS} --progress 5 --unsubscribe-from-handlers)
set_tests_properties(soak_short PROPERTIES TIMEOUT ${EB_TEST_TIMEOUT} LABELS stress)
if(EB_TEST_ENV)
  set_tests_properties(soak_short PROPERTIES ENVIRONMENT "${EB_TEST_ENV}")
endif()
