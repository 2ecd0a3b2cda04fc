/* A quantized hpcq result (.h5) opened as a model: the config comes from the file's
 * model_config_json attribute, unquantized tensors from /tensors, and each quantized linear's
 * weight is its dequantized value scale * (q - zero) — bit for bit the weights GPTQ
 * compensated for. Used by `hpcq eval FILE.h5` through the ordinary model API (model.c
 * dispatches here when hq_model.h5 is set). Not collective. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "h5io.h"
#include "model.h"
#include "pack.h"

int hq_model_h5_open(const char *path, struct hq_model *m) {
  memset(m, 0, sizeof *m);
  struct hq_h5 *h = NULL;
  int rc = hq_h5_open_read(path, 0, &h);
  if (rc) return rc;
  char *cfg = NULL;
  rc = hq_h5_attr_get_str(h, "/", "model_config_json", &cfg);
  if (!rc) rc = hq_config_parse(cfg, strlen(cfg), path, &m->cfg);
  free(cfg);
  if (rc) {
    hq_h5_close(h);
    return hq_fail_ctx(rc, "%s: ", path);
  }
  m->dir = strdup(path);
  if (!m->dir) {
    hq_h5_close(h);
    return hq_fail(HQ_ERR_NOMEM, "out of memory");
  }
  m->h5 = h;
  return HQ_OK;
}

void hq_model_h5_close(struct hq_model *m) {
  hq_h5_close(m->h5);
  m->h5 = NULL;
}

/* "model.layers.3.mlp.down_proj.weight" -> "model.layers.3.mlp.down_proj" when it is a
 * quantized linear of the file (a linear that --rule skipped is an unquantized tensor). */
static int linear_prefix(struct hq_h5 *h, const char *name, char *out, size_t n) {
  size_t len = strlen(name);
  const char *suf = ".weight";
  if (len <= 7 || strcmp(name + len - 7, suf) || len - 7 >= n) return 0;
  if (!strstr(name, "_proj") && !strstr(name, ".experts.")) return 0; /* Mixtral: w1, w2, w3 */
  memcpy(out, name, len - 7);
  out[len - 7] = 0;
  char obj[300];
  snprintf(obj, sizeof obj, "/linears/%s", out);
  return hq_h5_attr_exists(h, obj, "bits") || !hq_h5_attr_exists(h, "/", "rules");
}

int hq_model_h5_shape(const struct hq_model *m, const char *name, int *ndim,
                      int64_t shape[HQ_ST_MAXDIM]) {
  char pre[256];
  *ndim = 0;
  if (linear_prefix(m->h5, name, pre, sizeof pre)) {
    struct hq_h5_linear_desc d;
    if (hq_h5_linear_info(m->h5, pre, &d) != HQ_OK) return 0;
    *ndim = 2;
    shape[0] = d.rows;
    shape[1] = d.cols;
    return 1;
  }
  enum hq_dtype dt;
  return hq_h5_tensor_info(m->h5, name, &dt, ndim, shape) == HQ_OK;
}

int hq_model_h5_load_f32(const struct hq_model *m, const char *name, float **out,
                         int64_t *numel) {
  struct hq_h5 *h = m->h5;
  char pre[256];
  *out = NULL;
  if (linear_prefix(h, name, pre, sizeof pre)) {
    struct hq_packed p;
    int rc = hq_h5_linear_read(h, pre, &p);
    if (rc) return hq_fail_ctx(rc, "%s: ", m->dir);
    float *w = malloc((size_t)p.out * (size_t)p.in * sizeof(float));
    if (!w) {
      hq_pack_free(&p);
      return hq_fail(HQ_ERR_NOMEM, "out of memory dequantizing %s", pre);
    }
    rc = hq_pack_dequantize(&p, w);
    if (numel) *numel = p.out * p.in;
    hq_pack_free(&p);
    if (rc) {
      free(w);
      return hq_fail_ctx(rc, "%s: %s: ", m->dir, pre);
    }
    *out = w;
    return HQ_OK;
  }
  /* lm_head tied to the embedding is not stored separately */
  if (!strcmp(name, "lm_head.weight") && m->cfg.tie_embeddings) name = "model.embed_tokens.weight";
  int64_t ne = 0;
  int rc = hq_h5_read_tensor_f32(h, name, out, &ne);
  if (rc) return hq_fail_ctx(rc, "%s: ", m->dir);
  if (numel) *numel = ne;
  return HQ_OK;
}
