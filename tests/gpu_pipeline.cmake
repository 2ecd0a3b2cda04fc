# tests/gpu_pipeline.sh: the quantize pipeline on the GPU vs the CPU (label gpu; exits 77 =
# skipped without a CUDA build or a visible GPU). Shell tests are otherwise only discovered as
# test_*.sh (label script), hence this definition.
add_test(NAME gpu_pipeline COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/gpu_pipeline.sh)
set_tests_properties(gpu_pipeline PROPERTIES LABELS gpu ENVIRONMENT "${HQ_TEST_ENV}"
                     TIMEOUT 900 SKIP_RETURN_CODE 77)
