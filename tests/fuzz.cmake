# libFuzzer target for the safetensors header parser (tests/fuzz_safetensors.c), run by the
# ctest `fuzz_safetensors` for a bounded time (HQ_FUZZ_SECONDS, default 20) on a seed corpus made
# from the bundled checkpoints' headers. Needs clang with libFuzzer and the sanitizer runtimes
# (Debian: clang libclang-rt-14-dev). Without them the test reports SKIPPED (exit 77).
# The target is compiled by clang directly (the project's compiler may be gcc) from the few
# sources it needs.
find_program(HQ_CLANG NAMES clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14)
if(HQ_CLANG AND NOT DEFINED HQ_HAVE_LIBFUZZER)
  set(_chk ${CMAKE_CURRENT_BINARY_DIR}/libfuzzer_check)
  file(WRITE ${_chk}.c "#include <stddef.h>\n#include <stdint.h>\n"
    "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
  execute_process(COMMAND ${HQ_CLANG} -fsanitize=fuzzer,address,undefined ${_chk}.c -o ${_chk}
                  RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
  if(_rc EQUAL 0)
    set(HQ_HAVE_LIBFUZZER ON CACHE INTERNAL "clang can build libFuzzer targets")
  else()
    set(HQ_HAVE_LIBFUZZER OFF CACHE INTERNAL "clang can build libFuzzer targets")
  endif()
endif()

if(HQ_CLANG AND HQ_HAVE_LIBFUZZER)
  message(STATUS "hpcq: fuzz_safetensors built with ${HQ_CLANG}")
  set(_fz ${CMAKE_CURRENT_BINARY_DIR}/fuzz_safetensors)
  set(_srcs ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_safetensors.c ${PROJECT_SOURCE_DIR}/src/io/safetensors.c
            ${PROJECT_SOURCE_DIR}/src/base/error.c ${PROJECT_SOURCE_DIR}/src/io/fileio.c)
  set(_incs)
  foreach(d ${HQ_INC})
    list(APPEND _incs -I${d})
  endforeach()
  foreach(d ${MPI_C_INCLUDE_DIRS} ${CJSON_INCLUDE_DIRS})
    list(APPEND _incs -I${d})
  endforeach()
  add_custom_command(OUTPUT ${_fz}
    COMMAND ${HQ_CLANG} -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined
            -fno-sanitize-recover=all ${_incs} ${_srcs} -o ${_fz}
            ${CJSON_LINK_LIBRARIES} ${MPI_C_LIBRARIES}
    DEPENDS ${_srcs} ${PROJECT_SOURCE_DIR}/src/model/model.h ${PROJECT_SOURCE_DIR}/src/base/error.h ${PROJECT_SOURCE_DIR}/src/io/fileio.h
            ${PROJECT_SOURCE_DIR}/src/quant/quant.h
    COMMENT "Building libFuzzer target fuzz_safetensors (clang, ASan+UBSan)"
    COMMAND_EXPAND_LISTS VERBATIM)
  add_custom_target(fuzz_safetensors_bin ALL DEPENDS ${_fz})
  add_test(NAME fuzz_safetensors
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_safetensors.sh ${_fz})
else()
  message(STATUS "hpcq: fuzz_safetensors SKIPPED (no clang with libFuzzer; Debian: clang libclang-rt-14-dev)")
  add_test(NAME fuzz_safetensors
           COMMAND sh -c "echo 'SKIPPED: clang with libFuzzer and sanitizers not found (Debian: apt-get install clang libclang-rt-14-dev), so the safetensors fuzzer was not built'; exit 77")
endif()
set_tests_properties(fuzz_safetensors PROPERTIES LABELS fuzz ENVIRONMENT "${HQ_TEST_ENV}"
                     TIMEOUT 180 SKIP_RETURN_CODE 77)
