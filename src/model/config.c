/* config.json of a Hugging Face Llama-family checkpoint -> struct hq_model_config.
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and the
 * mixtures of experts MixtralForCausalLM, Qwen3MoeForCausalLM, with SiLU MLPs (or experts),
 * RMSNorm and RoPE (default or "llama3" scaling). Anything else is refused with a message naming what is
 * supported, never guessed. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fileio.h"
#include "model.h"

#define SUPPORTED_ARCHS                                                                    \
  "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "              \
  "MixtralForCausalLM and Qwen3MoeForCausalLM"

static const cJSON *get(const cJSON *o, const char *key) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  return (j && !cJSON_IsNull(j)) ? j : NULL;
}

/* Integer field: *out untouched when absent and !required. */
static int get_int(const cJSON *o, const char *key, int required, int64_t *out, const char *what) {
  const cJSON *j = get(o, key);
  if (!j) {
    if (required)
      return hq_fail(HQ_ERR_INPUT, "%s: required field \"%s\" is missing; hpcq needs "
                     "hidden_size, intermediate_size, num_hidden_layers, num_attention_heads and "
                     "vocab_size", what, key);
    return HQ_OK;
  }
  double v = cJSON_IsNumber(j) ? j->valuedouble : NAN;
  if (!(v >= 1.0 && v <= 9007199254740992.0) || v != floor(v))
    return hq_fail(HQ_ERR_INPUT, "%s: \"%s\" must be a positive integer", what, key);
  *out = (int64_t)v;
  return HQ_OK;
}

static int get_num(const cJSON *o, const char *key, double *out, const char *what) {
  const cJSON *j = get(o, key);
  if (!j) return HQ_OK;
  if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
    return hq_fail(HQ_ERR_INPUT, "%s: \"%s\" must be a number", what, key);
  *out = j->valuedouble;
  return HQ_OK;
}

static int get_bool(const cJSON *o, const char *key, int *out, const char *what) {
  const cJSON *j = get(o, key);
  if (!j) return HQ_OK;
  if (!cJSON_IsBool(j))
    return hq_fail(HQ_ERR_INPUT, "%s: \"%s\" must be true or false", what, key);
  *out = cJSON_IsTrue(j) ? 1 : 0;
  return HQ_OK;
}

/* Python's json (and so transformers) keeps the last of duplicate keys, cJSON the first. */
static int no_dup_keys(const cJSON *o, const char *what) {
  for (const cJSON *a = o->child; a; a = a->next)
    for (const cJSON *b = a->next; b; b = b->next)
      if (a->string && b->string && strcmp(a->string, b->string) == 0)
        return hq_fail(HQ_ERR_INPUT, "%s: key \"%.60s\" appears twice; fix the config.json",
                       what, a->string);
  return HQ_OK;
}

static int parse_rope_scaling(const cJSON *rs, const char *what, struct hq_model_config *c) {
  c->rope_type = HQ_ROPE_DEFAULT;
  c->rope_factor = 1.0;
  c->rope_low_freq_factor = 1.0;
  c->rope_high_freq_factor = 1.0;
  c->rope_original_max_pos = 0;
  if (!rs) return HQ_OK;
  if (!cJSON_IsObject(rs))
    return hq_fail(HQ_ERR_INPUT, "%s: \"rope_scaling\" must be null or an object", what);
  HQ_TRY(no_dup_keys(rs, what));
  const cJSON *ty = get(rs, "rope_type");
  if (!ty) ty = get(rs, "type");
  if (!cJSON_IsString(ty))
    return hq_fail(HQ_ERR_INPUT, "%s: \"rope_scaling\" has no \"rope_type\" (or \"type\") string; "
                   "hpcq supports rope_scaling null, \"default\" or \"llama3\"", what);
  if (strcmp(ty->valuestring, "default") == 0) return HQ_OK;
  if (strcmp(ty->valuestring, "llama3") != 0)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: rope_scaling type \"%.40s\" is not supported; hpcq "
                   "supports rope_scaling null, \"default\" or \"llama3\"", what, ty->valuestring);
  c->rope_type = HQ_ROPE_LLAMA3;
  static const char *keys[] = {"factor", "low_freq_factor", "high_freq_factor",
                               "original_max_position_embeddings"};
  for (int i = 0; i < 4; i++)
    if (!get(rs, keys[i]))
      return hq_fail(HQ_ERR_INPUT, "%s: rope_scaling type \"llama3\" needs \"%s\"", what,
                     keys[i]);
  HQ_TRY(get_num(rs, "factor", &c->rope_factor, what));
  HQ_TRY(get_num(rs, "low_freq_factor", &c->rope_low_freq_factor, what));
  HQ_TRY(get_num(rs, "high_freq_factor", &c->rope_high_freq_factor, what));
  HQ_TRY(get_int(rs, "original_max_position_embeddings", 1, &c->rope_original_max_pos, what));
  if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) ||
      !(c->rope_high_freq_factor > c->rope_low_freq_factor))
    return hq_fail(HQ_ERR_INPUT, "%s: llama3 rope_scaling needs factor > 0 and "
                   "high_freq_factor > low_freq_factor > 0", what);
  return HQ_OK;
}

/* transformers >= 5 writes "rope_parameters" (rope_theta and the rope_scaling fields in one
 * object) instead of "rope_theta" and "rope_scaling". A top-level rope_theta or rope_scaling
 * beside it must agree with it (else which one the checkpoint's model uses is unclear). */
static int parse_rope_parameters(const cJSON *root, const cJSON *rp, const char *what,
                                 struct hq_model_config *c) {
  if (!cJSON_IsObject(rp))
    return hq_fail(HQ_ERR_INPUT, "%s: \"rope_parameters\" must be null or an object", what);
  const double top = c->rope_theta;
  const int has_top = get(root, "rope_theta") != NULL;
  HQ_TRY(get_num(rp, "rope_theta", &c->rope_theta, what));
  if (has_top && top != c->rope_theta)
    return hq_fail(HQ_ERR_INPUT, "%s: rope_theta %g and rope_parameters.rope_theta %g differ; "
                   "keep one of them", what, top, c->rope_theta);
  const cJSON *rs = get(root, "rope_scaling");
  if (rs && !cJSON_Compare(rs, rp, 1)) {
    HQ_TRY(parse_rope_scaling(rs, what, c));
    struct hq_model_config a = *c;
    HQ_TRY(parse_rope_scaling(rp, what, c));
    if (a.rope_type != c->rope_type || a.rope_factor != c->rope_factor ||
        a.rope_low_freq_factor != c->rope_low_freq_factor ||
        a.rope_high_freq_factor != c->rope_high_freq_factor ||
        a.rope_original_max_pos != c->rope_original_max_pos)
      return hq_fail(HQ_ERR_INPUT, "%s: rope_scaling and rope_parameters describe different "
                     "rotary embeddings; keep one of them", what);
    return HQ_OK;
  }
  return parse_rope_scaling(rp, what, c);
}

/* Qwen2 and Qwen3 switch sliding-window attention on with use_sliding_window (refused: hpcq has none);
 * Mistral uses "sliding_window" whenever it is not null. Only a window shorter than the
 * sequence changes the model, so a Mistral window is kept in c->sliding_window and checked
 * against the sequence length in use (hq_config_check_seqlen). */
static int parse_sliding_window(const cJSON *root, const char *what, struct hq_model_config *c) {
  int sliding = 0;
  HQ_TRY(get_bool(root, "use_sliding_window", &sliding, what));
  if (sliding)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: use_sliding_window true is not supported; hpcq "
                   "supports full causal attention", what);
  c->sliding_window = 0;
  if (c->arch == HQ_ARCH_MISTRAL || c->arch == HQ_ARCH_MIXTRAL)
    HQ_TRY(get_int(root, "sliding_window", 0, &c->sliding_window, what));
  return HQ_OK;
}

int hq_config_check_seqlen(const struct hq_model_config *c, int64_t seqlen, const char *opt) {
  if (c->sliding_window > 0 && seqlen > c->sliding_window)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s %lld is longer than the model's sliding_window %lld: "
                   "the model attends only to the last %lld tokens, and hpcq's attention is "
                   "full causal (no sliding window), so it would compute a different model; use "
                   "%s %lld or less", opt, (long long)seqlen, (long long)c->sliding_window,
                   (long long)c->sliding_window, opt, (long long)c->sliding_window);
  return HQ_OK;
}

/* "architectures"[0] into c->arch and c->arch_name: one of SUPPORTED_ARCHS. */
static int parse_arch(const cJSON *root, const char *what, struct hq_model_config *c) {
  const cJSON *archs = get(root, "architectures");
  const char *an = NULL;
  if (cJSON_IsArray(archs) && cJSON_IsString(archs->child)) an = archs->child->valuestring;
  if (!an)
    return hq_fail(HQ_ERR_INPUT, "%s: no \"architectures\" list; hpcq supports " SUPPORTED_ARCHS,
                   what);
  if (strcmp(an, "LlamaForCausalLM") == 0) c->arch = HQ_ARCH_LLAMA;
  else if (strcmp(an, "MistralForCausalLM") == 0) c->arch = HQ_ARCH_MISTRAL;
  else if (strcmp(an, "Qwen2ForCausalLM") == 0) c->arch = HQ_ARCH_QWEN2;
  else if (strcmp(an, "Qwen3ForCausalLM") == 0) c->arch = HQ_ARCH_QWEN3;
  else if (strcmp(an, "MixtralForCausalLM") == 0) c->arch = HQ_ARCH_MIXTRAL;
  else if (strcmp(an, "Qwen3MoeForCausalLM") == 0) c->arch = HQ_ARCH_QWEN3_MOE;
  else
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: architecture \"%.60s\" is not supported; hpcq "
                   "supports " SUPPORTED_ARCHS, what, an);
  snprintf(c->arch_name, sizeof c->arch_name, "%s", an);
  return HQ_OK;
}

/* The MLP must be the SiLU-gated one without bias. */
static int check_mlp(const cJSON *root, const char *what) {
  const cJSON *act = get(root, "hidden_act");
  if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: hidden_act \"%.40s\" is not supported; hpcq supports "
                   "the SiLU-gated MLP (hidden_act \"silu\") of " SUPPORTED_ARCHS, what,
                   cJSON_IsString(act) ? act->valuestring : "(not a string)");
  int mlp_bias = 0;
  HQ_TRY(get_bool(root, "mlp_bias", &mlp_bias, what));
  if (mlp_bias)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: mlp_bias true is not supported; hpcq supports MLPs "
                   "without bias", what);
  return HQ_OK;
}

/* Sizes: the required ones, then the optional ones with transformers' defaults per arch. */
static int parse_sizes(const cJSON *root, const char *what, struct hq_model_config *c) {
  HQ_TRY(get_int(root, "hidden_size", 1, &c->hidden, what));
  HQ_TRY(get_int(root, "intermediate_size", 1, &c->intermediate, what));
  HQ_TRY(get_int(root, "num_hidden_layers", 1, &c->n_layers, what));
  HQ_TRY(get_int(root, "num_attention_heads", 1, &c->n_heads, what));
  HQ_TRY(get_int(root, "vocab_size", 1, &c->vocab, what));
  c->n_kv_heads = c->n_heads;
  HQ_TRY(get_int(root, "num_key_value_heads", 0, &c->n_kv_heads, what));
  c->head_dim = c->arch == HQ_ARCH_QWEN3 ? 128 : 0; /* Qwen3Config's default is 128, not
                                                      hidden / heads */
  HQ_TRY(get_int(root, "head_dim", 0, &c->head_dim, what));
  c->max_pos = c->arch == HQ_ARCH_LLAMA ? 2048
             : c->arch == HQ_ARCH_MISTRAL || c->arch == HQ_ARCH_MIXTRAL ? 131072 : 32768;
  return get_int(root, "max_position_embeddings", 0, &c->max_pos, what);
}

/* RMSNorm eps, RoPE theta and scaling, tied embeddings, q/k/v bias (always on for Qwen2), the
 * per-head q/k RMSNorm (always on for Qwen3). */
static int parse_norm_rope(const cJSON *root, const char *what, struct hq_model_config *c) {
  double eps = c->arch == HQ_ARCH_MIXTRAL ? 1e-5 : 1e-6; /* transformers' defaults */
  HQ_TRY(get_num(root, "rms_norm_eps", &eps, what));
  if (!(eps > 0 && eps < 1))
    return hq_fail(HQ_ERR_INPUT, "%s: rms_norm_eps %g must be in (0, 1)", what, eps);
  c->rms_eps = (float)eps;
  c->rope_theta = c->arch == HQ_ARCH_MIXTRAL ? 1e6 : 10000.0;
  HQ_TRY(get_num(root, "rope_theta", &c->rope_theta, what));
  const cJSON *rp = get(root, "rope_parameters");
  if (rp) HQ_TRY(parse_rope_parameters(root, rp, what, c));
  if (!(c->rope_theta > 1.0))
    return hq_fail(HQ_ERR_INPUT, "%s: rope_theta %g must be > 1", what, c->rope_theta);
  c->tie_embeddings = 0;
  HQ_TRY(get_bool(root, "tie_word_embeddings", &c->tie_embeddings, what));
  int ab = 0;
  HQ_TRY(get_bool(root, "attention_bias", &ab, what));
  c->qkv_bias = ab || c->arch == HQ_ARCH_QWEN2;
  c->qk_norm = c->arch == HQ_ARCH_QWEN3 || c->arch == HQ_ARCH_QWEN3_MOE;
  return rp ? HQ_OK : parse_rope_scaling(get(root, "rope_scaling"), what, c);
}

/* Shapes must be consistent: head_dim (derived when absent), heads, vocab. */
static int check_shapes(const char *what, struct hq_model_config *c) {
  if (c->head_dim == 0) {
    if (c->hidden % c->n_heads != 0)
      return hq_fail(HQ_ERR_UNSUPPORTED, "%s: num_attention_heads %lld does not divide "
                     "hidden_size %lld and no head_dim is given; hpcq supports head_dim = "
                     "hidden_size / num_attention_heads or an explicit head_dim", what,
                     (long long)c->n_heads, (long long)c->hidden);
    c->head_dim = c->hidden / c->n_heads;
  }
  if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: num_key_value_heads %lld does not divide "
                   "num_attention_heads %lld; hpcq supports multi-head and grouped-query "
                   "attention (num_attention_heads a multiple of num_key_value_heads)", what,
                   (long long)c->n_kv_heads, (long long)c->n_heads);
  if (c->head_dim % 2 != 0)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: head_dim %lld is odd; rotary embeddings need an even "
                   "head_dim", what, (long long)c->head_dim);
  if (c->vocab > INT32_MAX)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: vocab_size %lld does not fit int32 token ids", what,
                   (long long)c->vocab);
  return HQ_OK;
}

/* Qwen3-MoE: block b is sparse unless listed in mlp_only_layers, when (b + 1) is a multiple of
 * decoder_sparse_step (transformers' Qwen3MoeDecoderLayer). */
static int parse_sparse_layers(const cJSON *root, const char *what, struct hq_model_config *c) {
  int64_t step = 1;
  HQ_TRY(get_int(root, "decoder_sparse_step", 0, &step, what));
  for (int64_t b = 0; b < c->n_layers; b++) c->moe_layer[b] = (b + 1) % step == 0;
  const cJSON *only = get(root, "mlp_only_layers");
  if (!only) return HQ_OK;
  if (!cJSON_IsArray(only))
    return hq_fail(HQ_ERR_INPUT, "%s: \"mlp_only_layers\" must be a list of layer indices", what);
  for (const cJSON *e = only->child; e; e = e->next) {
    const double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
    if (!(v >= 0 && v < (double)c->n_layers) || v != floor(v))
      return hq_fail(HQ_ERR_INPUT, "%s: mlp_only_layers holds %s; each entry must be a layer "
                     "index in [0, %lld)", what, cJSON_IsNumber(e) ? "an index out of range"
                     : "a non-number", (long long)c->n_layers);
    c->moe_layer[(int64_t)v] = 0;
  }
  return HQ_OK;
}

/* The experts of Mixtral (num_local_experts of intermediate_size, renormalised top-k) and
 * Qwen3-MoE (num_experts or num_local_experts of moe_intermediate_size, norm_topk_prob). */
static int parse_moe(const cJSON *root, const char *what, struct hq_model_config *c) {
  const int mix = c->arch == HQ_ARCH_MIXTRAL;
  if (!mix && c->arch != HQ_ARCH_QWEN3_MOE) return HQ_OK;
  c->n_experts = mix ? 8 : 128;
  c->top_k = mix ? 2 : 8;
  c->moe_intermediate = mix ? c->intermediate : 768;
  c->norm_topk = mix;
  HQ_TRY(get_int(root, "num_local_experts", 0, &c->n_experts, what));
  if (!mix) HQ_TRY(get_int(root, "num_experts", 0, &c->n_experts, what));
  HQ_TRY(get_int(root, "num_experts_per_tok", 0, &c->top_k, what));
  if (!mix) HQ_TRY(get_int(root, "moe_intermediate_size", 0, &c->moe_intermediate, what));
  if (!mix) HQ_TRY(get_bool(root, "norm_topk_prob", &c->norm_topk, what));
  if (c->top_k > c->n_experts)
    return hq_fail(HQ_ERR_INPUT, "%s: num_experts_per_tok %lld is more than the %lld experts",
                   what, (long long)c->top_k, (long long)c->n_experts);
  if (c->n_experts > 65536)
    return hq_fail(HQ_ERR_UNSUPPORTED, "%s: %lld experts; hpcq supports up to 65536", what,
                   (long long)c->n_experts);
  if (!(c->moe_layer = calloc((size_t)c->n_layers, 1)))
    return hq_fail(HQ_ERR_NOMEM, "out of memory");
  if (mix) {
    memset(c->moe_layer, 1, (size_t)c->n_layers);
    return HQ_OK;
  }
  return parse_sparse_layers(root, what, c);
}

int hq_config_moe_block(const struct hq_model_config *c, int64_t b) {
  return c->moe_layer && b >= 0 && b < c->n_layers && c->moe_layer[b];
}

static int parse(const cJSON *root, const char *what, struct hq_model_config *c) {
  if (!cJSON_IsObject(root))
    return hq_fail(HQ_ERR_INPUT, "%s: not a JSON object; expected a Hugging Face config.json",
                   what);
  HQ_TRY(no_dup_keys(root, what));
  HQ_TRY(parse_arch(root, what, c));
  HQ_TRY(check_mlp(root, what));
  HQ_TRY(parse_sliding_window(root, what, c));
  HQ_TRY(parse_sizes(root, what, c));
  HQ_TRY(parse_norm_rope(root, what, c));
  HQ_TRY(parse_moe(root, what, c));
  return check_shapes(what, c);
}

int hq_config_parse(const char *text, size_t len, const char *what, struct hq_model_config *c) {
  memset(c, 0, sizeof *c);
  if (!what) what = "config.json";
  long long at = -1;
  cJSON *root = hq_json_parse_whole(text, len, &at);
  if (!root)
    return hq_fail(HQ_ERR_INPUT, "%s: not valid JSON (at byte %lld: a syntax error, or something "
                   "after the closing brace); expected a Hugging Face config.json holding one "
                   "JSON object", what, at);
  int rc = parse(root, what, c);
  cJSON_Delete(root);
  if (rc != HQ_OK) {
    free(c->moe_layer);
    memset(c, 0, sizeof *c);
    return rc;
  }
  c->json = malloc(len + 1);
  if (!c->json) {
    hq_config_free(c);
    return hq_fail(HQ_ERR_NOMEM, "out of memory");
  }
  memcpy(c->json, text, len);
  c->json[len] = 0;
  return HQ_OK;
}

/* The whole of fp (closed here) into *buf (the caller frees it), *len bytes: at most 16 MB. */
static int read_config_text(FILE *fp, const char *path, char **buf, size_t *len) {
  size_t cap = 0;
  for (;;) {
    if (*len == cap) {
      if (cap >= ((size_t)16 << 20)) {
        fclose(fp);
        return hq_fail(HQ_ERR_INPUT, "%s is larger than 16 MB; not a config.json", path);
      }
      cap = cap ? cap * 2 : 4096;
      char *nb = realloc(*buf, cap);
      if (!nb) {
        fclose(fp);
        return hq_fail(HQ_ERR_NOMEM, "out of memory reading %s", path);
      }
      *buf = nb;
    }
    size_t got = fread(*buf + *len, 1, cap - *len, fp);
    *len += got;
    if (got == 0) break;
  }
  int err = ferror(fp);
  fclose(fp);
  return err ? hq_fail(HQ_ERR_IO, "error reading %s", path) : HQ_OK;
}

int hq_config_load(const char *dir, struct hq_model_config *c) {
  memset(c, 0, sizeof *c);
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *fp;
  int rc0 = hq_fopen_regular(path, "model config", &fp);
  if (rc0 == HQ_ERR_IO) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", hq_last_error());
    return hq_fail(rc0, "%s; point hpcq at a Hugging Face model folder", msg);
  }
  if (rc0) return rc0;
  char *buf = NULL;
  size_t len = 0;
  int rc = read_config_text(fp, path, &buf, &len);
  if (rc == HQ_OK) rc = hq_config_parse(buf, len, path, c);
  free(buf);
  return rc;
}

void hq_config_free(struct hq_model_config *c) {
  if (!c) return;
  free(c->json);
  c->json = NULL;
  free(c->moe_layer);
  c->moe_layer = NULL;
}
