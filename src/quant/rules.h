/* Per-module rules of `hpcq quantize --rule PATTERN:KEY=VALUE[,...]` / `--rules FILE`
 * (README "Usage", docs/readme/output-format.md): other bits or group size for some linears,
 * or none at all (skip: the linear stays full precision). Not collective.
 *
 * Matching is GPTQModel's `dynamic` (QuantizeConfig.dynamic, read by transformers and
 * GPTQModel from quantization_config, which `hpcq export` writes): PATTERN is a regular
 * expression matched from the START of the linear's name without ".weight"
 * ("model.layers.5.mlp.down_proj"), like Python's re.match: it need not match the whole name
 * ("model\.layers\.5\." takes the whole block). The FIRST rule that matches decides, and keys it
 * does not set keep the run's defaults (--bits, --group-size); later rules are not consulted.
 * Patterns are POSIX extended regular expressions (regcomp) restricted to the part of the
 * syntax that means the same in Python: a backslash only before punctuation and never inside
 * [...] (write [0-9] for \d), no "(?", no POSIX classes "[:...:]", no lazy ("*?", "+?", "??",
 * "}?") or possessive ("*+", "++", "?+", "}+") quantifiers. */
#ifndef HQ_RULES_H
#define HQ_RULES_H

#include <regex.h>
#include <stdint.h>

#include "model.h"

struct hq_rule {
  char *pattern;      /* as given */
  regex_t re;         /* "^(pattern)", REG_EXTENDED | REG_NOSUB */
  int bits;           /* 0: the run's */
  int64_t group_size; /* 0: the run's; -1: per output channel */
  int skip;           /* the linear is not quantized */
};

struct hq_rules {
  int n;
  struct hq_rule *r; /* [n], in the order given (first match wins) */
};

/* What one linear gets: bits and group size (-1 per channel), skip, and the rule (-1: none). */
struct hq_lin_q {
  int bits;
  int64_t group_size;
  int skip;
  int rule;
};

/* One rule "PATTERN:KEY=VALUE[,KEY=VALUE...]" (split at the last ':'), appended. Keys: bits
 * (2, 3, 4, 8), group_size (>= 1, or -1), skip (1 or true; alone). where ("--rule", "FILE:LINE")
 * prefixes the message. HQ_ERR_INPUT with a hint for anything else. */
int hq_rules_add(struct hq_rules *rs, const char *text, const char *where);
/* Every line of text (one rule a line; blank lines and '#' comments skipped). */
int hq_rules_add_lines(struct hq_rules *rs, const char *text, const char *where);
/* The rules of a file (--rules FILE). */
int hq_rules_add_file(struct hq_rules *rs, const char *path);
void hq_rules_free(struct hq_rules *rs);

/* The canonical text: one rule a line, "PATTERN:bits=B,group_size=G" / "PATTERN:skip=1",
 * '\n'-separated (malloc'ed; "" without rules). hq_rules_add_lines reads it back. */
char *hq_rules_text(const struct hq_rules *rs);

/* The settings of linear `name` (rs NULL or empty: the defaults). */
struct hq_lin_q hq_rules_resolve(const struct hq_rules *rs, const char *name, int bits,
                                 int64_t group_size);

/* Before any work: every rule decides at least one linear of the model (else the message lists
 * what it matches and an example name), no linear's shape refuses its bits / group size (the
 * GPTQ layout has no padding). HQ_ERR_INPUT with a hint. */
int hq_rules_check_model(const struct hq_rules *rs, const struct hq_model_config *c, int bits,
                         int64_t group_size);

#endif
