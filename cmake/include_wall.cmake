# The include wall (DESIGN.md, "Layout and the direction of dependencies"), checked by a test:
#   cmake -DROOT=<tree> -P cmake/include_wall.cmake
# scans every .h/.cc/.cu/.cuh under ROOT's layer folders and fails, naming each file and include,
# when a file includes a project header its layer may not use. The one table of what each layer
# may include is here.
cmake_minimum_required(VERSION 3.22)
if(NOT ROOT)
  message(FATAL_ERROR "include_wall.cmake: pass -DROOT=<source tree>")
endif()

# Project folders each layer may include (its own included). runtime/config.h is the one file of
# runtime/ that cluster/ may use, and it may itself use base/ only.
set(_allow_base base)
set(_allow_kernels base kernels)
set(_allow_parallel base kernels parallel)
set(_allow_runtime base kernels parallel runtime)
set(_allow_rpc base kernels parallel runtime rpc)
set(_allow_cluster base cluster runtime/config.h)
set(_allow_bench base kernels parallel runtime rpc bench)
set(_allow_launch base kernels parallel runtime rpc cluster bench launch)
set(_layers base kernels parallel runtime rpc cluster bench launch)
set(_project_dirs base kernels parallel runtime rpc cluster bench launch tests proto)
# Third-party headers confined to some layers: the RPC stack (gRPC, protobuf and the generated
# code) stays at the edge; spdlog stays inside base/log.cc.
set(_rpc_stack_prefixes "grpcpp/" "grpc/" "google/protobuf/" "dsv4/v1/")
set(_rpc_stack_layers rpc bench launch)

set(_violations "")
foreach(_layer IN LISTS _layers)
  file(GLOB_RECURSE _files LIST_DIRECTORIES false
       "${ROOT}/${_layer}/*.h" "${ROOT}/${_layer}/*.cc" "${ROOT}/${_layer}/*.cu" "${ROOT}/${_layer}/*.cuh")
  foreach(_file IN LISTS _files)
    file(RELATIVE_PATH _rel "${ROOT}" "${_file}")
    set(_allowed ${_allow_${_layer}})
    if(_rel MATCHES "^runtime/config\\.(h|cc)$")
      set(_allowed base runtime/config.h)
    endif()
    file(STRINGS "${_file}" _lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
    foreach(_line IN LISTS _lines)
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"].*$" "\\1" _inc "${_line}")
      string(REGEX MATCH "^[^/]+" _top "${_inc}")
      if(_top IN_LIST _project_dirs)
        set(_ok FALSE)
        foreach(_a IN LISTS _allowed)
          if(_inc STREQUAL _a OR _top STREQUAL _a)
            set(_ok TRUE)
          endif()
        endforeach()
        if(NOT _ok)
          string(APPEND _violations "  ${_rel} includes ${_inc} (${_layer}/ may include: ${_allowed})\n")
        endif()
      endif()
      foreach(_p IN LISTS _rpc_stack_prefixes)
        string(FIND "${_inc}" "${_p}" _at)
        if(_at EQUAL 0 AND NOT _layer IN_LIST _rpc_stack_layers)
          string(APPEND _violations "  ${_rel} includes ${_inc} (the RPC stack belongs to: ${_rpc_stack_layers})\n")
        endif()
      endforeach()
      if(_inc MATCHES "^spdlog/" AND NOT _rel STREQUAL "base/log.cc")
        string(APPEND _violations "  ${_rel} includes ${_inc} (spdlog is used through base/log.h only)\n")
      endif()
    endforeach()
  endforeach()
endforeach()

if(_violations)
  message(FATAL_ERROR "include wall broken:\n${_violations}")
endif()
message(STATUS "include wall holds under ${ROOT}")
