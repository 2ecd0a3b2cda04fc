/* CPU backend: quantization ops (grid parameters, the fused GPTQ inner block, RTN). */
#include "backend_cpu.h"
#include "error.h"

void hq_cpu_quant_params(struct hq_grid g, int64_t rows, int64_t ncols, const float *W,
                         int64_t ldw, float *scale, float *zero) {
  for (int64_t r = 0; r < rows; r++) hq_grid_params_ref(g, W + r * ldw, ncols, 1, scale + r, zero + r);
}

void hq_cpu_gptq_block(struct hq_grid g, int64_t rows, int64_t count, int64_t c0, int64_t c1,
                       float *W1, int64_t ldw, const float *Hinv1, int64_t ldh,
                       const float *scale, const float *zero, float *Err1, int64_t lde,
                       uint8_t *codes, int64_t ldc, double *loss_acc) {
  HQ_DIE("gptq_block: not implemented yet");
}

void hq_cpu_rtn_cols(struct hq_grid g, int64_t rows, int64_t ncols, float *W, int64_t ldw,
                     const float *scale, const float *zero, uint8_t *codes, int64_t ldc) {
  HQ_DIE("rtn_cols: not implemented yet");
}
