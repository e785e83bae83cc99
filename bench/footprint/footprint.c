/* One decision of setup B (bench/run.py), traced by valgrind's lackey to count what it
 * touches: instructions, distinct 64-byte lines and 4 KiB pages of code and data, and
 * calls to the allocator. Run by footprint.py; see its docstring. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zt_policy.h"

static unsigned char req[8192];
static size_t req_len;

static void put_u32(unsigned v) {
  memcpy(req + req_len, &v, 4);
  req_len += 4;
}

static void put_str(const char *s) {
  size_t n = strlen(s);
  put_u32((unsigned)n);
  memcpy(req + req_len, s, n);
  req_len += n;
}

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    exit(2);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  unsigned char *b = malloc((size_t)n + 1);
  if (fread(b, 1, (size_t)n, f) != (size_t)n) {
    perror(path);
    exit(2);
  }
  fclose(f);
  b[n] = 0;
  *len = (size_t)n;
  return b;
}

/* footprint POLICY JWKS|- CERT.der TOKEN_FILE   (- : a policy without a token section) */
int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: footprint POLICY JWKS|- CERT.der TOKEN_FILE\n");
    return 2;
  }
  size_t policy_len, jwks_len = 0, cert_len, token_len;
  unsigned char *policy = slurp(argv[1], &policy_len);
  unsigned char *jwks = strcmp(argv[2], "-") == 0 ? NULL : slurp(argv[2], &jwks_len);
  unsigned char *cert = slurp(argv[3], &cert_len);
  unsigned char *token = slurp(argv[4], &token_len);
  while (token_len && (token[token_len - 1] == '\n' || token[token_len - 1] == '\r')) token[--token_len] = 0;
  const char *body = "{\"model\":\"llama-3.1-8b-instruct\",\"max_tokens\":16,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
  static char auth[8192];
  snprintf(auth, sizeof auth, "Bearer %s", (const char *)token);

  req[req_len++] = 1;
  unsigned long long body_size = strlen(body);
  memcpy(req + req_len, &body_size, 8);
  req_len += 8;
  put_str("POST");
  put_str("https");
  put_str("ai.example.internal");
  put_str("/v1/chat/completions");
  put_str("");
  put_str("10.0.0.7");
  put_u32(5);
  put_str("Authorization");
  put_str(auth);
  put_str("Content-Type");
  put_str("application/json");
  put_str("User-Agent");
  put_str("OpenAI/Python 1.99.0");
  put_str("Accept");
  put_str("application/json");
  put_str("Host");
  put_str("ai.example.internal");

  ztp_engine *engine = NULL;
  ztp_buffer *message = NULL;
  if (ztp_engine_new(policy, policy_len, (const unsigned char *)"policy.toml", 11, &engine, &message) != ZTP_OK ||
      (jwks && ztp_engine_set_jwks(engine, jwks, jwks_len, &message) != ZTP_OK)) {
    size_t n = 0;
    const unsigned char *m = ztp_buffer_data(message, &n);
    fprintf(stderr, "engine: %.*s\n", (int)n, m ? (const char *)m : "");
    return 1;
  }
  unsigned char out[4096];
  size_t out_len = 0;
  /* Warm up: caches filled, token verified, buckets created. */
  for (int i = 0; i < 5; i++) {
    ztp_engine_decide(engine, req, req_len, cert, cert_len, (const unsigned char *)body, body_size, out,
                      sizeof out, &out_len);
  }
  /* The traced decision, between two markers on stderr, where lackey writes too. */
  write(2, "@@FOOTPRINT-START\n", 18);
  ztp_result r = ztp_engine_decide(engine, req, req_len, cert, cert_len, (const unsigned char *)body, body_size,
                                   out, sizeof out, &out_len);
  write(2, "@@FOOTPRINT-END\n", 16);
  unsigned status = r == ZTP_OK && out_len > 4 ? (unsigned)(out[2] | (out[3] << 8)) : 0;
  printf("status %u\n", status);
  ztp_engine_free(engine);
  return status == 200 ? 0 : 1;
}
