/* Per-module rules (src/quant/rules.h). Not collective. */
#include "rules.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "fileio.h"
#include "pack.h"
#include "util.h"

#define RULE_FORM "PATTERN:KEY=VALUE[,KEY=VALUE...] with keys bits, group_size, skip (e.g. " \
                  "'model\\.layers\\.5\\.mlp\\.down_proj:bits=8')"

static char *xstrdup(const char *s) {
  const size_t n = strlen(s) + 1;
  return memcpy(hq_xmalloc(n), s, n);
}

/* s at '[': why the bracket expression reads differently in Python (NULL if it does not);
 * *end: its closing ']' (or the end of the pattern: regcomp reports an unclosed one) */
static const char *bracket_why(const char *s, const char **end) {
  const char *e = s + 1 + (s[1] == '^');
  if (*e == ']') e++; /* a leading ']' is a member */
  while (*e && *e != ']') e++;
  *end = *e ? e : e - 1;
  for (const char *c = s + 1; c < e; c++) {
    if (*c == '[' && c[1] && strchr(":=.", c[1]))
      return "POSIX classes such as [[:digit:]] are not Python syntax: write [0-9]";
    if (*c == '\\')
      return "a backslash inside [...] is an ordinary character in POSIX and an escape in Python: "
             "leave it out ([.] already matches a dot)";
  }
  return NULL;
}

/* Python's re and POSIX ERE read the pattern alike (rules.h); else a message. */
static int check_portable(const char *p, const char *where) {
  const char *why = strpbrk(p, "#\n\r") ? "'#' and line breaks cannot be part of a pattern "
                    "(module names have none; the rules are recorded one a line)" : NULL;
  for (const char *s = p; *s && !why; s++) {
    if (*s == '\\' && (isalnum((unsigned char)s[1]) || !s[1]))
      why = s[1] ? "a backslash before a letter or digit (\\d, \\w, \\1 ...) means different "
                   "things in POSIX and Python regular expressions: write [0-9], [a-z_] ..."
                 : "it ends with a backslash";
    else if (*s == '\\') s++;
    else if (*s == '(' && s[1] == '?') why = "\"(?\" is Python-only syntax";
    else if (*s == '[') why = bracket_why(s, &s);
    else if (strchr("*+?}", *s) && s[1] == '?' && s != p) why = "lazy quantifiers (*? +? ?? }?) are Python-only";
    else if (strchr("*+?}", *s) && s[1] == '+' && s != p)
      why = "possessive quantifiers (*+ ++ ?+ }+) are Python-only (3.11 and later)";
  }
  if (!why) return HQ_OK;
  return hq_fail(HQ_ERR_INPUT, "%s: pattern '%s': %s (the pattern must mean the same to hpcq's "
                 "POSIX matcher and to GPTQModel's re.match, which read the exported checkpoint)",
                 where, p, why);
}

static int compile(struct hq_rule *r, const char *where) {
  HQ_TRY(check_portable(r->pattern, where));
  const size_t n = strlen(r->pattern) + 4;
  char *full = hq_xmalloc(n);
  snprintf(full, n, "^(%s)", r->pattern);
  const int e = regcomp(&r->re, full, REG_EXTENDED | REG_NOSUB);
  free(full);
  if (!e) return HQ_OK;
  char msg[160];
  regerror(e, &r->re, msg, sizeof msg);
  return hq_fail(HQ_ERR_INPUT, "%s: pattern '%s' is not a valid extended regular expression: %s",
                 where, r->pattern, msg);
}

/* the value of a boolean key: 1 for 1/true */
static int is_true(const char *v) { return !strcmp(v, "1") || !strcasecmp(v, "true"); }

static int parse_int(const char *key, const char *v, long long *out, const char *where) {
  char *end = NULL;
  *out = strtoll(v, &end, 10);
  if (*v && end && !*end) return HQ_OK;
  return hq_fail(HQ_ERR_INPUT, "%s: %s=%s is not an integer", where, key, v);
}

/* KEY=VALUE into r */
static int parse_kv(struct hq_rule *r, char *kv, const char *where) {
  char *eq = strchr(kv, '=');
  if (!eq || eq == kv || !eq[1])
    return hq_fail(HQ_ERR_INPUT, "%s: '%s' is not KEY=VALUE; a rule is " RULE_FORM, where, kv);
  *eq = 0;
  const char *k = kv, *v = eq + 1;
  long long x = 0;
  if (!strcmp(k, "bits")) {
    HQ_TRY(parse_int(k, v, &x, where));
    if (x != 2 && x != 3 && x != 4 && x != 8)
      return hq_fail(HQ_ERR_INPUT, "%s: bits=%s: bits must be 2, 3, 4 or 8", where, v);
    r->bits = (int)x;
  } else if (!strcmp(k, "group_size")) {
    HQ_TRY(parse_int(k, v, &x, where));
    if (x == 0 || x < -1 || x > (1 << 30))
      return hq_fail(HQ_ERR_INPUT, "%s: group_size=%s: give the columns per group (>= 1, e.g. "
                     "128) or -1 for one group per output channel", where, v);
    r->group_size = x;
  } else if (!strcmp(k, "skip")) {
    if (!is_true(v))
      return hq_fail(HQ_ERR_INPUT, "%s: skip=%s: write skip=1 (or skip=true) to leave the "
                     "linears unquantized; without it they are quantized", where, v);
    r->skip = 1;
  } else if (!strcmp(k, "method") || !strcmp(k, "sym") || !strcmp(k, "desc_act") ||
             !strcmp(k, "act_order")) {
    return hq_fail(HQ_ERR_INPUT, "%s: %s cannot be set per module (one --%s for the whole "
                   "run); rules take bits, group_size and skip", where, k,
                   !strcmp(k, "method") ? "method" : !strcmp(k, "sym") ? "sym" : "act-order");
  } else {
    return hq_fail(HQ_ERR_INPUT, "%s: unknown key '%s'; a rule is " RULE_FORM, where, k);
  }
  return HQ_OK;
}

/* the part after the pattern: KEY=VALUE,... */
static int parse_keys(struct hq_rule *r, char *list, const char *where) {
  if (!*list) return hq_fail(HQ_ERR_INPUT, "%s: nothing after the ':'; a rule is " RULE_FORM, where);
  for (char *kv = list, *next; kv; kv = next) {
    next = strchr(kv, ',');
    if (next) *next++ = 0;
    HQ_TRY(parse_kv(r, kv, where));
  }
  if (r->skip && (r->bits || r->group_size))
    return hq_fail(HQ_ERR_INPUT, "%s: skip=1 leaves the linears unquantized: drop bits / "
                   "group_size from that rule", where);
  return HQ_OK;
}

int hq_rules_add(struct hq_rules *rs, const char *text, const char *where) {
  const char *colon = strrchr(text, ':');
  if (!colon || colon == text)
    return hq_fail(HQ_ERR_INPUT, "%s: '%s' has no %s; a rule is " RULE_FORM, where, text,
                   colon ? "pattern before the ':'" : "':'");
  struct hq_rule r;
  memset(&r, 0, sizeof r);
  char *list = xstrdup(colon + 1);
  r.pattern = hq_xmalloc((size_t)(colon - text) + 1);
  memcpy(r.pattern, text, (size_t)(colon - text));
  r.pattern[colon - text] = 0;
  int rc = parse_keys(&r, list, where);
  free(list);
  if (!rc) rc = compile(&r, where);
  if (rc) {
    free(r.pattern);
    return rc;
  }
  struct hq_rule *grown = hq_xmalloc((size_t)(rs->n + 1) * sizeof *grown);
  if (rs->n) memcpy(grown, rs->r, (size_t)rs->n * sizeof *grown);
  free(rs->r);
  rs->r = grown;
  rs->r[rs->n++] = r;
  return HQ_OK;
}

int hq_rules_add_lines(struct hq_rules *rs, const char *text, const char *where) {
  char *buf = xstrdup(text);
  int rc = HQ_OK, line = 0;
  for (char *s = buf, *next; s && !rc; s = next) {
    next = strchr(s, '\n');
    if (next) *next++ = 0;
    line++;
    char *hash = strchr(s, '#');
    if (hash) *hash = 0;
    while (isspace((unsigned char)*s)) s++;
    for (size_t n = strlen(s); n && isspace((unsigned char)s[n - 1]);) s[--n] = 0;
    if (!*s) continue;
    char w[600];
    snprintf(w, sizeof w, "%s:%d", where, line);
    rc = hq_rules_add(rs, s, w);
  }
  free(buf);
  return rc;
}

int hq_rules_add_file(struct hq_rules *rs, const char *path) {
  FILE *f;
  HQ_TRY(hq_fopen_regular(path, "--rules file", &f));
  char *txt = hq_xmalloc((1 << 20) + 1);
  const size_t n = fread(txt, 1, 1 << 20, f);
  const int big = !feof(f);
  fclose(f);
  txt[n] = 0;
  int rc = big ? hq_fail(HQ_ERR_INPUT, "--rules %s is larger than 1 MiB: is it a rules file "
                         "(one PATTERN:KEY=VALUE a line)?", path)
         : strlen(txt) != n ? hq_fail(HQ_ERR_INPUT, "--rules %s is not a text file", path)
                            : hq_rules_add_lines(rs, txt, path);
  free(txt);
  return rc;
}

void hq_rules_free(struct hq_rules *rs) {
  for (int i = 0; i < rs->n; i++) {
    regfree(&rs->r[i].re);
    free(rs->r[i].pattern);
  }
  free(rs->r);
  memset(rs, 0, sizeof *rs);
}

char *hq_rules_text(const struct hq_rules *rs) {
  size_t cap = 1;
  for (int i = 0; rs && i < rs->n; i++) cap += strlen(rs->r[i].pattern) + 64;
  char *s = hq_xmalloc(cap);
  size_t used = 0;
  s[0] = 0;
  for (int i = 0; rs && i < rs->n; i++) {
    const struct hq_rule *r = &rs->r[i];
    used += (size_t)snprintf(s + used, cap - used, "%s%s:", i ? "\n" : "", r->pattern);
    if (r->skip) used += (size_t)snprintf(s + used, cap - used, "skip=1");
    if (r->bits) used += (size_t)snprintf(s + used, cap - used, "bits=%d", r->bits);
    if (r->group_size)
      used += (size_t)snprintf(s + used, cap - used, "%sgroup_size=%lld", r->bits ? "," : "",
                               (long long)r->group_size);
  }
  return s;
}

static int rules_match(const struct hq_rules *rs, const char *name) {
  for (int i = 0; rs && i < rs->n; i++)
    if (regexec(&rs->r[i].re, name, 0, NULL, 0) == 0) return i;
  return -1;
}

struct hq_lin_q hq_rules_resolve(const struct hq_rules *rs, const char *name, int bits,
                                 int64_t group_size) {
  struct hq_lin_q q = {bits, group_size > 0 ? group_size : -1, 0, rules_match(rs, name)};
  if (q.rule < 0) return q;
  const struct hq_rule *r = &rs->r[q.rule];
  if (r->bits) q.bits = r->bits;
  if (r->group_size) q.group_size = r->group_size;
  q.skip = r->skip;
  return q;
}

/* the linear of block b, k can take q (the GPTQ layout) */
static int check_shape(const struct hq_rules *rs, const struct hq_lin_q *q, const char *name,
                       int64_t rows, int64_t cols) {
  if (q->skip) return HQ_OK;
  const int64_t ng = q->group_size > 0 ? (cols + q->group_size - 1) / q->group_size : 1;
  const int rc = hq_pack_check(q->bits, HQ_PACK_GPTQ_V2, cols, rows, ng, 0, rows);
  if (!rc) return HQ_OK;
  if (q->rule < 0) /* no rule decides it: the run's settings */
    return hq_fail_ctx(rc, "%s (%lld x %lld, out x in) at --bits %d cannot be stored in the "
                       "GPTQ layout (give it a rule: 'PATTERN:skip=1' or other bits): ", name,
                       (long long)rows, (long long)cols, q->bits);
  return hq_fail_ctx(rc, "rule %d ('%s') gives %s (%lld x %lld, out x in) %d bits, group size "
                     "%lld, which the GPTQ layout cannot store: ", q->rule + 1,
                     rs->r[q->rule].pattern, name, (long long)rows, (long long)cols, q->bits,
                     (long long)q->group_size);
}

/* rule i decides no linear: say what it matches (taken by earlier rules) or an example name */
static int no_effect(const struct hq_rules *rs, int i, const char *first, int by,
                     const char *example) {
  if (first)
    return hq_fail(HQ_ERR_INPUT, "rule %d ('%s') decides nothing: every linear it matches (e.g. "
                   "%s) is taken by rule %d before it (the first matching rule wins); reorder or "
                   "drop it", i + 1, rs->r[i].pattern, first, by + 1);
  return hq_fail(HQ_ERR_INPUT, "rule %d ('%s') matches no linear of the model; patterns match "
                 "from the start of names such as %s (without .weight; '.' matches any "
                 "character, write '\\.' for a dot)", i + 1, rs->r[i].pattern, example);
}

int hq_rules_check_model(const struct hq_rules *rs, const struct hq_model_config *c, int bits,
                         int64_t group_size) {
  if (!rs || !rs->n) return HQ_OK;
  int *won = hq_xcalloc((size_t)rs->n, sizeof *won), *by = hq_xcalloc((size_t)rs->n, sizeof *by);
  char **first = hq_xcalloc((size_t)rs->n, sizeof *first), example[256] = "";
  int rc = HQ_OK;
  for (int64_t b = 0; b < c->n_layers && !rc; b++)
    for (int64_t k = 0; k < hq_block_nlinears(c, b) && !rc; k++) {
      char name[256];
      int64_t rows, cols;
      hq_block_linear(c, b, k, NULL, name, sizeof name, &rows, &cols);
      if (!example[0] || (b == c->n_layers - 1 && k == hq_block_nlinears(c, b) - 1))
        snprintf(example, sizeof example, "%s", name);
      const struct hq_lin_q q = hq_rules_resolve(rs, name, bits, group_size);
      if (q.rule >= 0) won[q.rule]++;
      for (int i = q.rule + 1; q.rule >= 0 && i < rs->n; i++)
        if (!first[i] && regexec(&rs->r[i].re, name, 0, NULL, 0) == 0)
          first[i] = xstrdup(name), by[i] = q.rule;
      rc = check_shape(rs, &q, name, rows, cols);
    }
  for (int i = 0; i < rs->n && !rc; i++)
    if (!won[i]) rc = no_effect(rs, i, first[i], by[i], example);
  for (int i = 0; i < rs->n; i++) free(first[i]);
  free(first), free(won), free(by);
  return rc;
}
