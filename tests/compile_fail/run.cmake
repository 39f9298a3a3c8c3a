# cmake -DCXX=<compiler> -DSOURCE=<file> -DINCLUDES=<dir;dir> -DEXPECT=<regex> -P run.cmake
#
# A compile-fail test: SOURCE must fail to compile with a message matching EXPECT, and compile
# with -DDYNCONV_CONTROL (so that it fails for that reason, not a typo or a missing header).
set(flags -std=c++17 -fsyntax-only)
foreach(dir IN LISTS INCLUDES)
  list(APPEND flags "-I${dir}")
endforeach()
execute_process(COMMAND "${CXX}" ${flags} -DDYNCONV_CONTROL "${SOURCE}" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the control build of ${SOURCE} must compile, but failed:\n${err}")
endif()
execute_process(COMMAND "${CXX}" ${flags} "${SOURCE}" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but must not")
endif()
if(NOT err MATCHES "${EXPECT}")
  message(FATAL_ERROR "${SOURCE} failed to compile, but not with a message matching '${EXPECT}':\n${err}")
endif()
message(STATUS "${SOURCE}: refused as expected")
