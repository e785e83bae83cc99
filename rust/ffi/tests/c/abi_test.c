/* Tests of the C ABI itself, as a C caller sees it: NULL pointers, garbage bytes, a
 * panic that must come back as ZTP_PANIC, buffers too small, reference counting, and
 * many create/decide/free cycles (run under valgrind by run.sh to find leaks).
 * Usage: abi_test CERT.der CYCLES. Closing line: "N passed, N failed". */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wire.h"

static int passed, failed;
#define CHECK(cond, what)                                              \
  do {                                                                 \
    if (cond) { passed++; }                                            \
    else { failed++; fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, what); } \
  } while (0)

static const char *POLICY =
    "[settings]\nrequire_identity = false\n"
    "[[rule]]\nname = \"chat\"\neffect = \"allow\"\nwhen = 'request.path == \"/v1/chat/completions\"'\n"
    "[[rule]]\nname = \"no-admin\"\neffect = \"deny\"\nwhen = 'request.path.startsWith(\"/admin\")'\n"
    "[[limit]]\nname = \"requests\"\nrate = \"1/h\"\nburst = 2\nkey = 'request.remote_ip'\n";

/* The requests the test sends, encoded by the shared codec (wire.h). */
typedef wire_buf buf;
typedef wire_decision decision;
static buf request(const char *method, const char *path, const char *ip, const char *hname, const char *hval) {
  buf b = wire_request(method, path, ip, 0, hname ? 1 : 0);
  if (hname) wire_header(&b, hname, hval);
  return b;
}

static ztp_engine_builder *new_builder(const char *policy) {
  ztp_engine_builder *b = NULL;
  ztp_buffer *msg = NULL;
  ztp_result r = ztp_engine_builder_new((const uint8_t *)policy, strlen(policy), (const uint8_t *)"t.toml", 6, &b, &msg);
  if (r != ZTP_OK) {
    size_t n = 0;
    const uint8_t *d = ztp_buffer_data(msg, &n);
    fprintf(stderr, "policy failed: %.*s\n", (int)n, d);
    ztp_buffer_free(msg);
    return NULL;
  }
  return b;
}

static const ztp_engine *new_engine(const char *policy) {
  ztp_engine_builder *b = new_builder(policy);
  const ztp_engine *e = NULL;
  if (!b || ztp_engine_builder_build(b, &e) != ZTP_OK) return NULL;
  return e;
}

static const char *BUDGET_POLICY =
    "[settings]\nrequire_identity = false\nidentity = 'request.remote_ip'\n"
    "[[rule]]\nname = \"chat\"\neffect = \"allow\"\nwhen = 'true'\n"
    "[[limit]]\nname = \"tokens\"\nrate = \"1000/d\"\nburst = 1000\ncost = 'llm.max_output_tokens'\nsettle = \"usage\"\n"
    "[[concurrency]]\nname = \"open\"\nmax = 1\n";

static decision decide_body(const ztp_engine *e, buf req, const char *body, ztp_result *res) {
  unsigned char out[4096];
  size_t out_len = 0;
  *res = ztp_engine_decide(e, req.p, req.len, NULL, 0, (const uint8_t *)body, strlen(body), out, sizeof out, &out_len);
  decision d = {0};
  if (*res == ZTP_OK) d = wire_read_decision(out, out_len);
  return d;
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static decision decide(const ztp_engine *e, buf req, const uint8_t *cert, size_t cert_len, ztp_result *res) {
  unsigned char out[4096];
  size_t out_len = 0;
  *res = ztp_engine_decide(e, req.p, req.len, cert, cert_len, (const uint8_t *)"", 0, out, sizeof out, &out_len);
  decision d = {0};
  if (*res == ZTP_OK) d = wire_read_decision(out, out_len);
  return d;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: abi_test CERT.der CYCLES\n"); return 2; }
  FILE *f = fopen(argv[1], "rb");
  if (!f) { perror(argv[1]); return 2; }
  unsigned char der[8192];
  size_t der_len = fread(der, 1, sizeof der, f);
  fclose(f);
  long cycles = atol(argv[2]);

  CHECK(ztp_version() != NULL && strlen(ztp_version()) > 0, "version");

  /* Every result describes itself. */
  CHECK(strstr(ztp_result_message(ZTP_PANIC), "panicked") != NULL, "result message");
  CHECK(strcmp(ztp_result_message(99), "unknown result") == 0, "unknown result message");
  CHECK(ztp_abi_version() == ZTP_ABI_VERSION, "ABI version");

  /* NULL parameters */
  ztp_engine_builder *b = NULL;
  const ztp_engine *e = NULL;
  CHECK(ztp_engine_builder_new(NULL, 10, NULL, 0, &b, NULL) == ZTP_NULL_PARAMETER, "new: NULL policy with a length");
  CHECK(ztp_engine_builder_new((const uint8_t *)"x", 1, NULL, 0, NULL, NULL) == ZTP_NULL_PARAMETER, "new: NULL builder_out");
  CHECK(b == NULL, "builder_out untouched on failure");
  CHECK(ztp_engine_builder_build(NULL, &e) == ZTP_NULL_PARAMETER && e == NULL, "build(NULL)");
  CHECK(ztp_engine_builder_inherit(NULL, NULL, NULL) == ZTP_NULL_PARAMETER, "inherit(NULL)");
  CHECK(ztp_engine_builder_set_token(NULL, NULL, 0, NULL, 0) == ZTP_NULL_PARAMETER, "set_token(NULL)");
  ztp_engine_builder_free(NULL);
  ztp_engine_free(NULL);
  ztp_buffer_free(NULL);
  CHECK(ztp_engine_clone(NULL) == NULL, "clone(NULL)");
  CHECK(ztp_buffer_data(NULL, NULL) == NULL, "buffer_data(NULL)");

  /* A broken policy is refused with a message naming the rule and line. */
  const char *broken = "[[rule]]\nname = \"oops\"\neffect = \"allow\"\nwhen = 'request.path =='\n";
  ztp_buffer *msg = NULL;
  CHECK(ztp_engine_builder_new((const uint8_t *)broken, strlen(broken), (const uint8_t *)"b.toml", 6, &b, &msg) == ZTP_INVALID_POLICY, "broken policy refused");
  size_t n = 0;
  const uint8_t *text = ztp_buffer_data(msg, &n);
  CHECK(text && n > 0 && strstr((const char *)text, "b.toml:4: rule \"oops\" when") != NULL, "message names file, line, rule");
  ztp_buffer_free(msg);
  CHECK(b == NULL, "no builder for a broken policy");
  unsigned char garbage[64];
  for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (unsigned char)(i * 37 + 200);
  msg = NULL;
  CHECK(ztp_engine_builder_new(garbage, sizeof garbage, NULL, 0, &b, &msg) == ZTP_INVALID_POLICY, "garbage bytes as policy");
  ztp_buffer_free(msg);

  /* set_store: NULLs, a bad URL (its message never shows the password), a bad mode. */
  CHECK(ztp_engine_builder_set_store(NULL, NULL, 0, NULL, 0, 50, ZTP_ON_FAILURE_LOCAL, NULL) == ZTP_NULL_PARAMETER, "set_store(NULL)");
  const char *one_rule = "[[rule]]\nname = \"all\"\neffect = \"allow\"\nwhen = 'true'\n";
  CHECK(ztp_engine_builder_new((const uint8_t *)one_rule, strlen(one_rule), NULL, 0, &b, NULL) == ZTP_OK, "builder for set_store");
  const char *bad_url = "http://user:hunter2@store:6379";
  msg = NULL;
  CHECK(ztp_engine_builder_set_store(b, (const uint8_t *)bad_url, strlen(bad_url), NULL, 0, 50, ZTP_ON_FAILURE_DENY, &msg) == ZTP_INVALID_CONFIG, "set_store: bad URL");
  text = ztp_buffer_data(msg, &n);
  CHECK(text && n > 0 && memmem(text, n, "scheme", 6) != NULL && memmem(text, n, "hunter2", 7) == NULL, "set_store message: why, no password");
  ztp_buffer_free(msg);
  const char *good_url = "redis://127.0.0.1:1/0";
  CHECK(ztp_engine_builder_set_store(b, (const uint8_t *)good_url, strlen(good_url), NULL, 0, 50, 7, NULL) == ZTP_INVALID_CONFIG, "set_store: bad mode");
  CHECK(ztp_engine_builder_set_store(b, (const uint8_t *)good_url, strlen(good_url), NULL, 0, 0, ZTP_ON_FAILURE_LOCAL, NULL) == ZTP_INVALID_CONFIG, "set_store: zero timeout");
  CHECK(ztp_engine_builder_set_store(b, (const uint8_t *)good_url, strlen(good_url), NULL, 0, 50, ZTP_ON_FAILURE_LOCAL, NULL) == ZTP_OK, "set_store: nothing is connected here");
  ztp_engine_builder_free(b);
  b = NULL;

  e = new_engine(POLICY);
  CHECK(e != NULL, "engine built");
  if (!e) goto done;

  /* decide: NULLs, garbage, an invalid certificate, non-UTF-8, a small buffer. */
  buf ok = request("POST", "/v1/chat/completions", "10.0.0.1", "Content-Type", "application/json");
  unsigned char out[4096];
  size_t out_len = 12345;
  CHECK(ztp_engine_decide(NULL, ok.p, ok.len, NULL, 0, NULL, 0, out, sizeof out, &out_len) == ZTP_NULL_PARAMETER, "decide: NULL engine");
  CHECK(ztp_engine_decide(e, ok.p, ok.len, NULL, 0, NULL, 0, NULL, 0, &out_len) == ZTP_NULL_PARAMETER, "decide: NULL out");
  CHECK(ztp_engine_decide(e, NULL, 5, NULL, 0, NULL, 0, out, sizeof out, &out_len) == ZTP_NULL_PARAMETER, "decide: NULL request with a length");
  CHECK(out_len == 12345, "out_len untouched on failure");
  CHECK(ztp_engine_decide(e, ok.p, ok.len, NULL, 0, NULL, 0, out, 8, &out_len) == ZTP_BUFFER_TOO_SMALL, "decide: small buffer");
  CHECK(out_len == 12345, "out_len untouched when the buffer is small");
  for (size_t cut = 0; cut < ok.len; cut++) {
    ztp_result r = ztp_engine_decide(e, ok.p, cut, NULL, 0, NULL, 0, out, sizeof out, &out_len);
    if (r != ZTP_INVALID_INPUT) { CHECK(0, "truncated request must be ZTP_INVALID_INPUT"); break; }
  }
  passed++;
  unsigned int seed = 12345;
  int allowed_garbage = 0;
  for (int i = 0; i < 2000; i++) {
    unsigned char g[96];
    for (size_t j = 0; j < sizeof g; j++) { seed = seed * 1103515245 + 12345; g[j] = seed >> 16; }
    g[0] = 1; /* right version byte, garbage after it */
    ztp_result r = ztp_engine_decide(e, g, sizeof g, NULL, 0, NULL, 0, out, sizeof out, &out_len);
    if (r == ZTP_OK && (out[ZTP_DECISION_AT_FLAGS] & ZTP_DECISION_ALLOWED)) allowed_garbage++;
    if (r != ZTP_OK && r != ZTP_INVALID_INPUT) allowed_garbage += 1000;
  }
  CHECK(allowed_garbage == 0, "garbage requests never pass");

  ztp_result res;
  decision d = decide(e, ok, der, der_len, &res);
  CHECK(res == ZTP_OK && d.allowed && d.status == 200 && strcmp(d.rule, "chat") == 0, "allowed with a valid certificate");
  d = decide(e, ok, (const uint8_t *)"\x30\x82garbage", 9, &res);
  CHECK(res == ZTP_OK && !d.allowed && d.status == 401 && d.reason == ZTP_REASON_INVALID_CERTIFICATE, "garbage certificate is 401");
  CHECK(strstr(d.message, "client certificate") != NULL, "401 message names the certificate");
  buf admin = request("GET", "/admin/x", "10.0.0.2", NULL, NULL);
  d = decide(e, admin, NULL, 0, &res);
  CHECK(res == ZTP_OK && d.status == 403 && strcmp(d.rule, "no-admin") == 0, "deny rule names itself");
  buf bad_utf8 = request("GET", "/v1/chat/completions", "10.0.0.3", "X-Name", "caf\xe9");
  d = decide(e, bad_utf8, NULL, 0, &res);
  CHECK(res == ZTP_OK && d.status == 400 && d.reason == ZTP_REASON_BAD_REQUEST, "non-UTF-8 header is 400");
  buf limited = request("POST", "/v1/chat/completions", "10.9.9.9", NULL, NULL);
  decide(e, limited, NULL, 0, &res);
  decide(e, limited, NULL, 0, &res);
  d = decide(e, limited, NULL, 0, &res);
  CHECK(res == ZTP_OK && d.status == 429 && d.reason == ZTP_REASON_RATE_LIMITED, "third request is 429");

  /* A panic comes back as ZTP_PANIC, and the library keeps working. */
  CHECK(ztp_selftest_panic() == ZTP_PANIC, "panic is caught at the boundary");
  d = decide(e, admin, NULL, 0, &res);
  CHECK(res == ZTP_OK && d.status == 403, "engine still answers after a panic");

  /* JWKS */
  msg = NULL;
  CHECK(ztp_engine_set_jwks(e, (const uint8_t *)"{}", 2, &msg) == ZTP_INVALID_JWKS, "policy without [token] takes no JWKS");
  ztp_buffer_free(msg);

  /* Reference counting and reload inheritance (by the builder of the next engine). */
  ztp_engine_builder *nb = new_builder(POLICY);
  size_t kept = 99;
  CHECK(ztp_engine_builder_inherit(nb, e, &kept) == ZTP_OK && kept == 1, "reload keeps the unchanged limit");
  CHECK(ztp_engine_builder_set_token(nb, (const uint8_t *)"https://idp.example", 19, (const uint8_t *)"a\nb", 3) == ZTP_OK, "token issuer set");
  const ztp_engine *next = NULL;
  CHECK(ztp_engine_builder_build(nb, &next) == ZTP_OK && next != NULL, "built");
  d = decide(next, limited, NULL, 0, &res);
  CHECK(d.status == 429, "the bucket came along");
  const ztp_engine *again = ztp_engine_clone(next);
  CHECK(again == next, "clone is the same engine");
  ztp_engine_free(again);
  ztp_engine_builder *unused = new_builder(POLICY);
  ztp_engine_builder_free(unused); /* a builder never built is freed (valgrind checks) */
  ztp_engine_free(e);
  d = decide(next, limited, NULL, 0, &res);
  CHECK(res == ZTP_OK && d.status == 429, "buckets outlive the engine they came from");
  ztp_engine_free(next);

  /* Leases: a reservation settled to usage, encoded as the header says; each lease ends
   * once; the cap's one slot comes back with it; a lease never ended is freed with its
   * engine (valgrind). */
  const ztp_engine *be = new_engine(BUDGET_POLICY);
  CHECK(be != NULL, "budget engine built");
  buf chat = request("POST", "/v1/chat/completions", "10.1.1.1", "Content-Type", "application/json");
  const char *body = "{\"max_tokens\":100}";
  decision l = decide_body(be, chat, body, &res);
  CHECK(res == ZTP_OK && l.ok && l.allowed && l.lease != 0 && strcmp(l.reserved, "tokens=100") == 0, "a lease with its reservation");
  decision full = decide_body(be, chat, body, &res);
  CHECK(full.status == 429 && full.reason == ZTP_REASON_CONCURRENCY_LIMIT && full.lease == 0, "the cap's one slot is taken");
  unsigned char so[256];
  size_t so_len = 0;
  CHECK(ztp_engine_settle(be, l.lease, ZTP_ENDING_USAGE, 10, 20, ZTP_USAGE_ABSENT, so, 8, &so_len) == ZTP_BUFFER_TOO_SMALL,
        "settle: small buffer (the lease ends anyway)");
  l = decide_body(be, chat, body, &res);
  CHECK(l.allowed && l.lease != 0, "the slot came back");
  CHECK(ztp_engine_settle(be, l.lease, 7, 0, 0, 0, so, sizeof so, &so_len) == ZTP_INVALID_INPUT, "settle: unknown ending");
  CHECK(ztp_engine_settle(be, l.lease, ZTP_ENDING_USAGE, 10, 20, ZTP_USAGE_ABSENT, so, sizeof so, &so_len) == ZTP_OK, "settled");
  /* u32 count, string name, u8 rule, u64 reserved, used, charged, unbilled */
  CHECK(so_len == 4 + 4 + 6 + 1 + 32 && wire_get_u32(so) == 1 && memcmp(so + 8, "tokens", 6) == 0 &&
        so[14] == ZTP_SETTLE_USAGE && get_u64(so + 15) == 100 && get_u64(so + 23) == 30 && get_u64(so + 31) == 30 &&
        get_u64(so + 39) == 0, "the settlement's encoding");
  CHECK(ztp_engine_settle(be, l.lease, ZTP_ENDING_KEEP, 0, 0, 0, so, sizeof so, &so_len) == ZTP_UNKNOWN_LEASE, "a lease ends once");
  CHECK(ztp_engine_settle(NULL, 1, ZTP_ENDING_KEEP, 0, 0, 0, so, sizeof so, &so_len) == ZTP_NULL_PARAMETER, "settle(NULL)");
  l = decide_body(be, chat, body, &res);
  CHECK(l.allowed && l.lease != 0, "left open: freed with the engine");
  ztp_engine_free(be);
  free(chat.p);

  /* Many create/decide/free cycles: valgrind (run.sh) reports any leak. */
  int cycle_failures = 0;
  for (long i = 0; i < cycles; i++) {
    const ztp_engine *c = new_engine(POLICY);
    if (!c) { cycle_failures++; break; }
    const ztp_engine *c2 = ztp_engine_clone(c);
    decision x = decide(c2, ok, der, der_len, &res);
    if (res != ZTP_OK || !x.allowed) cycle_failures++;
    ztp_buffer *desc = NULL;
    if (ztp_engine_describe(c, &desc) != ZTP_OK) cycle_failures++;
    ztp_buffer_free(desc);
    ztp_engine_free(c2);
    ztp_engine_free(c);
  }
  CHECK(cycle_failures == 0, "create/decide/free cycles");

  free(ok.p); free(admin.p); free(bad_utf8.p); free(limited.p);
done:
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
