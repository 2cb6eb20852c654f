# The include wall must catch a wrong arrow: a kernels/ file that includes the model (a layer
# above it). Builds that tree in the build folder and expects cmake/include_wall.cmake to fail
# naming the file and the include.
cmake_minimum_required(VERSION 3.22)
set(_tree "${WORK}/wall-fixture")
file(REMOVE_RECURSE "${_tree}")
file(WRITE "${_tree}/kernels/cpu/ok.cc" "#include \"kernels/cpu/kernels.h\"\n#include \"base/status.h\"\n")
file(WRITE "${_tree}/kernels/cpu/wrong.cc" "#include \"kernels/cpu/kernels.h\"\n#include \"runtime/model/model.h\"\n")
execute_process(COMMAND "${CMAKE_COMMAND}" -DROOT=${_tree} -P "${SOURCE_DIR}/cmake/include_wall.cmake"
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(_rc EQUAL 0)
  message(FATAL_ERROR "the include wall accepted kernels/cpu/wrong.cc including runtime/model/model.h")
endif()
if(NOT _err MATCHES "kernels/cpu/wrong\\.cc includes runtime/model/model\\.h")
  message(FATAL_ERROR "the include wall failed without naming the wrong include:\n${_err}")
endif()
if(_err MATCHES "ok\\.cc")
  message(FATAL_ERROR "the include wall named an allowed include:\n${_err}")
endif()
message(STATUS "the include wall caught kernels/cpu/wrong.cc")
