# Builds and runs one consumer project of dynconv; registered by tests/CMakeLists.txt.
#
#   cmake -DMODE=find_package|add_subdirectory|fetchcontent
#         -DDYNCONV_SOURCE_DIR=<dynconv source> -DDYNCONV_BINARY_DIR=<configured dynconv build>
#         -DWORK_DIR=<scratch dir> [-DBUILD_TYPE=Release] [-DGENERATOR=...] [-DMAKE_PROGRAM=...]
#         [-DCXX_COMPILER=...] [-DEIGEN3_DIR=...] [-DNLOHMANN_JSON_DIR=...]
#         -P run_consumer.cmake
#
# find_package:     cmake --install <dynconv build> --prefix <dynconv build>/consumer-prefix,
#                   then configure tests/consumers/find_package with CMAKE_PREFIX_PATH=<prefix>.
# add_subdirectory: configure tests/consumers/add_subdirectory with DYNCONV_SOURCE_DIR.
# fetchcontent:     the same project, taking dynconv with FetchContent from the local source.
# Then build it and run it. Any failing step stops with FATAL_ERROR and the step's output.
cmake_minimum_required(VERSION 3.25)

foreach(var MODE DYNCONV_SOURCE_DIR DYNCONV_BINARY_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: pass -D${var}=...")
  endif()
endforeach()
if(NOT MODE MATCHES "^(find_package|add_subdirectory|fetchcontent)$")
  message(FATAL_ERROR "run_consumer.cmake: MODE must be find_package, add_subdirectory or "
                      "fetchcontent, not '${MODE}'")
endif()

# run_step(<name> <command>...): run a command, stop with its output if it fails.
function(run_step name)
  message(STATUS "[${MODE}] ${name}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}] step '${name}' failed (${rc}):\n${out}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(build_dir "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(config_args)
if(BUILD_TYPE)
  set(config_args --config "${BUILD_TYPE}")
endif()

set(project_dir "${MODE}")
if(MODE STREQUAL "fetchcontent")
  set(project_dir add_subdirectory)
endif()
set(configure_args -S "${DYNCONV_SOURCE_DIR}/tests/consumers/${project_dir}" -B "${build_dir}"
                   -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(BUILD_TYPE)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
# Find the same Eigen and nlohmann_json that dynconv was configured with.
if(EIGEN3_DIR)
  list(APPEND configure_args "-DEigen3_DIR=${EIGEN3_DIR}")
endif()
if(NLOHMANN_JSON_DIR)
  list(APPEND configure_args "-Dnlohmann_json_DIR=${NLOHMANN_JSON_DIR}")
endif()

if(MODE STREQUAL "find_package")
  set(prefix "${DYNCONV_BINARY_DIR}/consumer-prefix")
  file(REMOVE_RECURSE "${prefix}")
  run_step(install "${CMAKE_COMMAND}" --install "${DYNCONV_BINARY_DIR}" --prefix "${prefix}"
           ${config_args})
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}" "-DDYNCONV_EXPECTED_PREFIX=${prefix}")
else()
  list(APPEND configure_args "-DDYNCONV_SOURCE_DIR=${DYNCONV_SOURCE_DIR}")
  if(MODE STREQUAL "fetchcontent")
    list(APPEND configure_args -DDYNCONV_USE_FETCHCONTENT=ON)
  endif()
endif()

run_step(configure "${CMAKE_COMMAND}" ${configure_args})
run_step(build "${CMAKE_COMMAND}" --build "${build_dir}" ${config_args})

# End to end proof that no flag leaked: the consumer's own compile lines carry no -march
# (unless the caller's CXXFLAGS asked for it).
if(EXISTS "${build_dir}/compile_commands.json" AND NOT "$ENV{CXXFLAGS}" MATCHES "-march")
  file(READ "${build_dir}/compile_commands.json" commands)
  if(commands MATCHES "-march=")
    message(FATAL_ERROR "[${MODE}] -march leaked into the consumer's compile lines:\n${commands}")
  endif()
endif()

set(exe "${build_dir}/bin/consumer")
if(EXISTS "${exe}.exe")
  set(exe "${exe}.exe")
endif()
run_step(run "${exe}")
message(STATUS "[${MODE}] consumer output: ${step_output}")
