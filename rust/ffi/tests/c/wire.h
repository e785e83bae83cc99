/* The C side of the ABI's wire format, for the ABI test (abi_test.c) and the footprint
 * tool (bench/footprint/footprint.c): one encoder of requests and one reader of
 * decisions, little-endian whatever the host, every write bounds-checked, the layout
 * taken from the ZTP_REQUEST_* and ZTP_DECISION_* constants of zt_policy.h. */
#ifndef ZTP_WIRE_H
#define ZTP_WIRE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zt_policy.h"

/* A growable byte buffer. */
typedef struct {
  unsigned char *p;
  size_t len, cap;
} wire_buf;

static void wire_put(wire_buf *b, const void *d, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = (b->len + n) * 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p) { fprintf(stderr, "wire: out of memory\n"); exit(2); }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, d, n);
  b->len += n;
}

static void wire_u32(wire_buf *b, uint32_t v) {
  unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
  wire_put(b, x, 4);
}

static void wire_u64(wire_buf *b, uint64_t v) {
  unsigned char x[8];
  for (int i = 0; i < 8; i++) x[i] = (unsigned char)(v >> (8 * i));
  wire_put(b, x, 8);
}

static void wire_str(wire_buf *b, const char *s) {
  size_t n = strlen(s);
  wire_u32(b, (uint32_t)n);
  wire_put(b, s, n);
}

/* A request up to its header count; then wire_header `headers` times. */
static wire_buf wire_request(const char *method, const char *path, const char *remote_ip, uint64_t body_size,
                             uint32_t headers) {
  wire_buf b = {0};
  unsigned char version = ZTP_REQUEST_VERSION;
  wire_put(&b, &version, 1);
  wire_u64(&b, body_size);
  const char *fields[6] = {method, "https", "ai.example.internal", path, "", remote_ip};
  for (int i = 0; i < 6; i++) wire_str(&b, fields[i]);
  wire_u32(&b, headers);
  return b;
}

static void wire_header(wire_buf *b, const char *name, const char *value) {
  wire_str(b, name);
  wire_str(b, value);
}

/* What the tests read of an encoded decision. */
typedef struct {
  int ok, allowed;
  uint16_t status;
  uint8_t reason;
  char message[512];
  char rule[128];
  uint64_t lease; /* 0: none */
  char reserved[256];
} wire_decision;

static uint32_t wire_get_u32(const unsigned char *p) {
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Copies string `i` (of ZTP_DECISION_STRINGS) into `dst`; 0 when the encoding ends early. */
static int wire_string(const unsigned char *o, size_t len, int i, char *dst, size_t cap) {
  size_t at = ZTP_DECISION_AT_STRINGS;
  for (int k = 0;; k++) {
    if (at + 4 > len) return 0;
    uint32_t n = wire_get_u32(o + at);
    at += 4;
    if (n > len - at) return 0;
    if (k == i) {
      size_t c = n < cap - 1 ? n : cap - 1;
      memcpy(dst, o + at, c);
      dst[c] = 0;
      return 1;
    }
    at += n;
  }
}

static wire_decision wire_read_decision(const unsigned char *o, size_t len) {
  wire_decision d = {0};
  if (len < ZTP_DECISION_AT_STRINGS || o[0] != ZTP_DECISION_VERSION) return d;
  d.allowed = (o[ZTP_DECISION_AT_FLAGS] & ZTP_DECISION_ALLOWED) != 0;
  d.status = (uint16_t)(o[ZTP_DECISION_AT_STATUS] | o[ZTP_DECISION_AT_STATUS + 1] << 8);
  d.reason = o[ZTP_DECISION_AT_REASON];
  d.ok = wire_string(o, len, 0, d.message, sizeof d.message) && wire_string(o, len, 1, d.rule, sizeof d.rule) &&
         wire_string(o, len, 9, d.reserved, sizeof d.reserved);
  for (int i = 7; i >= 0; i--) d.lease = d.lease << 8 | o[ZTP_DECISION_AT_LEASE + i];
  if (((o[ZTP_DECISION_AT_FLAGS] & ZTP_DECISION_HAS_LEASE) != 0) != (d.lease != 0)) d.ok = 0;
  return d;
}

#endif
