/*
 * libkeylessd-pkcs11.so: a PKCS#11 v2.40 module whose token holds the keys a keylessd edge
 * agent may use. No private key is ever here: C_Sign and C_Decrypt become keyless.v1
 * requests sent to the agent over a Unix socket (4-byte big-endian length, then one
 * protobuf Request; the answer is framed the same way and carries one Response).
 *
 * Design rules (docs/edge.md explains them for operators):
 *  - Process-global state behind one mutex; socket I/O happens outside it, each call on a
 *    connection of its own (taken from a small free list), so threads run in parallel.
 *  - fork(): nginx loads keys in its master and signs in forked workers. Object handles are
 *    derived from the key's SKI, so they are the same in every process and across
 *    C_Finalize/C_Initialize; connections are per process (a pid change drops them);
 *    pthread_atfork keeps the mutexes consistent in the child.
 *  - Never hang: every socket step has a deadline (timeout_ms); no answer = CKR_DEVICE_ERROR.
 *  - The key list comes from the agent (ListKeys), cached for keys_ttl_ms.
 *
 * Settings: environment variables, else a config file (KEYLESSD_PKCS11_CONF, default
 * /etc/keylessd/pkcs11.conf, lines `name = value`):
 *   KEYLESSD_PKCS11_SOCKET       socket       (default /run/keylessd-agent/agent.sock)
 *   KEYLESSD_PKCS11_TIMEOUT_MS   timeout_ms   (default 2000)
 *   KEYLESSD_PKCS11_TOKEN_LABEL  token_label  (default keylessd)
 *   KEYLESSD_PKCS11_KEYS_TTL_MS  keys_ttl_ms  (default 5000)
 *   KEYLESSD_PKCS11_DEBUG        debug        (1: one line per failure on stderr; no secrets)
 */
#define _GNU_SOURCE
#define CRYPTOKI_COMPAT 1
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "pkcs11.h"

#define EXPORT __attribute__((visibility("default")))
#define MAX_SESSIONS 4096
#define MAX_IDLE_CONNECTIONS 32
#define MAX_FRAME (1u << 20)

/* keyless.v1 enum values (proto/keyless.proto). */
enum {
  ALG_RSA_PKCS1_SHA256 = 1, ALG_RSA_PKCS1_SHA384 = 2, ALG_RSA_PKCS1_SHA512 = 3, ALG_RSA_PKCS1_SHA1 = 4,
  ALG_RSA_PKCS1_MD5_SHA1 = 5, ALG_RSA_PSS_SHA256 = 6, ALG_RSA_PSS_SHA384 = 7, ALG_RSA_PSS_SHA512 = 8,
  ALG_ECDSA_SHA256 = 9, ALG_ECDSA_SHA384 = 10, ALG_ECDSA_SHA512 = 11, ALG_ECDSA_SHA1 = 12
};
enum { PAD_RSA_RAW = 1, PAD_RSA_OAEP_SHA256 = 2 };
enum {
  ERR_BAD_REQUEST = 1, ERR_KEY_NOT_FOUND = 2, ERR_FORBIDDEN = 3, ERR_UNSUPPORTED = 4, ERR_CRYPTO_FAILURE = 5
};
enum { KT_RSA = 1, KT_EC = 2 };

typedef struct {
  char label[128];
  unsigned char ski[20];
  int type;
  unsigned long bits;
  int decrypt;
  unsigned char *spki; size_t spki_len;
  unsigned char *modulus; size_t modulus_len;
  unsigned char *exponent; size_t exponent_len;
  unsigned char *ec_params; size_t ec_params_len;
  unsigned char *ec_point; size_t ec_point_len; /* DER OCTET STRING */
  size_t field_len;                             /* EC: bytes of r and of s */
  CK_OBJECT_HANDLE handle;                      /* private key; public key = handle + 1 */
} key_entry;

typedef struct {
  unsigned char ski[20];
  int type;
  size_t out_len; /* RSA: modulus bytes; EC: 2 * field_len */
  size_t field_len;
} key_ref;

typedef struct {
  int used;
  CK_FLAGS flags;
  int find_active;
  CK_OBJECT_HANDLE *found; size_t nfound, pos;
  int sign_active;
  CK_MECHANISM_TYPE sign_mech; int pss_alg; size_t pss_hash_len;
  key_ref sign_key;
  unsigned char sign_buf[512]; size_t sign_buf_len; int sign_multipart;
  int decrypt_active;
  CK_MECHANISM_TYPE decrypt_mech;
  key_ref decrypt_key;
  unsigned char *decrypt_result; size_t decrypt_result_len; int decrypt_done;
} session_state;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_conn_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
static int g_initialized;
static pid_t g_pid;
static int g_configured;
static char g_socket[sizeof(((struct sockaddr_un *)0)->sun_path)] = "/run/keylessd-agent/agent.sock";
static long g_timeout_ms = 2000;
static long g_keys_ttl_ms = 5000;
static char g_token_label[33] = "keylessd";
static int g_debug;
static key_entry *g_keys; static size_t g_nkeys;
static int64_t g_keys_fetched_ms = -1; /* -1: never fetched */
static int64_t g_keys_attempt_ms = -1;
static session_state g_sessions[MAX_SESSIONS];
static int g_idle[MAX_IDLE_CONNECTIONS]; static int g_nidle; static pid_t g_idle_pid;
static uint64_t g_next_id = 1;

static void debug(const char *fmt, ...) {
  if (!g_debug) return;
  va_list ap; va_start(ap, fmt);
  fprintf(stderr, "keylessd-pkcs11[%d]: ", (int)getpid());
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static int64_t now_ms(void) {
  struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void lock(void) { pthread_mutex_lock(&g_lock); }
static void unlock(void) { pthread_mutex_unlock(&g_lock); }

static void atfork_prepare(void) { pthread_mutex_lock(&g_lock); pthread_mutex_lock(&g_conn_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&g_conn_lock); pthread_mutex_unlock(&g_lock); }
static void atfork_child(void) { pthread_mutex_unlock(&g_conn_lock); pthread_mutex_unlock(&g_lock); }
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

static void pad_copy(CK_UTF8CHAR *dst, size_t n, const char *src) {
  size_t len = strlen(src);
  memset(dst, ' ', n);
  memcpy(dst, src, len < n ? len : n);
}

/* ---------- settings ---------- */

static void apply_setting(const char *name, const char *value) {
  if (!strcmp(name, "socket")) { if (strlen(value) < sizeof g_socket) strcpy(g_socket, value); }
  else if (!strcmp(name, "timeout_ms")) { long v = atol(value); if (v > 0) g_timeout_ms = v; }
  else if (!strcmp(name, "keys_ttl_ms")) { long v = atol(value); if (v >= 0) g_keys_ttl_ms = v; }
  else if (!strcmp(name, "token_label")) { snprintf(g_token_label, sizeof g_token_label, "%s", value); }
  else if (!strcmp(name, "debug")) { g_debug = atoi(value) != 0; }
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = 0;
  return s;
}

/* Read once per process image: nginx workers run with a cleared environment, so the
   values the master saw at its first C_Initialize stay in force after fork. */
static void load_settings(void) {
  if (g_configured) return;
  g_configured = 1;
  const char *conf = getenv("KEYLESSD_PKCS11_CONF");
  FILE *f = fopen(conf ? conf : "/etc/keylessd/pkcs11.conf", "r");
  if (f) {
    char line[1024];
    while (fgets(line, sizeof line, f)) {
      char *s = trim(line);
      if (*s == '#' || *s == 0) continue;
      char *eq = strchr(s, '=');
      if (!eq) continue;
      *eq = 0;
      apply_setting(trim(s), trim(eq + 1));
    }
    fclose(f);
  }
  static const char *env[][2] = {
    {"KEYLESSD_PKCS11_SOCKET", "socket"}, {"KEYLESSD_PKCS11_TIMEOUT_MS", "timeout_ms"},
    {"KEYLESSD_PKCS11_KEYS_TTL_MS", "keys_ttl_ms"}, {"KEYLESSD_PKCS11_TOKEN_LABEL", "token_label"},
    {"KEYLESSD_PKCS11_DEBUG", "debug"},
  };
  for (size_t i = 0; i < sizeof env / sizeof env[0]; i++) {
    const char *v = getenv(env[i][0]);
    if (v) apply_setting(env[i][1], v);
  }
}

/* ---------- protobuf (just the keyless.v1 messages used here) ---------- */

typedef struct { unsigned char *p; size_t len, cap; int failed; } buf;

static void buf_put(buf *b, const void *data, size_t n) {
  if (b->failed) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n) cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p) { b->failed = 1; return; }
    b->p = p; b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
}
static void put_varint(buf *b, uint64_t v) {
  unsigned char tmp[10]; size_t n = 0;
  do { tmp[n] = (unsigned char)(v & 0x7f); v >>= 7; if (v) tmp[n] |= 0x80; n++; } while (v);
  buf_put(b, tmp, n);
}
static void put_tag(buf *b, unsigned field, unsigned wire) { put_varint(b, ((uint64_t)field << 3) | wire); }
static void put_bytes(buf *b, unsigned field, const void *data, size_t n) { put_tag(b, field, 2); put_varint(b, n); buf_put(b, data, n); }
static void put_uint(buf *b, unsigned field, uint64_t v) { put_tag(b, field, 0); put_varint(b, v); }

typedef struct { const unsigned char *p, *end; } reader;
typedef struct { unsigned field, wire; uint64_t v; const unsigned char *data; size_t len; } pb_field;

/* 1: a field was read; 0: end; -1: malformed. */
static int pb_next(reader *r, pb_field *f) {
  if (r->p >= r->end) return 0;
  uint64_t key = 0; int shift = 0;
  for (;;) {
    if (r->p >= r->end || shift > 63) return -1;
    unsigned char c = *r->p++;
    key |= (uint64_t)(c & 0x7f) << shift; shift += 7;
    if (!(c & 0x80)) break;
  }
  f->field = (unsigned)(key >> 3); f->wire = (unsigned)(key & 7);
  f->data = NULL; f->len = 0; f->v = 0;
  switch (f->wire) {
    case 0: shift = 0;
      for (;;) {
        if (r->p >= r->end || shift > 63) return -1;
        unsigned char c = *r->p++;
        f->v |= (uint64_t)(c & 0x7f) << shift; shift += 7;
        if (!(c & 0x80)) break;
      }
      return 1;
    case 1: if (r->end - r->p < 8) return -1; r->p += 8; return 1;
    case 5: if (r->end - r->p < 4) return -1; r->p += 4; return 1;
    case 2: {
      uint64_t n = 0; shift = 0;
      for (;;) {
        if (r->p >= r->end || shift > 63) return -1;
        unsigned char c = *r->p++;
        n |= (uint64_t)(c & 0x7f) << shift; shift += 7;
        if (!(c & 0x80)) break;
      }
      if (n > (uint64_t)(r->end - r->p)) return -1;
      f->data = r->p; f->len = (size_t)n; r->p += n;
      return 1;
    }
    default: return -1;
  }
}

/* ---------- DER ---------- */

/* Reads one TLV at *p (< end). Returns 0 on success with tag, content and the whole TLV. */
static int der_read(const unsigned char **p, const unsigned char *end, unsigned *tag, const unsigned char **content, size_t *len, const unsigned char **whole, size_t *whole_len) {
  const unsigned char *s = *p;
  if (end - s < 2) return -1;
  *tag = s[0];
  size_t n = s[1], off = 2;
  if (n & 0x80) {
    size_t k = n & 0x7f;
    if (k == 0 || k > 3 || (size_t)(end - s) < 2 + k) return -1;
    n = 0;
    for (size_t i = 0; i < k; i++) n = (n << 8) | s[2 + i];
    off = 2 + k;
  }
  if ((size_t)(end - s) - off < n) return -1;
  *content = s + off; *len = n;
  if (whole) { *whole = s; *whole_len = off + n; }
  *p = s + off + n;
  return 0;
}

static unsigned char *dup_bytes(const unsigned char *p, size_t n) {
  unsigned char *d = malloc(n ? n : 1);
  if (d && n) memcpy(d, p, n);
  return d;
}

static void free_key(key_entry *k) {
  free(k->spki); free(k->modulus); free(k->exponent); free(k->ec_params); free(k->ec_point);
  memset(k, 0, sizeof *k);
}

/* Fills the public parts of `k` from its DER SubjectPublicKeyInfo. */
static int parse_spki(key_entry *k) {
  const unsigned char *p = k->spki, *end = k->spki + k->spki_len, *c, *w; size_t n, wn; unsigned tag;
  if (der_read(&p, end, &tag, &c, &n, NULL, NULL) || tag != 0x30) return -1;
  const unsigned char *q = c, *qend = c + n;
  const unsigned char *alg, *algend; size_t algn;
  if (der_read(&q, qend, &tag, &alg, &algn, NULL, NULL) || tag != 0x30) return -1;
  algend = alg + algn;
  const unsigned char *bits; size_t bitsn;
  if (der_read(&q, qend, &tag, &bits, &bitsn, NULL, NULL) || tag != 0x03 || bitsn < 2 || bits[0] != 0) return -1;
  bits++; bitsn--;
  const unsigned char *oid; size_t oidn;
  if (der_read(&alg, algend, &tag, &oid, &oidn, NULL, NULL) || tag != 0x06) return -1;
  static const unsigned char rsa_oid[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01};
  static const unsigned char ec_oid[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
  if (oidn == sizeof rsa_oid && !memcmp(oid, rsa_oid, oidn)) {
    const unsigned char *r = bits, *rend = bits + bitsn, *seq, *nn, *ee; size_t seqn, nnn, een;
    if (der_read(&r, rend, &tag, &seq, &seqn, NULL, NULL) || tag != 0x30) return -1;
    const unsigned char *s = seq, *send = seq + seqn;
    if (der_read(&s, send, &tag, &nn, &nnn, NULL, NULL) || tag != 0x02) return -1;
    if (der_read(&s, send, &tag, &ee, &een, NULL, NULL) || tag != 0x02) return -1;
    while (nnn > 1 && nn[0] == 0) { nn++; nnn--; }
    while (een > 1 && ee[0] == 0) { ee++; een--; }
    k->type = KT_RSA;
    k->modulus = dup_bytes(nn, nnn); k->modulus_len = nnn;
    k->exponent = dup_bytes(ee, een); k->exponent_len = een;
    k->bits = nnn * 8;
    return k->modulus && k->exponent ? 0 : -1;
  }
  if (oidn == sizeof ec_oid && !memcmp(oid, ec_oid, oidn)) {
    if (der_read(&alg, algend, &tag, &c, &n, &w, &wn) || tag != 0x06) return -1;
    if (bitsn < 3 || bits[0] != 0x04 || (bitsn - 1) % 2) return -1;
    k->type = KT_EC;
    k->ec_params = dup_bytes(w, wn); k->ec_params_len = wn;
    k->field_len = (bitsn - 1) / 2;
    unsigned char hdr[4]; size_t h = 0;
    hdr[h++] = 0x04;
    if (bitsn < 128) hdr[h++] = (unsigned char)bitsn; else { hdr[h++] = 0x81; hdr[h++] = (unsigned char)bitsn; }
    k->ec_point = malloc(h + bitsn);
    if (!k->ec_params || !k->ec_point) return -1;
    memcpy(k->ec_point, hdr, h); memcpy(k->ec_point + h, bits, bitsn);
    k->ec_point_len = h + bitsn;
    k->bits = k->field_len == 66 ? 521 : k->field_len * 8;
    return 0;
  }
  return -1; /* Ed25519 and others: not offered through PKCS#11 (docs/edge.md) */
}

static CK_OBJECT_HANDLE handle_for_ski(const unsigned char *ski) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < 20; i++) { h ^= ski[i]; h *= 16777619u; }
  return ((CK_OBJECT_HANDLE)(h % 0x3ffffffeu) + 1) * 2; /* even, non-zero; public key = +1 */
}

/* ---------- the agent connection ---------- */

static int wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) return -1;
    struct pollfd pfd = {fd, events, 0};
    int rc = poll(&pfd, 1, (int)left);
    if (rc > 0) return 0;
    if (rc < 0 && errno != EINTR) return -1;
  }
}

static void drop_idle_if_forked(void) {
  if (g_idle_pid != getpid()) {
    /* Inherited from the parent: close our copies; the parent's stay open. */
    for (int i = 0; i < g_nidle; i++) close(g_idle[i]);
    g_nidle = 0;
    g_idle_pid = getpid();
  }
}

static int take_connection(int64_t deadline) {
  pthread_mutex_lock(&g_conn_lock);
  drop_idle_if_forked();
  int fd = g_nidle > 0 ? g_idle[--g_nidle] : -1;
  char path[sizeof g_socket];
  memcpy(path, g_socket, sizeof path);
  pthread_mutex_unlock(&g_conn_lock);
  if (fd >= 0) return fd;
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path, sizeof addr.sun_path);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN) { debug("cannot connect to the agent at %s: %s", path, strerror(errno)); close(fd); return -1; }
    if (wait_fd(fd, POLLOUT, deadline)) { debug("connecting to the agent at %s timed out", path); close(fd); return -1; }
    int err = 0; socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) { debug("cannot connect to the agent at %s: %s", path, strerror(err)); close(fd); return -1; }
  }
  return fd;
}

static void give_back(int fd) {
  pthread_mutex_lock(&g_conn_lock);
  drop_idle_if_forked();
  if (g_nidle < MAX_IDLE_CONNECTIONS) { g_idle[g_nidle++] = fd; fd = -1; }
  pthread_mutex_unlock(&g_conn_lock);
  if (fd >= 0) close(fd);
}

static void drop_all_connections(void) {
  pthread_mutex_lock(&g_conn_lock);
  /* In a forked child these are copies of the parent's descriptors: closing ours leaves the
     parent's connections alone, and the child never shares a stream with its parent. */
  for (int i = 0; i < g_nidle; i++) close(g_idle[i]);
  g_nidle = 0; g_idle_pid = getpid();
  pthread_mutex_unlock(&g_conn_lock);
}

static int write_all(int fd, const unsigned char *p, size_t n, int64_t deadline) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) { p += w; n -= (size_t)w; continue; }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { if (wait_fd(fd, POLLOUT, deadline)) return -1; continue; }
    return -1;
  }
  return 0;
}

static int read_all(int fd, unsigned char *p, size_t n, int64_t deadline) {
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r > 0) { p += r; n -= (size_t)r; continue; }
    if (r == 0) return -1;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) { if (wait_fd(fd, POLLIN, deadline)) return -1; continue; }
    return -1;
  }
  return 0;
}

/*
 * Reads one answer frame: poll first (the agent never answers within our send, so a recv
 * straight away would only return EAGAIN), then one recv that usually brings the whole frame.
 * 0: *frame (malloc'd) holds n bytes. -1: nothing (or not even the 4-byte length) arrived
 * before the deadline or the peer closed: the caller may retry on a fresh connection.
 * -2: a broken or oversized frame, or a late failure: do not retry.
 */
static int read_frame(int fd, unsigned char **frame, size_t *frame_len, int64_t deadline) {
  unsigned char first[2048]; size_t have = 0;
  while (have < 4) {
    if (wait_fd(fd, POLLIN, deadline)) return -1;
    ssize_t r = recv(fd, first + have, sizeof first - have, 0);
    if (r > 0) { have += (size_t)r; continue; }
    if (r == 0) return -1;
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
    return -1;
  }
  uint32_t n = ((uint32_t)first[0] << 24) | ((uint32_t)first[1] << 16) | ((uint32_t)first[2] << 8) | first[3];
  if (n > MAX_FRAME) { debug("the agent sent a frame of %u bytes", n); return -2; }
  /* One request at a time per connection: anything past this frame is a broken stream. */
  if (have - 4 > n) { debug("the agent sent more than one answer"); return -2; }
  unsigned char *f = malloc(n ? n : 1);
  if (!f) return -2;
  memcpy(f, first + 4, have - 4);
  explicit_bzero(first, have); /* a decryption's answer must not linger on the stack */
  if (read_all(fd, f + (have - 4), n - (have - 4), deadline) != 0) { free(f); debug("no answer from the agent within %ld ms", g_timeout_ms); return -2; }
  *frame = f; *frame_len = n;
  return 0;
}

typedef struct {
  int kind;              /* 0 none, 3 signature, 4 plaintext, 5 keys, 15 error */
  const unsigned char *data; size_t len; /* signature / plaintext / KeyList bytes */
  uint64_t error_code;
  unsigned char *frame;  /* owns the bytes above */
  size_t frame_len;
} response;

static uint64_t new_id(void) {
  lock();
  uint64_t id = g_next_id++;
  unlock();
  return id;
}

/* Sends one Request (op_field, op bytes) and reads its Response. CKR_OK, or CKR_DEVICE_ERROR
   when the agent cannot be reached or does not answer within timeout_ms. */
static CK_RV call_agent(unsigned op_field, const buf *op, response *out) {
  memset(out, 0, sizeof *out);
  int64_t deadline = now_ms() + g_timeout_ms;
  uint64_t id = new_id();
  buf req = {0};
  unsigned char hdr[4] = {0};
  buf_put(&req, hdr, 4);
  put_uint(&req, 1, id);
  put_bytes(&req, op_field, op->p ? op->p : (const unsigned char *)"", op->len);
  if (req.failed) { free(req.p); return CKR_HOST_MEMORY; }
  size_t body = req.len - 4;
  req.p[0] = (unsigned char)(body >> 24); req.p[1] = (unsigned char)(body >> 16); req.p[2] = (unsigned char)(body >> 8); req.p[3] = (unsigned char)body;
  int fd = take_connection(deadline);
  if (fd < 0) { free(req.p); return CKR_DEVICE_ERROR; }
  /* An idle connection may have been closed by a restarted agent: one fresh retry. */
  for (int attempt = 0;; attempt++) {
    /* One send of the whole frame (length and body together), one poll, usually one recv. */
    int got = write_all(fd, req.p, req.len, deadline) == 0 ? read_frame(fd, &out->frame, &out->frame_len, deadline) : -1;
    if (got == -2) { close(fd); free(req.p); return CKR_DEVICE_ERROR; }
    if (got == 0) {
      size_t n = out->frame_len;
      free(req.p);
      reader r = {out->frame, out->frame + n};
      pb_field f; int rc; uint64_t got_id = 0;
      while ((rc = pb_next(&r, &f)) > 0) {
        if (f.field == 1 && f.wire == 0) got_id = f.v;
        else if ((f.field == 3 || f.field == 4 || f.field == 5) && f.wire == 2) { out->kind = (int)f.field; out->data = f.data; out->len = f.len; }
        else if (f.field == 15 && f.wire == 2) {
          out->kind = 15;
          reader e = {f.data, f.data + f.len}; pb_field ef;
          while (pb_next(&e, &ef) > 0) if (ef.field == 1 && ef.wire == 0) out->error_code = ef.v;
        }
      }
      if (rc < 0 || got_id != id) { close(fd); free(out->frame); out->frame = NULL; debug("the agent sent an answer that does not decode or has the wrong id"); return CKR_DEVICE_ERROR; }
      give_back(fd);
      return CKR_OK;
    }
    close(fd);
    if (attempt > 0 || now_ms() >= deadline) break;
    fd = take_connection(deadline);
    if (fd < 0) break;
  }
  free(req.p);
  debug("the agent at %s did not answer", g_socket);
  return CKR_DEVICE_ERROR;
}

static void response_free(response *r) { free(r->frame); r->frame = NULL; }

/* ---------- key list ---------- */

static void free_keys(key_entry *keys, size_t n) {
  for (size_t i = 0; i < n; i++) free_key(&keys[i]);
  free(keys);
}

/*
 * CKA_DECRYPT (and what C_Decrypt offers) follows the agent's `decrypt_allowed` field. The agent
 * decides what that field means for the module (src/edge/agent.ts, moduleKeyInfo): raw RSA
 * decryption, the only kind TLS 1.2 RSA key exchange can use.
 */
static int parse_key_info(const unsigned char *p, size_t n, key_entry *k) {
  memset(k, 0, sizeof *k);
  reader r = {p, p + n}; pb_field f; int rc, have_ski = 0;
  while ((rc = pb_next(&r, &f)) > 0) {
    if (f.field == 1 && f.wire == 2) { size_t l = f.len < sizeof k->label - 1 ? f.len : sizeof k->label - 1; memcpy(k->label, f.data, l); k->label[l] = 0; }
    else if (f.field == 2 && f.wire == 2 && f.len == 20) { memcpy(k->ski, f.data, 20); have_ski = 1; }
    else if (f.field == 4 && f.wire == 2) { free(k->spki); k->spki = dup_bytes(f.data, f.len); k->spki_len = f.len; }
    else if (f.field == 10 && f.wire == 0) k->decrypt = f.v != 0;
  }
  if (rc < 0 || !have_ski || !k->spki || parse_spki(k) != 0) { free_key(k); return -1; }
  k->handle = handle_for_ski(k->ski);
  return 0;
}

/* Asks the agent for the key list when the cached one is older than keys_ttl_ms (or `force`).
   A failed refresh keeps the old list, so a restarting agent does not make objects vanish. */
static void refresh_keys(int force) {
  lock();
  int64_t now = now_ms();
  int fresh = g_keys_fetched_ms >= 0 && now - g_keys_fetched_ms < g_keys_ttl_ms;
  int recently_failed = g_keys_attempt_ms >= 0 && now - g_keys_attempt_ms < 200 && g_keys_attempt_ms > g_keys_fetched_ms;
  if ((fresh && !force) || recently_failed) { unlock(); return; }
  g_keys_attempt_ms = now;
  unlock();
  buf op = {0};
  response resp;
  if (call_agent(5, &op, &resp) != CKR_OK) return;
  if (resp.kind != 5) { debug("ListKeys failed (error %llu)", (unsigned long long)resp.error_code); response_free(&resp); return; }
  key_entry *keys = NULL; size_t nkeys = 0;
  reader r = {resp.data, resp.data + resp.len}; pb_field f;
  while (pb_next(&r, &f) > 0) {
    if (f.field != 1 || f.wire != 2) continue;
    key_entry k;
    if (parse_key_info(f.data, f.len, &k) != 0) continue; /* e.g. Ed25519: not offered */
    key_entry *grown = realloc(keys, (nkeys + 1) * sizeof *keys);
    if (!grown) { free_key(&k); break; }
    keys = grown; keys[nkeys++] = k;
  }
  response_free(&resp);
  lock();
  key_entry *old = g_keys; size_t nold = g_nkeys;
  g_keys = keys; g_nkeys = nkeys; g_keys_fetched_ms = now_ms();
  unlock();
  free_keys(old, nold);
}

/* Under the lock. */
static key_entry *find_key(CK_OBJECT_HANDLE h, int *is_public) {
  for (size_t i = 0; i < g_nkeys; i++) {
    if (g_keys[i].handle == h) { *is_public = 0; return &g_keys[i]; }
    if (g_keys[i].handle + 1 == h) { *is_public = 1; return &g_keys[i]; }
  }
  return NULL;
}

/* ---------- general ---------- */

#define CHECK_INIT() do { if (!g_initialized) return CKR_CRYPTOKI_NOT_INITIALIZED; } while (0)

static session_state *get_session(CK_SESSION_HANDLE h) {
  if (h == 0 || h > MAX_SESSIONS || !g_sessions[h - 1].used) return NULL;
  return &g_sessions[h - 1];
}

static void reset_session(session_state *s) {
  free(s->found);
  if (s->decrypt_result) { memset(s->decrypt_result, 0, s->decrypt_result_len); free(s->decrypt_result); }
  memset(s, 0, sizeof *s);
}

/* Settings passed in C_Initialize's pReserved as a string, the way NSS modules take them and
   libp11 passes its INIT_ARGS: `socket=/run/x.sock timeout_ms=1000` (space or ';' separated). */
static void apply_init_string(const char *text) {
  char copy[1024];
  snprintf(copy, sizeof copy, "%s", text);
  char *save = NULL;
  for (char *tok = strtok_r(copy, " \t;", &save); tok; tok = strtok_r(NULL, " \t;", &save)) {
    char *eq = strchr(tok, '=');
    if (!eq) continue;
    *eq = 0;
    apply_setting(tok, eq + 1);
  }
}

EXPORT CK_RV C_Initialize(CK_VOID_PTR pInitArgs) {
  pthread_once(&g_atfork_once, register_atfork);
  const char *init_string = NULL;
  if (pInitArgs) {
    CK_C_INITIALIZE_ARGS *a = pInitArgs;
    int some = a->CreateMutex || a->DestroyMutex || a->LockMutex || a->UnlockMutex;
    int all = a->CreateMutex && a->DestroyMutex && a->LockMutex && a->UnlockMutex;
    if (some && !all) return CKR_ARGUMENTS_BAD;
    /* Callbacks or not, OS locking (pthreads) is used, which v2.40 allows with CKF_OS_LOCKING_OK
       and tolerates without it for a library that never calls the callbacks. */
    init_string = a->pReserved;
  }
  lock();
  if (g_initialized && g_pid == getpid()) { unlock(); return CKR_CRYPTOKI_ALREADY_INITIALIZED; }
  if (g_initialized) {
    /* The child of a fork re-initializes: its connections are the parent's, so drop them;
       keys (and the handles derived from them) and sessions stay valid. */
    g_pid = getpid();
    unlock();
    drop_all_connections();
    return CKR_OK;
  }
  load_settings();
  if (init_string) apply_init_string(init_string);
  g_initialized = 1;
  g_pid = getpid();
  unlock();
  drop_all_connections();
  return CKR_OK;
}

EXPORT CK_RV C_Finalize(CK_VOID_PTR pReserved) {
  if (pReserved) return CKR_ARGUMENTS_BAD;
  lock();
  if (!g_initialized) { unlock(); return CKR_CRYPTOKI_NOT_INITIALIZED; }
  for (int i = 0; i < MAX_SESSIONS; i++) if (g_sessions[i].used) reset_session(&g_sessions[i]);
  g_initialized = 0;
  unlock();
  drop_all_connections();
  return CKR_OK;
}

EXPORT CK_RV C_GetInfo(CK_INFO_PTR pInfo) {
  CHECK_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  memset(pInfo, 0, sizeof *pInfo);
  pInfo->cryptokiVersion.major = 2; pInfo->cryptokiVersion.minor = 40;
  pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "keylessd");
  pad_copy(pInfo->libraryDescription, sizeof pInfo->libraryDescription, "keylessd edge PKCS#11 module");
  pInfo->libraryVersion.major = 0; pInfo->libraryVersion.minor = 1;
  return CKR_OK;
}

EXPORT CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount) {
  (void)tokenPresent;
  CHECK_INIT();
  if (!pulCount) return CKR_ARGUMENTS_BAD;
  refresh_keys(0);
  if (!pSlotList) { *pulCount = 1; return CKR_OK; }
  if (*pulCount < 1) { *pulCount = 1; return CKR_BUFFER_TOO_SMALL; }
  pSlotList[0] = 0; *pulCount = 1;
  return CKR_OK;
}

EXPORT CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo) {
  CHECK_INIT();
  if (slotID != 0) return CKR_SLOT_ID_INVALID;
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  memset(pInfo, 0, sizeof *pInfo);
  pad_copy(pInfo->slotDescription, sizeof pInfo->slotDescription, "keylessd edge agent");
  pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "keylessd");
  pInfo->flags = CKF_TOKEN_PRESENT;
  return CKR_OK;
}

EXPORT CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo) {
  CHECK_INIT();
  if (slotID != 0) return CKR_SLOT_ID_INVALID;
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  memset(pInfo, 0, sizeof *pInfo);
  lock();
  pad_copy(pInfo->label, sizeof pInfo->label, g_token_label);
  unlock();
  pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "keylessd");
  pad_copy(pInfo->model, sizeof pInfo->model, "edge agent");
  pad_copy(pInfo->serialNumber, sizeof pInfo->serialNumber, "0");
  /* No login: the agent's client certificate is the credential. Objects cannot be created
     (C_CreateObject is not supported), but read/write sessions are accepted for tools that ask. */
  pInfo->flags = CKF_TOKEN_INITIALIZED | CKF_RNG;
  pInfo->ulMaxSessionCount = MAX_SESSIONS; pInfo->ulMaxRwSessionCount = MAX_SESSIONS;
  pInfo->ulSessionCount = CK_UNAVAILABLE_INFORMATION; pInfo->ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulMaxPinLen = 0; pInfo->ulMinPinLen = 0;
  pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION; pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION; pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->hardwareVersion.major = 0; pInfo->firmwareVersion.major = 0;
  return CKR_OK;
}

static const struct { CK_MECHANISM_TYPE type; CK_ULONG min, max; CK_FLAGS flags; } MECHANISMS[] = {
  {CKM_RSA_PKCS, 1024, 16384, CKF_HW | CKF_SIGN | CKF_DECRYPT},
  {CKM_RSA_PKCS_PSS, 1024, 16384, CKF_HW | CKF_SIGN},
  {CKM_RSA_PKCS_OAEP, 1024, 16384, CKF_HW | CKF_DECRYPT},
  {CKM_RSA_X_509, 1024, 16384, CKF_HW | CKF_DECRYPT},
  {CKM_ECDSA, 256, 521, CKF_HW | CKF_SIGN | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS},
};
#define NMECH (sizeof MECHANISMS / sizeof MECHANISMS[0])

EXPORT CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList, CK_ULONG_PTR pulCount) {
  CHECK_INIT();
  if (slotID != 0) return CKR_SLOT_ID_INVALID;
  if (!pulCount) return CKR_ARGUMENTS_BAD;
  if (!pList) { *pulCount = NMECH; return CKR_OK; }
  if (*pulCount < NMECH) { *pulCount = NMECH; return CKR_BUFFER_TOO_SMALL; }
  for (size_t i = 0; i < NMECH; i++) pList[i] = MECHANISMS[i].type;
  *pulCount = NMECH;
  return CKR_OK;
}

EXPORT CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo) {
  CHECK_INIT();
  if (slotID != 0) return CKR_SLOT_ID_INVALID;
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  for (size_t i = 0; i < NMECH; i++) {
    if (MECHANISMS[i].type == type) {
      pInfo->ulMinKeySize = MECHANISMS[i].min; pInfo->ulMaxKeySize = MECHANISMS[i].max; pInfo->flags = MECHANISMS[i].flags;
      return CKR_OK;
    }
  }
  return CKR_MECHANISM_INVALID;
}

EXPORT CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession) {
  (void)pApplication; (void)Notify;
  CHECK_INIT();
  if (slotID != 0) return CKR_SLOT_ID_INVALID;
  if (!(flags & CKF_SERIAL_SESSION)) return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  if (!phSession) return CKR_ARGUMENTS_BAD;
  lock();
  for (int i = 0; i < MAX_SESSIONS; i++) {
    if (!g_sessions[i].used) {
      memset(&g_sessions[i], 0, sizeof g_sessions[i]);
      g_sessions[i].used = 1; g_sessions[i].flags = flags;
      *phSession = (CK_SESSION_HANDLE)i + 1;
      unlock();
      return CKR_OK;
    }
  }
  unlock();
  return CKR_SESSION_COUNT;
}

EXPORT CK_RV C_CloseSession(CK_SESSION_HANDLE hSession) {
  CHECK_INIT();
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  reset_session(s);
  unlock();
  return CKR_OK;
}

EXPORT CK_RV C_CloseAllSessions(CK_SLOT_ID slotID) {
  CHECK_INIT();
  if (slotID != 0) return CKR_SLOT_ID_INVALID;
  lock();
  for (int i = 0; i < MAX_SESSIONS; i++) if (g_sessions[i].used) reset_session(&g_sessions[i]);
  unlock();
  return CKR_OK;
}

EXPORT CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo) {
  CHECK_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  pInfo->slotID = 0; pInfo->state = (s->flags & CKF_RW_SESSION) ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION; pInfo->flags = s->flags; pInfo->ulDeviceError = 0;
  unlock();
  return CKR_OK;
}

/* No PIN: the token needs no login. C_Login is accepted so tools that always log in work. */
EXPORT CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  (void)userType; (void)pPin; (void)ulPinLen;
  CHECK_INIT();
  lock();
  int ok = get_session(hSession) != NULL;
  unlock();
  return ok ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
}

EXPORT CK_RV C_Logout(CK_SESSION_HANDLE hSession) {
  CHECK_INIT();
  lock();
  int ok = get_session(hSession) != NULL;
  unlock();
  return ok ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
}

/* ---------- objects ---------- */

static const CK_BBOOL TRUE_V = CK_TRUE, FALSE_V = CK_FALSE;

/* Points *v at the value of `type` for the object; 0 if the object has it, CKR_ATTRIBUTE_SENSITIVE
   or CKR_ATTRIBUTE_TYPE_INVALID otherwise. `scratch` holds small values. */
static CK_RV attribute(const key_entry *k, int pub, CK_ATTRIBUTE_TYPE type, const void **v, CK_ULONG *n, unsigned char *scratch) {
  CK_OBJECT_CLASS *cls = (CK_OBJECT_CLASS *)scratch; CK_KEY_TYPE *kt = (CK_KEY_TYPE *)scratch; CK_ULONG *ul = (CK_ULONG *)scratch;
  int rsa = k->type == KT_RSA;
#define BOOL(x) do { *v = (x) ? &TRUE_V : &FALSE_V; *n = sizeof(CK_BBOOL); return CKR_OK; } while (0)
  switch (type) {
    case CKA_CLASS: *cls = pub ? CKO_PUBLIC_KEY : CKO_PRIVATE_KEY; *v = cls; *n = sizeof *cls; return CKR_OK;
    case CKA_KEY_TYPE: *kt = rsa ? CKK_RSA : CKK_EC; *v = kt; *n = sizeof *kt; return CKR_OK;
    case CKA_ID: *v = k->ski; *n = 20; return CKR_OK;
    case CKA_LABEL: *v = k->label; *n = strlen(k->label); return CKR_OK;
    case CKA_TOKEN: BOOL(1);
    case CKA_PRIVATE: BOOL(0);
    case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_DESTROYABLE: case CKA_DERIVE: case CKA_LOCAL: BOOL(0);
    case CKA_KEY_GEN_MECHANISM: *ul = CK_UNAVAILABLE_INFORMATION; *v = ul; *n = sizeof *ul; return CKR_OK;
    case CKA_START_DATE: case CKA_END_DATE: *v = scratch; *n = 0; return CKR_OK;
    case CKA_SUBJECT: *v = scratch; *n = 0; return CKR_OK;
    case CKA_PUBLIC_KEY_INFO: *v = k->spki; *n = k->spki_len; return CKR_OK;
    case CKA_MODULUS: if (!rsa) break; *v = k->modulus; *n = k->modulus_len; return CKR_OK;
    case CKA_PUBLIC_EXPONENT: if (!rsa) break; *v = k->exponent; *n = k->exponent_len; return CKR_OK;
    case CKA_MODULUS_BITS: if (!rsa || !pub) break; *ul = k->bits; *v = ul; *n = sizeof *ul; return CKR_OK;
    case CKA_EC_PARAMS: if (rsa) break; *v = k->ec_params; *n = k->ec_params_len; return CKR_OK;
    case CKA_EC_POINT: if (rsa) break; *v = k->ec_point; *n = k->ec_point_len; return CKR_OK;
    default: break;
  }
  if (pub) {
    switch (type) {
      case CKA_VERIFY: BOOL(1);
      case CKA_ENCRYPT: BOOL(rsa);
      case CKA_VERIFY_RECOVER: case CKA_WRAP: BOOL(0);
      case CKA_TRUSTED: BOOL(0);
      default: return CKR_ATTRIBUTE_TYPE_INVALID;
    }
  }
  switch (type) {
    case CKA_SIGN: BOOL(1);
    case CKA_DECRYPT: BOOL(rsa && k->decrypt);
    case CKA_SIGN_RECOVER: case CKA_UNWRAP: case CKA_WRAP_WITH_TRUSTED: case CKA_ALWAYS_AUTHENTICATE: BOOL(0);
    case CKA_SENSITIVE: case CKA_ALWAYS_SENSITIVE: case CKA_NEVER_EXTRACTABLE: BOOL(1);
    case CKA_EXTRACTABLE: BOOL(0);
    case CKA_PRIVATE_EXPONENT: case CKA_PRIME_1: case CKA_PRIME_2: case CKA_EXPONENT_1: case CKA_EXPONENT_2: case CKA_COEFFICIENT:
      if (rsa) return CKR_ATTRIBUTE_SENSITIVE;
      return CKR_ATTRIBUTE_TYPE_INVALID;
    case CKA_VALUE: return CKR_ATTRIBUTE_SENSITIVE;
    default: return CKR_ATTRIBUTE_TYPE_INVALID;
  }
#undef BOOL
}

static int matches(const key_entry *k, int pub, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count) {
  for (CK_ULONG i = 0; i < count; i++) {
    const void *v; CK_ULONG n; unsigned char scratch[16];
    if (attribute(k, pub, tmpl[i].type, &v, &n, scratch) != CKR_OK) return 0;
    if (n != tmpl[i].ulValueLen || (n && (!tmpl[i].pValue || memcmp(v, tmpl[i].pValue, n)))) return 0;
  }
  return 1;
}

EXPORT CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount) {
  CHECK_INIT();
  if (ulCount && !pTemplate) return CKR_ARGUMENTS_BAD;
  refresh_keys(0);
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (s->find_active) { unlock(); return CKR_OPERATION_ACTIVE; }
  free(s->found);
  s->found = malloc((g_nkeys * 2 + 1) * sizeof *s->found);
  if (!s->found) { unlock(); return CKR_HOST_MEMORY; }
  s->nfound = 0; s->pos = 0;
  for (size_t i = 0; i < g_nkeys; i++) {
    if (matches(&g_keys[i], 0, pTemplate, ulCount)) s->found[s->nfound++] = g_keys[i].handle;
    if (matches(&g_keys[i], 1, pTemplate, ulCount)) s->found[s->nfound++] = g_keys[i].handle + 1;
  }
  s->find_active = 1;
  unlock();
  return CKR_OK;
}

EXPORT CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount) {
  CHECK_INIT();
  if (!phObject || !pulObjectCount) return CKR_ARGUMENTS_BAD;
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (!s->find_active) { unlock(); return CKR_OPERATION_NOT_INITIALIZED; }
  CK_ULONG n = 0;
  while (n < ulMaxObjectCount && s->pos < s->nfound) phObject[n++] = s->found[s->pos++];
  *pulObjectCount = n;
  unlock();
  return CKR_OK;
}

EXPORT CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession) {
  CHECK_INIT();
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (!s->find_active) { unlock(); return CKR_OPERATION_NOT_INITIALIZED; }
  free(s->found); s->found = NULL; s->find_active = 0;
  unlock();
  return CKR_OK;
}

EXPORT CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount) {
  CHECK_INIT();
  if (ulCount && !pTemplate) return CKR_ARGUMENTS_BAD;
  lock();
  if (!get_session(hSession)) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  int pub; key_entry *k = find_key(hObject, &pub);
  if (!k) { unlock(); return CKR_OBJECT_HANDLE_INVALID; }
  CK_RV rv = CKR_OK;
  for (CK_ULONG i = 0; i < ulCount; i++) {
    const void *v; CK_ULONG n; unsigned char scratch[16];
    CK_RV r = attribute(k, pub, pTemplate[i].type, &v, &n, scratch);
    if (r != CKR_OK) { pTemplate[i].ulValueLen = CK_UNAVAILABLE_INFORMATION; rv = r; continue; }
    if (!pTemplate[i].pValue) { pTemplate[i].ulValueLen = n; continue; }
    if (pTemplate[i].ulValueLen < n) { pTemplate[i].ulValueLen = CK_UNAVAILABLE_INFORMATION; rv = CKR_BUFFER_TOO_SMALL; continue; }
    if (n) memcpy(pTemplate[i].pValue, v, n);
    pTemplate[i].ulValueLen = n;
  }
  unlock();
  return rv;
}

EXPORT CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize) {
  (void)hSession; (void)hObject; (void)pulSize;
  CHECK_INIT();
  return CKR_FUNCTION_NOT_SUPPORTED;
}

/* ---------- signing ---------- */

static size_t hash_len_of(CK_MECHANISM_TYPE h) {
  switch (h) { case CKM_SHA_1: return 20; case CKM_SHA256: return 32; case CKM_SHA384: return 48; case CKM_SHA512: return 64; default: return 0; }
}

/* Copies what an operation needs from the key, so the key list can change under it. */
static CK_RV lookup_key(CK_OBJECT_HANDLE hKey, key_ref *ref, int *decrypt_allowed) {
  for (int attempt = 0; attempt < 2; attempt++) {
    lock();
    int pub; key_entry *k = find_key(hKey, &pub);
    if (k && !pub) {
      memcpy(ref->ski, k->ski, 20); ref->type = k->type; ref->field_len = k->field_len;
      ref->out_len = k->type == KT_RSA ? k->modulus_len : 2 * k->field_len;
      if (decrypt_allowed) *decrypt_allowed = k->decrypt;
      unlock();
      return CKR_OK;
    }
    unlock();
    if (k) return CKR_KEY_TYPE_INCONSISTENT;
    if (attempt == 0) refresh_keys(1); /* a key added since the last refresh */
  }
  return CKR_KEY_HANDLE_INVALID;
}

EXPORT CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  CHECK_INIT();
  if (!pMechanism) return CKR_ARGUMENTS_BAD;
  key_ref ref; int pss_alg = 0; size_t pss_hash = 0;
  CK_RV rv = lookup_key(hKey, &ref, NULL);
  if (rv != CKR_OK) return rv;
  switch (pMechanism->mechanism) {
    case CKM_RSA_PKCS: if (ref.type != KT_RSA) return CKR_KEY_TYPE_INCONSISTENT; break;
    case CKM_ECDSA: if (ref.type != KT_EC) return CKR_KEY_TYPE_INCONSISTENT; break;
    case CKM_RSA_PKCS_PSS: {
      if (ref.type != KT_RSA) return CKR_KEY_TYPE_INCONSISTENT;
      if (!pMechanism->pParameter || pMechanism->ulParameterLen != sizeof(CK_RSA_PKCS_PSS_PARAMS)) return CKR_MECHANISM_PARAM_INVALID;
      CK_RSA_PKCS_PSS_PARAMS *p = pMechanism->pParameter;
      /* keyless.v1 PSS: MGF1 with the same hash, salt length = hash length. */
      if (p->hashAlg == CKM_SHA256 && p->mgf == CKG_MGF1_SHA256) pss_alg = ALG_RSA_PSS_SHA256;
      else if (p->hashAlg == CKM_SHA384 && p->mgf == CKG_MGF1_SHA384) pss_alg = ALG_RSA_PSS_SHA384;
      else if (p->hashAlg == CKM_SHA512 && p->mgf == CKG_MGF1_SHA512) pss_alg = ALG_RSA_PSS_SHA512;
      else return CKR_MECHANISM_PARAM_INVALID;
      pss_hash = hash_len_of(p->hashAlg);
      if (p->sLen != pss_hash) return CKR_MECHANISM_PARAM_INVALID;
      break;
    }
    default: return CKR_MECHANISM_INVALID;
  }
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (s->sign_active) { unlock(); return CKR_OPERATION_ACTIVE; }
  s->sign_active = 1; s->sign_mech = pMechanism->mechanism; s->pss_alg = pss_alg; s->pss_hash_len = pss_hash; s->sign_key = ref;
  s->sign_buf_len = 0; s->sign_multipart = 0;
  unlock();
  return CKR_OK;
}

static const struct { int alg; unsigned char prefix[19]; size_t prefix_len; size_t digest_len; } DIGEST_INFOS[] = {
  {ALG_RSA_PKCS1_SHA1, {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14}, 15, 20},
  {ALG_RSA_PKCS1_SHA256, {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}, 19, 32},
  {ALG_RSA_PKCS1_SHA384, {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30}, 19, 48},
  {ALG_RSA_PKCS1_SHA512, {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40}, 19, 64},
};

static CK_RV error_to_ckr(uint64_t code, int decrypting) {
  switch (code) {
    case ERR_KEY_NOT_FOUND: return CKR_KEY_HANDLE_INVALID;
    case ERR_FORBIDDEN: return CKR_KEY_FUNCTION_NOT_PERMITTED;
    case ERR_UNSUPPORTED: return CKR_MECHANISM_INVALID;
    case ERR_BAD_REQUEST: return decrypting ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
    case ERR_CRYPTO_FAILURE: return decrypting ? CKR_ENCRYPTED_DATA_INVALID : CKR_FUNCTION_FAILED;
    default: return CKR_DEVICE_ERROR; /* unavailable, overloaded, timeout, internal */
  }
}

static void put_key_ref(buf *b, const unsigned char *ski) {
  buf ref = {0};
  put_bytes(&ref, 1, ski, 20);
  put_bytes(b, 1, ref.p, ref.len);
  free(ref.p);
}

/* DER ECDSA-Sig-Value -> r||s, each left-padded to field_len. */
static int ecdsa_der_to_raw(const unsigned char *der, size_t n, size_t field_len, unsigned char *out) {
  const unsigned char *p = der, *c, *ints[2]; size_t len, lens[2]; unsigned tag;
  if (der_read(&p, der + n, &tag, &c, &len, NULL, NULL) || tag != 0x30) return -1;
  const unsigned char *q = c, *qend = c + len;
  for (int i = 0; i < 2; i++) {
    if (der_read(&q, qend, &tag, &ints[i], &lens[i], NULL, NULL) || tag != 0x02) return -1;
    while (lens[i] > 0 && ints[i][0] == 0) { ints[i]++; lens[i]--; }
    if (lens[i] > field_len) return -1;
    memset(out + i * field_len, 0, field_len - lens[i]);
    memcpy(out + i * field_len + field_len - lens[i], ints[i], lens[i]);
  }
  return 0;
}

/* C_Sign (final = 0) and C_SignFinal (final = 1, the data collected by C_SignUpdate). */
static CK_RV sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen, int final) {
  unsigned char collected[sizeof ((session_state *)0)->sign_buf];
  CHECK_INIT();
  if (!pulSignatureLen || (!pData && ulDataLen)) return CKR_ARGUMENTS_BAD;
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (!s->sign_active) { unlock(); return CKR_OPERATION_NOT_INITIALIZED; }
  if (final != s->sign_multipart) { s->sign_active = 0; unlock(); return final ? CKR_OPERATION_NOT_INITIALIZED : CKR_OPERATION_ACTIVE; }
  if (final) { memcpy(collected, s->sign_buf, s->sign_buf_len); pData = collected; ulDataLen = s->sign_buf_len; }
  CK_MECHANISM_TYPE mech = s->sign_mech; int pss_alg = s->pss_alg; size_t pss_hash = s->pss_hash_len; key_ref key = s->sign_key;
  if (!pSignature) { *pulSignatureLen = key.out_len; unlock(); return CKR_OK; }
  if (*pulSignatureLen < key.out_len) { *pulSignatureLen = key.out_len; unlock(); return CKR_BUFFER_TOO_SMALL; }
  s->sign_active = 0;
  unlock();

  int alg = 0; const unsigned char *digest = pData; size_t digest_len = ulDataLen;
  if (mech == CKM_RSA_PKCS) {
    if (ulDataLen == 36) alg = ALG_RSA_PKCS1_MD5_SHA1; /* TLS <= 1.1: MD5||SHA-1, no DigestInfo */
    for (size_t i = 0; !alg && i < sizeof DIGEST_INFOS / sizeof DIGEST_INFOS[0]; i++) {
      if (ulDataLen == DIGEST_INFOS[i].prefix_len + DIGEST_INFOS[i].digest_len && !memcmp(pData, DIGEST_INFOS[i].prefix, DIGEST_INFOS[i].prefix_len)) {
        alg = DIGEST_INFOS[i].alg; digest = pData + DIGEST_INFOS[i].prefix_len; digest_len = DIGEST_INFOS[i].digest_len;
      }
    }
    /* keyless.v1 signs digests, not arbitrary blocks: other input cannot be signed. */
    if (!alg) return CKR_DATA_INVALID;
  } else if (mech == CKM_RSA_PKCS_PSS) {
    if (ulDataLen != pss_hash) return CKR_DATA_LEN_RANGE;
    alg = pss_alg;
  } else {
    switch (ulDataLen) {
      case 20: alg = ALG_ECDSA_SHA1; break;
      case 32: alg = ALG_ECDSA_SHA256; break;
      case 48: alg = ALG_ECDSA_SHA384; break;
      case 64: alg = ALG_ECDSA_SHA512; break;
      default: return CKR_DATA_LEN_RANGE;
    }
  }
  buf op = {0};
  put_key_ref(&op, key.ski);
  put_uint(&op, 2, (uint64_t)alg);
  put_bytes(&op, 3, digest, digest_len);
  if (op.failed) { free(op.p); return CKR_HOST_MEMORY; }
  response resp;
  CK_RV rv = call_agent(3, &op, &resp);
  free(op.p);
  if (rv != CKR_OK) return rv;
  if (resp.kind != 3) {
    debug("sign refused: keyless.v1 error %llu", (unsigned long long)resp.error_code);
    rv = resp.kind == 15 ? error_to_ckr(resp.error_code, 0) : CKR_DEVICE_ERROR;
    response_free(&resp);
    return rv;
  }
  if (key.type == KT_EC) {
    if (ecdsa_der_to_raw(resp.data, resp.len, key.field_len, pSignature) != 0) { response_free(&resp); return CKR_DEVICE_ERROR; }
    *pulSignatureLen = 2 * key.field_len;
  } else {
    if (resp.len > key.out_len) { response_free(&resp); return CKR_DEVICE_ERROR; }
    /* Left-pad to the modulus length, as PKCS#11 returns it. */
    memset(pSignature, 0, key.out_len - resp.len);
    memcpy(pSignature + key.out_len - resp.len, resp.data, resp.len);
    *pulSignatureLen = key.out_len;
  }
  response_free(&resp);
  return CKR_OK;
}

EXPORT CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen) {
  return sign(hSession, pData, ulDataLen, pSignature, pulSignatureLen, 0);
}

/* The mechanisms sign a digest, so multi-part input is just collected (a few dozen bytes). */
EXPORT CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  CHECK_INIT();
  if (!pPart && ulPartLen) return CKR_ARGUMENTS_BAD;
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (!s->sign_active) { unlock(); return CKR_OPERATION_NOT_INITIALIZED; }
  if (s->sign_buf_len + ulPartLen > sizeof s->sign_buf) { s->sign_active = 0; unlock(); return CKR_DATA_LEN_RANGE; }
  memcpy(s->sign_buf + s->sign_buf_len, pPart, ulPartLen);
  s->sign_buf_len += ulPartLen; s->sign_multipart = 1;
  unlock();
  return CKR_OK;
}

EXPORT CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen) {
  return sign(hSession, NULL, 0, pSignature, pulSignatureLen, 1);
}

/* ---------- decryption ---------- */

/*
 * PKCS#1 v1.5 type 2 unpadding of a modulus-length block, in constant time up to the final
 * length: every byte is looked at whatever the block holds, no branch depends on secret
 * data before the result is known valid. Returns the message length, or -1.
 */
static long pkcs1_type2_unpad(const unsigned char *em, size_t k, unsigned char *out, size_t out_cap) {
  if (k < 11) return -1;
  unsigned good = ((unsigned)em[0] ^ 0u) | ((unsigned)em[1] ^ 2u);
  good = ((good | (0u - good)) >> 31) ^ 1u; /* 1 when em[0] == 0 and em[1] == 2 */
  unsigned found = 0; size_t zero_index = 0;
  for (size_t i = 2; i < k; i++) {
    unsigned is_zero = (((unsigned)em[i] | (0u - (unsigned)em[i])) >> 31) ^ 1u;
    unsigned take = is_zero & (found ^ 1u);
    size_t mask = (size_t)0 - (size_t)take;
    zero_index = (zero_index & ~mask) | (i & mask);
    found |= is_zero;
  }
  /* At least 8 non-zero padding bytes: the separator sits at index >= 10. */
  unsigned long_enough = (unsigned)(((size_t)(zero_index - 10) >> (sizeof(size_t) * 8 - 1)) ^ 1u);
  good &= found & long_enough;
  size_t msg_len = k - zero_index - 1;
  if (!good) return -1;
  if (msg_len > out_cap) return -2;
  memcpy(out, em + zero_index + 1, msg_len);
  return (long)msg_len;
}

EXPORT CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  CHECK_INIT();
  if (!pMechanism) return CKR_ARGUMENTS_BAD;
  key_ref ref; int allowed = 0;
  CK_RV rv = lookup_key(hKey, &ref, &allowed);
  if (rv != CKR_OK) return rv;
  if (ref.type != KT_RSA) return CKR_KEY_TYPE_INCONSISTENT;
  switch (pMechanism->mechanism) {
    case CKM_RSA_PKCS: case CKM_RSA_X_509: break;
    case CKM_RSA_PKCS_OAEP: {
      if (!pMechanism->pParameter || pMechanism->ulParameterLen != sizeof(CK_RSA_PKCS_OAEP_PARAMS)) return CKR_MECHANISM_PARAM_INVALID;
      CK_RSA_PKCS_OAEP_PARAMS *p = pMechanism->pParameter;
      if (p->hashAlg != CKM_SHA256 || p->mgf != CKG_MGF1_SHA256 || (p->source && p->source != CKZ_DATA_SPECIFIED) || p->ulSourceDataLen != 0) return CKR_MECHANISM_PARAM_INVALID;
      break;
    }
    default: return CKR_MECHANISM_INVALID;
  }
  /* A key without CKA_DECRYPT still reaches keylessd, which decides, refuses and audits the
     refusal: the server, not the edge, is where policy lives (docs/edge.md). */
  (void)allowed;
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (s->decrypt_active) { unlock(); return CKR_OPERATION_ACTIVE; }
  s->decrypt_active = 1; s->decrypt_mech = pMechanism->mechanism; s->decrypt_key = ref; s->decrypt_done = 0;
  unlock();
  return CKR_OK;
}

static void end_decrypt(session_state *s) {
  if (s->decrypt_result) { memset(s->decrypt_result, 0, s->decrypt_result_len); free(s->decrypt_result); }
  s->decrypt_result = NULL; s->decrypt_result_len = 0; s->decrypt_active = 0; s->decrypt_done = 0;
}

EXPORT CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen) {
  CHECK_INIT();
  if (!pulDataLen || !pEncryptedData) return CKR_ARGUMENTS_BAD;
  lock();
  session_state *s = get_session(hSession);
  if (!s) { unlock(); return CKR_SESSION_HANDLE_INVALID; }
  if (!s->decrypt_active) { unlock(); return CKR_OPERATION_NOT_INITIALIZED; }
  key_ref key = s->decrypt_key; CK_MECHANISM_TYPE mech = s->decrypt_mech;
  if (s->decrypt_done) {
    /* The plaintext of an earlier call that found the buffer too small. */
    if (!pData) { *pulDataLen = s->decrypt_result_len; unlock(); return CKR_OK; }
    if (*pulDataLen < s->decrypt_result_len) { *pulDataLen = s->decrypt_result_len; unlock(); return CKR_BUFFER_TOO_SMALL; }
    memcpy(pData, s->decrypt_result, s->decrypt_result_len);
    *pulDataLen = s->decrypt_result_len;
    end_decrypt(s);
    unlock();
    return CKR_OK;
  }
  if (!pData) { *pulDataLen = key.out_len; unlock(); return CKR_OK; } /* an upper bound, as v2.40 allows */
  unlock();
  if (ulEncryptedDataLen != key.out_len) {
    lock(); if ((s = get_session(hSession))) end_decrypt(s); unlock();
    return CKR_ENCRYPTED_DATA_LEN_RANGE;
  }
  buf op = {0};
  put_key_ref(&op, key.ski);
  put_uint(&op, 2, mech == CKM_RSA_PKCS_OAEP ? PAD_RSA_OAEP_SHA256 : PAD_RSA_RAW);
  put_bytes(&op, 3, pEncryptedData, ulEncryptedDataLen);
  response resp;
  CK_RV rv = op.failed ? CKR_HOST_MEMORY : call_agent(4, &op, &resp);
  free(op.p);
  unsigned char *plain = NULL; long plain_len = -1;
  if (rv == CKR_OK) {
    if (resp.kind != 4) {
      debug("decrypt refused: keyless.v1 error %llu", (unsigned long long)resp.error_code);
      rv = resp.kind == 15 ? error_to_ckr(resp.error_code, 1) : CKR_DEVICE_ERROR;
    } else if (mech == CKM_RSA_PKCS) {
      plain = malloc(key.out_len);
      if (!plain) rv = CKR_HOST_MEMORY;
      else if (resp.len != key.out_len) rv = CKR_DEVICE_ERROR;
      else if ((plain_len = pkcs1_type2_unpad(resp.data, resp.len, plain, key.out_len)) < 0) rv = CKR_ENCRYPTED_DATA_INVALID;
    } else {
      plain = dup_bytes(resp.data, resp.len);
      plain_len = (long)resp.len;
      if (!plain) rv = CKR_HOST_MEMORY;
    }
    if (resp.frame) memset(resp.frame, 0, resp.frame_len); /* the plaintext or raw block */
    response_free(&resp);
  }
  lock();
  s = get_session(hSession);
  if (!s) { unlock(); if (plain) { memset(plain, 0, key.out_len); free(plain); } return CKR_SESSION_HANDLE_INVALID; }
  if (rv != CKR_OK) { end_decrypt(s); unlock(); if (plain) { memset(plain, 0, key.out_len); free(plain); } return rv; }
  if (*pulDataLen < (CK_ULONG)plain_len) {
    s->decrypt_result = plain; s->decrypt_result_len = (size_t)plain_len; s->decrypt_done = 1;
    *pulDataLen = (CK_ULONG)plain_len;
    unlock();
    return CKR_BUFFER_TOO_SMALL;
  }
  memcpy(pData, plain, (size_t)plain_len);
  *pulDataLen = (CK_ULONG)plain_len;
  end_decrypt(s);
  unlock();
  memset(plain, 0, (size_t)plain_len); free(plain);
  return CKR_OK;
}

EXPORT CK_RV C_DecryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d) { (void)h; (void)a; (void)b; (void)c; (void)d; CHECK_INIT(); return CKR_FUNCTION_NOT_SUPPORTED; }
EXPORT CK_RV C_DecryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR a, CK_ULONG_PTR b) { (void)h; (void)a; (void)b; CHECK_INIT(); return CKR_FUNCTION_NOT_SUPPORTED; }

/* ---------- random: the kernel's ---------- */

EXPORT CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen) {
  CHECK_INIT();
  if (!pRandomData && ulRandomLen) return CKR_ARGUMENTS_BAD;
  lock();
  int ok = get_session(hSession) != NULL;
  unlock();
  if (!ok) return CKR_SESSION_HANDLE_INVALID;
  while (ulRandomLen > 0) {
    ssize_t n = getrandom(pRandomData, ulRandomLen > 256 ? 256 : ulRandomLen, 0);
    if (n < 0) { if (errno == EINTR) continue; return CKR_DEVICE_ERROR; }
    pRandomData += n; ulRandomLen -= (CK_ULONG)n;
  }
  return CKR_OK;
}

/* ---------- everything else: not supported ---------- */

#define UNSUPPORTED(name, params) EXPORT CK_RV name params { CHECK_INIT(); return CKR_FUNCTION_NOT_SUPPORTED; }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
UNSUPPORTED(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d))
UNSUPPORTED(C_InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c))
UNSUPPORTED(C_SetPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e))
UNSUPPORTED(C_GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_SetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e))
UNSUPPORTED(C_CreateObject, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d))
UNSUPPORTED(C_CopyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e))
UNSUPPORTED(C_DestroyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b))
UNSUPPORTED(C_SetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d))
UNSUPPORTED(C_EncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_Encrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_EncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_EncryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_DigestInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b))
UNSUPPORTED(C_Digest, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_DigestKey, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b))
UNSUPPORTED(C_DigestFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_VerifyInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_Verify, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e))
UNSUPPORTED(C_VerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_VerifyFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DigestEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptDigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_SignEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_GenerateKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e))
UNSUPPORTED(C_GenerateKeyPair, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h))
UNSUPPORTED(C_WrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f))
UNSUPPORTED(C_UnwrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h))
UNSUPPORTED(C_DeriveKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f))
EXPORT CK_RV C_SeedRandom(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c) { CHECK_INIT(); return CKR_RANDOM_SEED_NOT_SUPPORTED; }
EXPORT CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE a) { CHECK_INIT(); return CKR_FUNCTION_NOT_PARALLEL; }
EXPORT CK_RV C_CancelFunction(CK_SESSION_HANDLE a) { CHECK_INIT(); return CKR_FUNCTION_NOT_PARALLEL; }
EXPORT CK_RV C_WaitForSlotEvent(CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c) { CHECK_INIT(); return CKR_FUNCTION_NOT_SUPPORTED; }
#pragma GCC diagnostic pop

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);

static CK_FUNCTION_LIST g_functions = {
  {2, 40},
  C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,
  C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession,
  C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState, C_Login, C_Logout,
  C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue,
  C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate,
  C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,
  C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal,
  C_SignRecoverInit, C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
  C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,
  C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey,
  C_DeriveKey, C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
};

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  if (!ppFunctionList) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &g_functions;
  return CKR_OK;
}
