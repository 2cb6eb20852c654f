# dsv4_add_test(NAME SOURCES... LIBS ... LABELS ... [SERIAL] [TIMEOUT s]): one gtest binary registered with ctest.
include(GoogleTest)
function(dsv4_add_test name)
  cmake_parse_arguments(T "SERIAL" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE GTest::gtest GTest::gtest_main ${T_LIBS})
  target_compile_definitions(${name} PRIVATE DSV4_SHARED_DIR="${DSV4_SHARED_DIR}")
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 600)
  endif()
  # SERIAL: a test that times two things against each other runs with nothing else on the cores.
  set(serial FALSE)
  if(T_SERIAL)
    set(serial TRUE)
  endif()
  gtest_discover_tests(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT} RUN_SERIAL ${serial}
    DISCOVERY_TIMEOUT 60)
endfunction()

# dsv4_add_mpi_test(NAME TARGET NP n [ARGS ...] [LABELS ...]): runs TARGET under
# `mpirun --oversubscribe -np n` (machines here have 2 cores). Root may run mpirun in CI.
function(dsv4_add_mpi_test name target)
  cmake_parse_arguments(T "" "NP;TIMEOUT" "ARGS;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 600)
  endif()
  add_test(NAME ${name} COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe -np ${T_NP} $<TARGET_FILE:${target}> ${T_ARGS})
  set_tests_properties(${name} PROPERTIES LABELS "mpi;${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
endfunction()
