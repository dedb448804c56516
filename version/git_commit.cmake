# cmake -P script run on every build by the plume_build_commit target:
# writes OUTPUT from TEMPLATE with the short commit of SOURCE_DIR ("-dirty"
# appended when tracked files differ from it), OVERRIDE when not a git
# checkout, else "unknown". configure_file leaves OUTPUT (and its time
# stamp) alone when the text is the same, so nothing then recompiles.
set(PLUME_COMMIT "")
find_package(Git QUIET)
if(GIT_FOUND)
  execute_process(COMMAND ${GIT_EXECUTABLE} -C ${SOURCE_DIR} rev-parse --short HEAD
    OUTPUT_VARIABLE _commit RESULT_VARIABLE _rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_rc EQUAL 0 AND NOT _commit STREQUAL "")
    set(PLUME_COMMIT "${_commit}")
    execute_process(COMMAND ${GIT_EXECUTABLE} -C ${SOURCE_DIR} diff --quiet HEAD --
      RESULT_VARIABLE _dirty OUTPUT_QUIET ERROR_QUIET)
    if(_dirty EQUAL 1)
      string(APPEND PLUME_COMMIT "-dirty")
    endif()
  endif()
endif()
if(PLUME_COMMIT STREQUAL "")
  if(NOT "${OVERRIDE}" STREQUAL "")
    set(PLUME_COMMIT "${OVERRIDE}")
  else()
    set(PLUME_COMMIT "unknown")
  endif()
endif()
configure_file(${TEMPLATE} ${OUTPUT} @ONLY)
