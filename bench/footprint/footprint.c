/* One decision of setup B (bench/run.py), traced by valgrind's lackey to count what it
 * touches: instructions, distinct 64-byte lines and 4 KiB pages of code and data, and
 * calls to the allocator. Run by footprint.py; see its docstring. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wire.h" /* rust/ffi/tests/c: the codec the ABI test uses */

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

  size_t body_size = strlen(body);
  wire_buf req = wire_request("POST", "/v1/chat/completions", "10.0.0.7", body_size, 5);
  wire_header(&req, "Authorization", auth);
  wire_header(&req, "Content-Type", "application/json");
  wire_header(&req, "User-Agent", "OpenAI/Python 1.99.0");
  wire_header(&req, "Accept", "application/json");
  wire_header(&req, "Host", "ai.example.internal");

  ztp_engine_builder *builder = NULL;
  const ztp_engine *engine = NULL;
  ztp_buffer *message = NULL;
  if (ztp_engine_builder_new(policy, policy_len, (const unsigned char *)"policy.toml", 11, &builder, &message) != ZTP_OK ||
      ztp_engine_builder_build(builder, &engine) != ZTP_OK ||
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
    ztp_engine_decide(engine, req.p, req.len, cert, cert_len, (const unsigned char *)body, body_size, out,
                      sizeof out, &out_len);
  }
  /* The traced decision, between two markers on stderr, where lackey writes too. */
  write(2, "@@FOOTPRINT-START\n", 18);
  ztp_result r = ztp_engine_decide(engine, req.p, req.len, cert, cert_len, (const unsigned char *)body, body_size,
                                   out, sizeof out, &out_len);
  write(2, "@@FOOTPRINT-END\n", 16);
  wire_decision d = r == ZTP_OK ? wire_read_decision(out, out_len) : (wire_decision){0};
  unsigned status = d.ok ? d.status : 0;
  printf("status %u\n", status);
  free(req.p);
  ztp_engine_free(engine);
  return status == 200 ? 0 : 1;
}
