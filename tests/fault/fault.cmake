# Fault injection (included by tests/CMakeLists.txt; uses its
# eb_add_criterion_test, EB_TEST_TIMEOUT and EB_TEST_ENV).
#
#   fault_test_fault_alloc     allocation failure at every allocation an
#                              operation reaches, through the malloc shim
#                              (shim.c, linked into this test only)
#   fault_test_fault_sqlite    SQLite errors: a full file, a read-only file,
#                              a database locked by another process
#                              (fault_lock_holder, a separately exec'd program)
#   fault_test_fault_shutdown  a handler that never returns: other lanes go
#                              on, and eb_bus_shutdown's drain timeout
#
# The shim interposes malloc & co. in the test executable and forwards to
# the next definition (libc, or the ASan/TSan runtime), so it runs in every
# build; it is compiled without sanitizer instrumentation (it runs inside
# malloc and before the sanitizer runtime is ready). Each fault test appends
# its summary lines to fault_report.txt in the build's tests/ directory.
set(EB_FAULT_DIR ${CMAKE_CURRENT_SOURCE_DIR}/fault)
set(EB_FAULT_REPORT ${CMAKE_CURRENT_BINARY_DIR}/fault_report.txt)

function(eb_add_fault_test name)
  eb_add_criterion_test(fault_${name} ${EB_FAULT_DIR}/${name}.c ${EB_TEST_TIMEOUT})
  target_include_directories(fault_${name} PRIVATE ${EB_FAULT_DIR})
  set_tests_properties(fault_${name} PROPERTIES LABELS fault
    ENVIRONMENT "${EB_TEST_ENV};EB_FAULT_REPORT=${EB_FAULT_REPORT}")
endfunction()

eb_add_fault_test(test_fault_alloc)
target_sources(fault_test_fault_alloc PRIVATE ${EB_FAULT_DIR}/shim.c)
set_source_files_properties(${EB_FAULT_DIR}/shim.c PROPERTIES
  COMPILE_OPTIONS "-fno-sanitize=all")
target_link_libraries(fault_test_fault_alloc PRIVATE ${CMAKE_DL_LIBS})

eb_add_fault_test(test_fault_shutdown)

if(EB_WITH_SQLITE)
  add_executable(fault_lock_holder ${EB_FAULT_DIR}/lock_holder.c)
  set_target_properties(fault_lock_holder PROPERTIES
    C_STANDARD 11 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
  target_compile_definitions(fault_lock_holder PRIVATE _GNU_SOURCE)
  target_link_libraries(fault_lock_holder PRIVATE eventbus_internal PkgConfig::SQLITE)
  eb_add_fault_test(test_fault_sqlite)
  target_compile_definitions(fault_test_fault_sqlite PRIVATE
    EB_LOCK_HOLDER="$<TARGET_FILE:fault_lock_holder>")
  add_dependencies(fault_test_fault_sqlite fault_lock_holder)
endif()
