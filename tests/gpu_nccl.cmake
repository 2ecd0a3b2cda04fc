# tests/gpu_nccl.c at 2 ranks (the glob in tests/CMakeLists.txt runs gpu_* tests at 1 rank).
# Needs 2 GPUs; exits 77 (skipped) otherwise.
if(TARGET gpu_nccl)
  add_test(NAME gpu_nccl_np2
           COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 ${MPIEXEC_PREFLAGS}
                   $<TARGET_FILE:gpu_nccl> ${MPIEXEC_POSTFLAGS})
  set_tests_properties(gpu_nccl_np2 PROPERTIES LABELS gpu ENVIRONMENT "${HQ_TEST_ENV}"
                       TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()
