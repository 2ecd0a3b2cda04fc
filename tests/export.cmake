# Helper of tests/test_export.sh (not a test by itself): export_hpcq_view writes hpcq's own
# view of an .h5 result — every quantized linear dequantized through the model API that
# `hpcq eval` uses, plus the logits and NLL of a few token windows — to a safetensors file
# that tools/gptq_reference_loader.py compares with the exported GPTQ checkpoint.
add_executable(export_hpcq_view ${CMAKE_CURRENT_SOURCE_DIR}/export_hpcq_view.c)
target_link_libraries(export_hpcq_view PRIVATE hpcq_core)
