/* Hugging Face checkpoints: safetensors (single or sharded), config.json, the Llama-family
 * model description and per-block weight loading. Not collective. */
#ifndef HQ_MODEL_H
#define HQ_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* ---------------- safetensors ---------------- */
/* I32: only the packed tensors of a GPTQ checkpoint (qweight, qzeros, g_idx), never converted */
enum hq_dtype { HQ_DTYPE_F32 = 0, HQ_DTYPE_F16 = 1, HQ_DTYPE_BF16 = 2, HQ_DTYPE_I32 = 3 };
const char *hq_dtype_name(enum hq_dtype d);
size_t hq_dtype_size(enum hq_dtype d);

#define HQ_ST_MAXDIM 8
struct hq_st_tensor {
  char *name;
  enum hq_dtype dtype;
  int ndim;
  int64_t shape[HQ_ST_MAXDIM];
  int64_t numel;
  const void *data;   /* inside the mapped file */
  size_t nbytes;
  int file;           /* index into hq_safetensors.files */
};

struct hq_st_file {
  char *path;
  void *map;          /* mmap of the whole file */
  size_t size;
};

struct hq_safetensors {
  int nfiles;
  struct hq_st_file *files;
  int64_t ntensors;
  struct hq_st_tensor *tensors; /* sorted by name */
};

/* Parse and validate one safetensors header. `json` is the header text (len bytes, not NUL
 * terminated), `data_len` the size of the data section that follows it. Appends the tensors
 * to `st` with data pointers relative to `data` (may be NULL for fuzzing). `what` names the
 * file in messages. Never crashes on any input. */
int hq_st_parse_header(const char *json, size_t len, const void *data, size_t data_len,
                       int file_index, const char *what, struct hq_safetensors *st);
/* Open a file, or a model folder (model.safetensors or model.safetensors.index.json). */
int hq_st_open(const char *path, struct hq_safetensors *st);
const struct hq_st_tensor *hq_st_find(const struct hq_safetensors *st, const char *name);
/* Convert a tensor to fp32 (out has numel floats). */
void hq_st_to_f32(const struct hq_st_tensor *t, float *out);
/* Elements [e0, e1) of the tensor (row-major) into out[0 .. e1 - e0). */
void hq_st_to_f32_range(const struct hq_st_tensor *t, int64_t e0, int64_t e1, float *out);
/* Drop the tensor's pages from this process's resident set (madvise DONTNEED on the read-only
 * file mapping; a later access reads them from the file again). Keeps the peak RSS of a run
 * independent of the number of blocks streamed through it. */
void hq_st_release(const struct hq_st_tensor *t);
void hq_st_close(struct hq_safetensors *st);

/* ---------------- config ---------------- */
enum hq_arch { HQ_ARCH_LLAMA = 0, HQ_ARCH_MISTRAL = 1, HQ_ARCH_QWEN2 = 2, HQ_ARCH_QWEN3 = 3,
               HQ_ARCH_MIXTRAL = 4, HQ_ARCH_QWEN3_MOE = 5 };
enum hq_rope_type { HQ_ROPE_DEFAULT = 0, HQ_ROPE_LLAMA3 = 1 };

struct hq_model_config {
  enum hq_arch arch;
  char arch_name[64];        /* as in "architectures" */
  int64_t hidden;            /* hidden_size */
  int64_t intermediate;      /* intermediate_size */
  int64_t n_layers;          /* num_hidden_layers */
  int64_t n_heads;           /* num_attention_heads */
  int64_t n_kv_heads;        /* num_key_value_heads (default n_heads) */
  int64_t head_dim;          /* head_dim (default hidden / n_heads) */
  int64_t vocab;             /* vocab_size */
  int64_t max_pos;           /* max_position_embeddings */
  float rms_eps;             /* rms_norm_eps */
  double rope_theta;         /* rope_theta (default 10000) */
  enum hq_rope_type rope_type;
  double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
  int64_t rope_original_max_pos;
  int tie_embeddings;        /* tie_word_embeddings */
  int qkv_bias;              /* attention_bias, or Qwen2 (always) */
  int qk_norm;               /* Qwen3: per-head RMSNorm of q and k (self_attn.q_norm / k_norm,
                                [head_dim]) after the projection, before RoPE */
  int64_t sliding_window;    /* Mistral's / Mixtral's sliding_window (0: none / null); see below */
  /* Mixture of experts (Mixtral, Qwen3-MoE): the MLP of a sparse block is n_experts SiLU-gated
   * experts of moe_intermediate, top_k of them per token chosen by a router (an unquantized
   * linear [n_experts x hidden]: softmax in fp32, top-k, renormalised when norm_topk). */
  int64_t n_experts;         /* num_local_experts / num_experts; 0: a dense model */
  int64_t top_k;             /* num_experts_per_tok */
  int64_t moe_intermediate;  /* Qwen3-MoE moe_intermediate_size; Mixtral intermediate_size */
  int norm_topk;             /* Mixtral always; Qwen3-MoE norm_topk_prob */
  unsigned char *moe_layer;  /* [n_layers] 1: the block's MLP is sparse (Qwen3-MoE:
                                decoder_sparse_step, mlp_only_layers); NULL for a dense model */
  char *json;                /* the config.json text as read (for the HDF5 metadata) */
};

int hq_config_parse(const char *text, size_t len, const char *what, struct hq_model_config *c);
int hq_config_load(const char *dir, struct hq_model_config *c);
/* A sequence of `seqlen` tokens runs exactly like the checkpoint's model: HQ_ERR_UNSUPPORTED
 * (naming `opt`, e.g. "--seqlen") when it is longer than a Mistral sliding_window, which
 * hpcq's full causal attention does not implement. */
int hq_config_check_seqlen(const struct hq_model_config *c, int64_t seqlen, const char *opt);
void hq_config_free(struct hq_model_config *c);
/* 1 when block b's MLP is the sparse mixture of experts, 0 when it is the dense MLP. */
int hq_config_moe_block(const struct hq_model_config *c, int64_t b);

/* ---------------- model ---------------- */
/* The seven linears of a Llama block, in true-sequential order. */
enum hq_linear { HQ_LIN_Q = 0, HQ_LIN_K, HQ_LIN_V, HQ_LIN_O, HQ_LIN_GATE, HQ_LIN_UP, HQ_LIN_DOWN,
                 HQ_LIN_COUNT };
/* Input groups sharing one Hessian: {q,k,v} -> {o} -> {gate,up} -> {down}. */
enum hq_group { HQ_GROUP_QKV = 0, HQ_GROUP_O, HQ_GROUP_GATEUP, HQ_GROUP_DOWN, HQ_GROUP_COUNT };
const char *hq_linear_name(enum hq_linear l);        /* "self_attn.q_proj", ..., "mlp.down_proj" */
enum hq_group hq_linear_group(enum hq_linear l);
/* "[4096, 11008]": a shape of nd dimensions for messages */
void hq_shape_str(const int64_t *s, int nd, char *buf, size_t n);
/* rows (out) and cols (in) of a linear for this config */
void hq_linear_shape(const struct hq_model_config *c, enum hq_linear l, int64_t *rows, int64_t *cols);

struct hq_h5;
struct hq_model {
  char *dir;
  struct hq_model_config cfg;
  struct hq_safetensors st;
  struct hq_h5 *h5;  /* set when the model is an hpcq .h5 result (model_h5.c) */
  /* a GPTQ checkpoint (model_gptq.c): config.json's quantization_config */
  int gptq_format;          /* HQ_PACK_GPTQ (v1) or HQ_PACK_GPTQ_V2; 0: not a GPTQ checkpoint */
  int gptq_bits;            /* its bits (a linear's own come from its shapes) */
  int64_t gptq_group_size;  /* its group_size (-1: one group per row) */
};

/* model_gptq.c: a GPTQ checkpoint folder as a model (dequantized linears). */
struct hq_packed;
/* Reads quantization_config from the config: sets gptq_* for quant_method "gptq",
 * HQ_ERR_UNSUPPORTED for another method or checkpoint_format; nothing without one. */
int hq_model_gptq_init(struct hq_model *m);
/* 1 when `name` is "X.weight" of a GPTQ checkpoint that stores X.qweight; prefix: X. */
int hq_model_gptq_linear(const struct hq_model *m, const char *name, char *prefix, size_t n);
/* 1 when the GPTQ checkpoint stores linear X (X.qweight). */
int hq_model_gptq_has(const struct hq_model *m, const char *x);
/* The checkpoint's GPTQ linears X (every X.qweight, in tensor order) into *names (malloc'd
 * strings in a malloc'd array); returns their count. */
int64_t hq_model_gptq_list(const struct hq_model *m, char ***names);
/* GPTQ linear X: its four tensors checked against each other, rows (out) and in. */
int hq_model_gptq_shape(const struct hq_model *m, const char *x, int64_t *rows, int64_t *in);
/* GPTQ linear X as a whole-layer packed slab (the zero convention of the checkpoint). */
int hq_model_gptq_read(const struct hq_model *m, const char *x, struct hq_packed *p);
/* GPTQ linear X dequantized: W [out x in] = scale * (q - zero). */
int hq_model_gptq_load_f32(const struct hq_model *m, const char *x, float **out, int64_t *numel);

/* model_h5.c: an hpcq result file as a model (dequantized linears). hq_model_open dispatches
 * here for paths ending in ".h5"; hq_model_load_f32 and hq_model_close when m->h5 is set. */
int hq_model_h5_open(const char *path, struct hq_model *m);
int hq_model_h5_load_f32(const struct hq_model *m, const char *name, float **out, int64_t *numel);
void hq_model_h5_close(struct hq_model *m);
/* Shape of a tensor of the file (quantized linears: [out, in]); 1 when present, else 0. */
int hq_model_h5_shape(const struct hq_model *m, const char *name, int *ndim,
                      int64_t shape[HQ_ST_MAXDIM]);

/* Open config.json + safetensors of a model folder and check that every tensor the forward
 * needs is present with the shape the config implies (clear error naming the tensor). */
int hq_model_open(const char *dir, struct hq_model *m);
void hq_model_close(struct hq_model *m);
/* A 64-bit fingerprint of the model opened from `path` (model_id.c): config.json's text and,
 * per tensor, its name, dtype, shape and 16 evenly spread 4 KiB slices of its bytes (all of a
 * smaller one) -- a few MB read, and another checkpoint of the same shapes differs; for an
 * .h5 result its size and first and last 64 KiB. */
uint64_t hq_model_fingerprint(const struct hq_model *m, const char *path);

/* One block's weights as fp32 host arrays, row-major [out x in] for linears. */
struct hq_block_weights {
  float *lin[HQ_LIN_COUNT];
  float *bias[HQ_LIN_COUNT];  /* q/k/v bias when cfg.qkv_bias, else NULL */
  float *ln_attn;             /* input_layernorm.weight [hidden] */
  float *ln_mlp;              /* post_attention_layernorm.weight [hidden] */
  float *q_norm, *k_norm;     /* self_attn.q_norm / k_norm.weight [head_dim] when cfg.qk_norm */
  /* MoE block: lin[GATE], lin[UP], lin[DOWN] stay NULL and these hold its MLP */
  float *router;              /* [n_experts x hidden] */
  float **experts;            /* [3 * n_experts]: expert e's part p at 3e + p (hq_expert_shape) */
  int64_t n_expert_slots;     /* 3 * n_experts when experts is set */
};

/* Mixture-of-experts blocks (hq_config_moe_block): the MLP is a router and n_experts experts
 * of three linears each instead of gate/up/down_proj. */
enum hq_expert_part { HQ_EXP_GATE = 0, HQ_EXP_UP = 1, HQ_EXP_DOWN = 2 };
/* "model.layers.<b>.block_sparse_moe.experts.<e>.w1" (Mixtral: w1 gate, w3 up, w2 down) or
 * "model.layers.<b>.mlp.experts.<e>.gate_proj" (Qwen3-MoE), without ".weight". */
void hq_expert_name(const struct hq_model_config *c, int64_t b, int64_t e,
                    enum hq_expert_part part, char *buf, size_t n);
/* "model.layers.<b>.block_sparse_moe.gate.weight" / "model.layers.<b>.mlp.gate.weight": the
 * router [n_experts x hidden], kept unquantized. */
void hq_router_name(const struct hq_model_config *c, int64_t b, char *buf, size_t n);
/* rows (out) and cols (in) of an expert's linear */
void hq_expert_shape(const struct hq_model_config *c, enum hq_expert_part part, int64_t *rows,
                     int64_t *cols);

/* The quantized linears of block b: the seven of a dense block (enum hq_linear order), or of a
 * MoE block q, k, v, o then expert e's gate, up, down at 4 + 3e + part. */
int64_t hq_block_nlinears(const struct hq_model_config *c, int64_t b);
/* Linear k of block b: its name without ".weight" (hq_pipeline_lin_name / hq_expert_name) and
 * shape; the member of w that holds it (w may be NULL). */
float **hq_block_linear(const struct hq_model_config *c, int64_t b, int64_t k,
                        struct hq_block_weights *w, char *name, size_t n, int64_t *rows,
                        int64_t *cols);

/* The unquantized tensors of a block the forward reads (norms, q/k/v biases), in this order:
 * input_layernorm, post_attention_layernorm, q/k/v bias (cfg.qkv_bias), q_norm and k_norm
 * (cfg.qk_norm). One list for loading, the checks of a checkpoint and of an .h5 result, and
 * the unquantized tensors a run stores. */
enum hq_btensor { HQ_BT_LN_ATTN = 0, HQ_BT_LN_MLP, HQ_BT_BIAS_Q, HQ_BT_BIAS_K, HQ_BT_BIAS_V,
                  HQ_BT_Q_NORM, HQ_BT_K_NORM, HQ_BT_COUNT };
struct hq_block_tensor {
  enum hq_btensor kind;
  const char *suffix;         /* "input_layernorm.weight", ..., "self_attn.k_norm.weight" */
  int64_t len;                /* elements (all are vectors) */
  const char *why;            /* the config fields that give len, for messages */
};
/* The block tensors this config has into t; returns their count (<= HQ_BT_COUNT). */
int hq_block_tensors(const struct hq_model_config *c, struct hq_block_tensor t[HQ_BT_COUNT]);
/* The member of w that holds tensor kind k. */
float **hq_block_tensor_slot(struct hq_block_weights *w, enum hq_btensor k);
/* Its body, shared with struct hq_block_dev (forward.h), whose members have the same names:
 * returns &w->member for kind k, falls through for an unknown k. */
#define HQ_BT_RETURN_MEMBER(w, k)                                                           \
  switch (k) {                                                                              \
  case HQ_BT_LN_ATTN: return &(w)->ln_attn;                                                 \
  case HQ_BT_LN_MLP: return &(w)->ln_mlp;                                                   \
  case HQ_BT_BIAS_Q: return &(w)->bias[HQ_LIN_Q];                                           \
  case HQ_BT_BIAS_K: return &(w)->bias[HQ_LIN_K];                                           \
  case HQ_BT_BIAS_V: return &(w)->bias[HQ_LIN_V];                                           \
  case HQ_BT_Q_NORM: return &(w)->q_norm;                                                   \
  case HQ_BT_K_NORM: return &(w)->k_norm;                                                   \
  default: break;                                                                           \
  }
int hq_model_load_block(const struct hq_model *m, int64_t b, struct hq_block_weights *w);
/* The same without the linears when `linears` is 0 (norms and biases only); then
 * hq_model_load_linear converts one linear when it is needed (no-op if w holds it). */
int hq_model_load_block_part(const struct hq_model *m, int64_t b, int linears,
                             struct hq_block_weights *w);
int hq_model_load_linear(const struct hq_model *m, int64_t b, enum hq_linear l,
                         struct hq_block_weights *w);
/* The router and all experts of MoE block b into w (no-op if w holds them). */
int hq_model_load_experts(const struct hq_model *m, int64_t b, struct hq_block_weights *w);
/* Rows [r0, r1) of linear l of block b into W, the caller's [rows x cols] buffer of the whole
 * linear (its other rows untouched): a node's ranks convert their shares of one node-shared
 * copy. Safetensors checkpoints only (HQ_ERR_UNSUPPORTED for an .h5 model). */
int hq_model_load_linear_rows(const struct hq_model *m, int64_t b, enum hq_linear l, int64_t r0,
                              int64_t r1, float *W);
void hq_block_weights_free(struct hq_block_weights *w);
/* Any tensor by name as fp32 (malloc'ed, caller frees); numel out. */
int hq_model_load_f32(const struct hq_model *m, const char *name, float **out, int64_t *numel);
/* The embedding rows of ntok tokens ids (each in [0, vocab)) as fp32 into out [ntok x hidden]
 * (host): converted row by row from the checkpoint, without the whole table in memory (an .h5
 * result loads the table once). The same values as rows of hq_model_load_f32's table. */
int hq_model_embed_rows(const struct hq_model *m, const int32_t *ids, int64_t ntok, float *out);

/* ---------------- tokens ---------------- */
struct hq_tokens {
  int32_t *ids;
  int64_t n;
};
/* Raw little-endian int32 file; every id checked against vocab (error names the offset). */
int hq_tokens_load(const char *path, int64_t vocab, struct hq_tokens *t);
void hq_tokens_free(struct hq_tokens *t);
/* Calibration: nsamples random windows of seqlen (start uniform in [0, n - seqlen]), seeded;
 * out is [nsamples x seqlen]. Error if n < seqlen. When the text is too short for the request
 * (nsamples x seqlen > n, or a window repeats another exactly) it warns once per process on
 * stderr (rank 0 only, hq_error_rank() <= 0) with the token, window and overlap counts. */
int hq_tokens_sample(const struct hq_tokens *t, int64_t nsamples, int64_t seqlen, uint64_t seed,
                     int32_t *out);
/* Evaluation: contiguous non-overlapping windows; returns the window count (remainder dropped). */
int64_t hq_tokens_nwindows(const struct hq_tokens *t, int64_t seqlen);

#endif
