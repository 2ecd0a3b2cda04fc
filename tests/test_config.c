/* config.json parsing: the bundled configs against transformers.AutoConfig's reading
 * (tests/model_fixtures.h), the six supported architectures (two of them mixtures of experts), llama3 rope scaling (also as
 * transformers 5's rope_parameters), defaults,
 * and refusals of what is not supported, each naming what is. */
#include <math.h>
#include <string.h>

#include "model.h"
#include "model_fixtures.h"
#include "st_testlib.h"
#include "testutil.h"

#define NFX(a) ((int)(sizeof(a) / sizeof((a)[0])))

static int parse(const char *txt, struct hq_model_config *c) {
  hq_error_clear();
  return hq_config_parse(txt, strlen(txt), "cfg.json", c);
}

#define BASE "\"hidden_size\":64,\"intermediate_size\":172,\"num_hidden_layers\":2,"          \
             "\"num_attention_heads\":8,\"vocab_size\":512"

static void bad(const char *txt, int status, const char *n1, const char *n2) {
  struct hq_model_config c;
  int rc = parse(txt, &c);
  const char *msg = hq_last_error();
  CHECK(rc == status, "%s: status %d (%s), want %d", txt, rc, msg, status);
  CHECK(tl_contains(msg, "cfg.json"), "message names the file: %s", msg);
  CHECK(!n1 || tl_contains(msg, n1), "message '%s' lacks '%s'", msg, n1 ? n1 : "");
  CHECK(!n2 || tl_contains(msg, n2), "message '%s' lacks '%s'", msg, n2 ? n2 : "");
  CHECK(c.json == NULL, "no text kept on failure");
  hq_config_free(&c);
}

int main(void) {
  /* the bundled configs, as transformers reads them */
  for (int m = 0; m < NFX(fx_models); m++) {
    const struct fx_model *f = &fx_models[m];
    struct hq_model_config c;
    int rc = hq_config_load(hq_t_data(f->dir), &c);
    CHECK(rc == HQ_OK, "%s: %s", f->dir, hq_last_error());
    if (rc != HQ_OK) continue;
    CHECK(c.arch == HQ_ARCH_LLAMA && strcmp(c.arch_name, f->arch) == 0, "arch");
    CHECK(c.hidden == f->hidden && c.intermediate == f->inter && c.n_layers == f->layers,
          "%s sizes", f->dir);
    CHECK(c.n_heads == f->heads && c.n_kv_heads == f->kv_heads && c.head_dim == f->head_dim,
          "%s heads", f->dir);
    CHECK(c.vocab == f->vocab && c.max_pos == f->max_pos, "%s vocab/max_pos", f->dir);
    CHECK(c.rms_eps == (float)f->rms_eps && c.rope_theta == f->rope_theta, "%s eps/theta",
          f->dir);
    CHECK(c.tie_embeddings == f->tie && c.qkv_bias == f->attn_bias, "%s tie/bias", f->dir);
    CHECK(c.rope_type == HQ_ROPE_DEFAULT, "rope_scaling null");
    size_t len;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", hq_t_data(f->dir));
    char *txt = tl_read(path, &len);
    CHECK(c.json && strcmp(c.json, txt) == 0, "raw text kept");
    free(txt);
    hq_config_free(&c);
    CHECK(c.json == NULL, "freed");
  }

  struct hq_model_config c;
  /* defaults: kv heads = heads, head_dim = hidden/heads, theta 10000, untied, no bias */
  CHECK(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "}", &c) == HQ_OK, "%s",
        hq_last_error());
  CHECK(c.n_kv_heads == 8 && c.head_dim == 8 && c.rope_theta == 10000.0 &&
            c.tie_embeddings == 0 && c.qkv_bias == 0 && c.max_pos == 2048 && c.rms_eps == 1e-6f,
        "llama defaults");
  hq_config_free(&c);
  /* Mistral */
  CHECK(parse("{\"architectures\":[\"MistralForCausalLM\"]," BASE ",\"num_key_value_heads\":2,"
              "\"sliding_window\":4096,\"rope_theta\":1000000.0,\"hidden_act\":\"silu\"}",
              &c) == HQ_OK, "%s", hq_last_error());
  CHECK(c.arch == HQ_ARCH_MISTRAL && c.n_kv_heads == 2 && c.rope_theta == 1e6 && !c.qkv_bias,
        "mistral");
  hq_config_free(&c);
  /* Qwen2: q/k/v bias always, tied embeddings */
  CHECK(parse("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE ",\"num_key_value_heads\":4,"
              "\"tie_word_embeddings\":true,\"use_sliding_window\":false,\"rms_norm_eps\":1e-6}",
              &c) == HQ_OK, "%s", hq_last_error());
  CHECK(c.arch == HQ_ARCH_QWEN2 && c.qkv_bias == 1 && c.tie_embeddings == 1, "qwen2");
  hq_config_free(&c);
  /* Qwen3: q/k norms always, no bias, head_dim 128 when absent (Qwen3Config's default, not
   * hidden / heads) */
  CHECK(parse("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE "}", &c) == HQ_OK, "%s",
        hq_last_error());
  CHECK(c.arch == HQ_ARCH_QWEN3 && c.qk_norm == 1 && c.qkv_bias == 0 && c.head_dim == 128 &&
            c.max_pos == 32768, "qwen3 defaults");
  hq_config_free(&c);
  CHECK(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "}", &c) == HQ_OK && !c.qk_norm,
        "no q/k norm on Llama");
  hq_config_free(&c);
  /* transformers 5's rope_parameters: theta and scaling from it; beside the older keys they
   * must agree */
  CHECK(parse("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE ",\"rope_parameters\":"
              "{\"rope_theta\":1000000.0,\"rope_type\":\"default\"}}", &c) == HQ_OK &&
            c.rope_theta == 1e6 && c.rope_type == HQ_ROPE_DEFAULT,
        "rope_parameters theta: %s", hq_last_error());
  hq_config_free(&c);
  const char *l3p = "{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_parameters\":"
                    "{\"rope_theta\":500000.0,\"factor\":8.0,\"low_freq_factor\":1.0,"
                    "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
                    "\"rope_type\":\"llama3\"}}";
  CHECK(parse(l3p, &c) == HQ_OK && c.rope_type == HQ_ROPE_LLAMA3 && c.rope_factor == 8.0 &&
            c.rope_original_max_pos == 8192 && c.rope_theta == 500000.0,
        "llama3 rope_parameters: %s", hq_last_error());
  hq_config_free(&c);
  CHECK(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_theta\":500000.0,"
              "\"rope_scaling\":{\"rope_type\":\"default\"},\"rope_parameters\":"
              "{\"rope_theta\":500000.0,\"rope_type\":\"default\"}}", &c) == HQ_OK &&
            c.rope_theta == 500000.0, "agreeing rope keys: %s", hq_last_error());
  hq_config_free(&c);
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_theta\":10000.0,"
      "\"rope_parameters\":{\"rope_theta\":500000.0,\"rope_type\":\"default\"}}",
      HQ_ERR_INPUT, "rope_theta", "differ");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":"
      "\"default\"},\"rope_parameters\":{\"rope_theta\":500000.0,\"factor\":8.0,"
      "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
      "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"}}",
      HQ_ERR_INPUT, "rope_scaling and rope_parameters", NULL);
  bad("{\"architectures\":[\"Qwen3ForCausalLM\"]," BASE ",\"rope_parameters\":"
      "{\"rope_theta\":1000000.0,\"rope_type\":\"yarn\"}}", HQ_ERR_UNSUPPORTED, "yarn", NULL);
  /* Mixtral: 8 experts top-2 of intermediate_size, renormalised, every layer sparse; its
   * transformers defaults for eps and theta */
  CHECK(parse("{\"architectures\":[\"MixtralForCausalLM\"]," BASE "}", &c) == HQ_OK, "%s",
        hq_last_error());
  CHECK(c.arch == HQ_ARCH_MIXTRAL && c.n_experts == 8 && c.top_k == 2 &&
            c.moe_intermediate == 172 && c.norm_topk == 1 && hq_config_moe_block(&c, 0) &&
            hq_config_moe_block(&c, 1) && !hq_config_moe_block(&c, 2) && c.rms_eps == 1e-5f &&
            c.rope_theta == 1e6 && !c.qk_norm, "mixtral defaults");
  hq_config_free(&c);
  /* Qwen3-MoE: num_experts (hub) or num_local_experts (transformers 5), moe_intermediate_size,
   * norm_topk_prob, decoder_sparse_step and mlp_only_layers */
  CHECK(parse("{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"hidden_size\":64,"
              "\"intermediate_size\":172,\"num_hidden_layers\":6,\"num_attention_heads\":8,"
              "\"vocab_size\":512,\"num_experts\":16,\"num_experts_per_tok\":4,"
              "\"moe_intermediate_size\":24,\"norm_topk_prob\":true,\"decoder_sparse_step\":2,"
              "\"mlp_only_layers\":[3]}", &c) == HQ_OK, "%s", hq_last_error());
  CHECK(c.arch == HQ_ARCH_QWEN3_MOE && c.n_experts == 16 && c.top_k == 4 &&
            c.moe_intermediate == 24 && c.norm_topk == 1 && c.qk_norm == 1 && c.head_dim == 8,
        "qwen3-moe fields");
  CHECK(!hq_config_moe_block(&c, 0) && hq_config_moe_block(&c, 1) && !hq_config_moe_block(&c, 2) &&
            !hq_config_moe_block(&c, 3) && !hq_config_moe_block(&c, 4) && hq_config_moe_block(&c, 5),
        "qwen3-moe sparse layers: (b + 1) %% 2 == 0 and not 3");
  hq_config_free(&c);
  CHECK(parse("{\"architectures\":[\"Qwen3MoeForCausalLM\"]," BASE ",\"num_local_experts\":4,"
              "\"num_experts_per_tok\":1}", &c) == HQ_OK && c.n_experts == 4 && c.top_k == 1 &&
            c.moe_intermediate == 768 && c.norm_topk == 0, "qwen3-moe defaults: %s",
        hq_last_error());
  hq_config_free(&c);
  CHECK(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "}", &c) == HQ_OK &&
            c.n_experts == 0 && !hq_config_moe_block(&c, 0), "llama is dense");
  hq_config_free(&c);
  bad("{\"architectures\":[\"MixtralForCausalLM\"]," BASE ",\"num_local_experts\":2,"
      "\"num_experts_per_tok\":3}", HQ_ERR_INPUT, "num_experts_per_tok 3", "2 experts");
  bad("{\"architectures\":[\"Qwen3MoeForCausalLM\"]," BASE ",\"mlp_only_layers\":[5]}",
      HQ_ERR_INPUT, "mlp_only_layers", "[0, 2)");
  bad("{\"architectures\":[\"Qwen3MoeForCausalLM\"]," BASE ",\"mlp_only_layers\":3}",
      HQ_ERR_INPUT, "mlp_only_layers", "list");
  /* attention_bias on Llama */
  CHECK(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"attention_bias\":true}", &c) ==
            HQ_OK, "%s", hq_last_error());
  CHECK(c.qkv_bias == 1, "attention_bias");
  hq_config_free(&c);
  /* explicit head_dim not equal to hidden/heads (Mistral-Nemo style) */
  CHECK(parse("{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":100,"
              "\"intermediate_size\":64,\"num_hidden_layers\":1,\"num_attention_heads\":8,"
              "\"head_dim\":16,\"vocab_size\":32}", &c) == HQ_OK, "%s", hq_last_error());
  CHECK(c.head_dim == 16, "explicit head_dim");
  hq_config_free(&c);
  /* llama3 rope scaling (Llama 3.1), with rope_type and with the older type key */
  const char *l3 = "{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_theta\":500000.0,"
                   "\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,"
                   "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
                   "\"rope_type\":\"llama3\"}}";
  CHECK(parse(l3, &c) == HQ_OK, "%s", hq_last_error());
  CHECK(c.rope_type == HQ_ROPE_LLAMA3 && c.rope_factor == 8.0 && c.rope_low_freq_factor == 1.0 &&
            c.rope_high_freq_factor == 4.0 && c.rope_original_max_pos == 8192 &&
            c.rope_theta == 500000.0,
        "llama3 rope");
  hq_config_free(&c);
  CHECK(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"type\":"
              "\"llama3\",\"factor\":32.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
              "\"original_max_position_embeddings\":8192}}", &c) == HQ_OK &&
            c.rope_type == HQ_ROPE_LLAMA3 && c.rope_factor == 32.0,
        "llama3 via type key: %s", hq_last_error());
  hq_config_free(&c);
  CHECK(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":"
              "\"default\"}}", &c) == HQ_OK && c.rope_type == HQ_ROPE_DEFAULT,
        "default rope_type");
  hq_config_free(&c);

  /* refusals */
  bad("{\"architectures\":[\"GPT2LMHeadModel\"]," BASE "}", HQ_ERR_UNSUPPORTED, "GPT2LMHeadModel",
      "MixtralForCausalLM and Qwen3MoeForCausalLM");
  bad("{" BASE "}", HQ_ERR_INPUT, "architectures", "LlamaForCausalLM");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\","
      "\"factor\":4.0}}", HQ_ERR_UNSUPPORTED, "yarn", "\"llama3\"");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"type\":\"linear\","
      "\"factor\":2.0}}", HQ_ERR_UNSUPPORTED, "linear", "\"llama3\"");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"factor\":2.0}}",
      HQ_ERR_INPUT, "rope_type", "llama3");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":"
      "\"llama3\",\"factor\":8.0}}", HQ_ERR_INPUT, "llama3", "low_freq_factor");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"hidden_act\":\"gelu\"}",
      HQ_ERR_UNSUPPORTED, "gelu", "silu");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"mlp_bias\":true}", HQ_ERR_UNSUPPORTED,
      "mlp_bias", NULL);
  bad("{\"architectures\":[\"Qwen2ForCausalLM\"]," BASE ",\"use_sliding_window\":true}",
      HQ_ERR_UNSUPPORTED, "use_sliding_window", NULL);
  bad("{\"architectures\":[\"LlamaForCausalLM\"],\"intermediate_size\":172,"
      "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"vocab_size\":512}", HQ_ERR_INPUT,
      "\"hidden_size\"", "missing");
  bad("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":172,"
      "\"num_hidden_layers\":2,\"num_attention_heads\":8}", HQ_ERR_INPUT, "\"vocab_size\"",
      "missing");
  bad("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":100,\"intermediate_size\":172,"
      "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"vocab_size\":512}", HQ_ERR_UNSUPPORTED,
      "does not divide", "head_dim");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_key_value_heads\":3}",
      HQ_ERR_UNSUPPORTED, "num_key_value_heads 3", "grouped-query");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_key_value_heads\":16}",
      HQ_ERR_UNSUPPORTED, "num_key_value_heads 16", NULL);
  bad("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64.5,\"intermediate_size\":172,"
      "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"vocab_size\":512}", HQ_ERR_INPUT,
      "hidden_size", "positive integer");
  bad("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\",\"intermediate_size\":172,"
      "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"vocab_size\":512}", HQ_ERR_INPUT,
      "hidden_size", "positive integer");
  bad("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":172,"
      "\"num_hidden_layers\":2,\"num_attention_heads\":0,\"vocab_size\":512}", HQ_ERR_INPUT,
      "num_attention_heads", "positive integer");
  /* transformers (python json) takes the last of duplicate keys, cJSON the first: refuse */
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_attention_heads\":4}",
      HQ_ERR_INPUT, "\"num_attention_heads\"", "twice");
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rms_norm_eps\":-1}", HQ_ERR_INPUT,
      "rms_norm_eps", NULL);
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"tie_word_embeddings\":1}",
      HQ_ERR_INPUT, "tie_word_embeddings", NULL);
  bad("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"head_dim\":7}", HQ_ERR_UNSUPPORTED,
      "head_dim 7", "even");
  bad("{\"architectures\": [", HQ_ERR_INPUT, "not valid JSON", NULL);
  bad("[]", HQ_ERR_INPUT, "not a JSON object", NULL);

  /* loading from a folder without config.json */
  hq_error_clear();
  CHECK(hq_config_load("/nonexistent-hpcq-dir", &c) == HQ_ERR_IO &&
            tl_contains(hq_last_error(), "/nonexistent-hpcq-dir/config.json"),
        "missing config.json: %s", hq_last_error());
  return hq_t_done("test_config");
}
