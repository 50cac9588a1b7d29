/*
 * Private-key operations on OpenSSL keys, run on the addon's own signing threads.
 *
 * Why this exists: Node's crypto.sign() always hashes its input, so it cannot sign a
 * digest that arrives over the wire (ECDSA, RSA-PSS), and its synchronous calls would
 * block the event loop. This addon links against the OpenSSL that Node itself exports,
 * so it needs no library of its own, and calls EVP_PKEY_sign / EVP_DigestSign /
 * EVP_PKEY_decrypt off the event loop.
 *
 * The JavaScript side never sees key material after loadKey(): a key is an opaque
 * external whose EVP_PKEY is freed by the garbage collector.
 */
#define _GNU_SOURCE /* pthread_setname_np; before any system header */
#include <node_api.h>
#include <uv.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>

enum op_kind { OP_RSA_PKCS1 = 0, OP_RSA_PSS = 1, OP_ECDSA = 2, OP_ED25519 = 3, OP_DECRYPT_RAW = 4, OP_DECRYPT_OAEP_SHA256 = 5 };
enum hash_id { HASH_NONE = 0, HASH_SHA1 = 1, HASH_SHA224 = 2, HASH_SHA256 = 3, HASH_SHA384 = 4, HASH_SHA512 = 5 };

#define NAPI_CALL(env, call)                                   \
  do {                                                         \
    if ((call) != napi_ok) {                                   \
      napi_throw_error((env), NULL, "keyless_openssl: N-API call failed: " #call); \
      return NULL;                                             \
    }                                                          \
  } while (0)

typedef struct job_s {
  struct job_s *next;
  /* Batched queue: the caller's slot number, handed back with the result. */
  uint32_t slot;
  EVP_PKEY *pkey;
  int op;
  int hash;
  unsigned char *input;
  size_t input_len;
  unsigned char *output;
  size_t output_len;
  char error[256];
} job_t;

static const EVP_MD *md_for(int hash) {
  switch (hash) {
    case HASH_SHA1: return EVP_sha1();
    case HASH_SHA224: return EVP_sha224();
    case HASH_SHA256: return EVP_sha256();
    case HASH_SHA384: return EVP_sha384();
    case HASH_SHA512: return EVP_sha512();
    default: return NULL;
  }
}

static void record_error(job_t *job, const char *what) {
  unsigned long code = ERR_get_error();
  if (code != 0) {
    char reason[200];
    ERR_error_string_n(code, reason, sizeof reason);
    snprintf(job->error, sizeof job->error, "%s: %s", what, reason);
  } else {
    snprintf(job->error, sizeof job->error, "%s", what);
  }
  ERR_clear_error();
}

/*
 * Contexts kept by a signing thread while it stays busy. Making an EVP_PKEY_CTX and setting
 * it up costs OpenSSL 3.0 about 2 us per operation (provider and digest fetches): a ninth of
 * a P-256 signature, and what `openssl speed` does not pay (it reuses one context). A
 * context is set up for one key, operation and digest and signs again as it is; each thread
 * keeps its last few. A context holds a reference to its key, so a thread empties its
 * cache whenever it goes to sleep and whenever any key has been freed since it last looked:
 * a removed key stays in memory no longer than the busy spell that was using it.
 */
#define CACHED_CONTEXTS 4
typedef struct {
  EVP_PKEY *pkey;
  int op;
  int hash;
  EVP_PKEY_CTX *ctx;
} cached_ctx_t;
static __thread cached_ctx_t ctx_cache[CACHED_CONTEXTS];
static __thread unsigned ctx_cache_next;
static __thread unsigned long ctx_cache_generation;
/* Bumped each time a key is freed (finalize_key). */
static atomic_ulong key_generation;

static void ctx_cache_clear(void) {
  for (int i = 0; i < CACHED_CONTEXTS; i++) {
    EVP_PKEY_CTX_free(ctx_cache[i].ctx); /* NULL-safe */
    ctx_cache[i] = (cached_ctx_t){ 0 };
  }
}

static int ctx_cache_holds_any(void) {
  for (int i = 0; i < CACHED_CONTEXTS; i++) if (ctx_cache[i].ctx) return 1;
  return 0;
}

/* A context set up for this job's key, operation and digest, taken out of the cache; or NULL. */
static EVP_PKEY_CTX *ctx_take(const job_t *job) {
  unsigned long generation = atomic_load(&key_generation);
  if (generation != ctx_cache_generation) {
    ctx_cache_clear();
    ctx_cache_generation = generation;
    return NULL;
  }
  for (int i = 0; i < CACHED_CONTEXTS; i++) {
    cached_ctx_t *entry = &ctx_cache[i];
    if (entry->ctx && entry->pkey == job->pkey && entry->op == job->op && entry->hash == job->hash) {
      EVP_PKEY_CTX *ctx = entry->ctx;
      entry->ctx = NULL;
      return ctx;
    }
  }
  return NULL;
}

/* Keeps a context that has just done this job's operation successfully: in a free place, or else in place of the next one in turn. */
static void ctx_keep(const job_t *job, EVP_PKEY_CTX *ctx) {
  cached_ctx_t *entry = NULL;
  for (int i = 0; i < CACHED_CONTEXTS && entry == NULL; i++) if (ctx_cache[i].ctx == NULL) entry = &ctx_cache[i];
  if (entry == NULL) {
    entry = &ctx_cache[ctx_cache_next];
    ctx_cache_next = (ctx_cache_next + 1) % CACHED_CONTEXTS;
  }
  EVP_PKEY_CTX_free(entry->ctx);
  *entry = (cached_ctx_t){ .pkey = job->pkey, .op = job->op, .hash = job->hash, .ctx = ctx };
}

static int decrypts(const job_t *job) {
  return job->op == OP_DECRYPT_RAW || job->op == OP_DECRYPT_OAEP_SHA256;
}

/* A new context for this job's key, operation and digest, or NULL (the error is in the job). */
static EVP_PKEY_CTX *ctx_new(job_t *job) {
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(job->pkey, NULL);
  if (ctx == NULL) { record_error(job, "EVP_PKEY_CTX_new failed"); return NULL; }
  if ((decrypts(job) ? EVP_PKEY_decrypt_init(ctx) : EVP_PKEY_sign_init(ctx)) <= 0) { record_error(job, "operation init failed"); goto failed; }
  switch (job->op) {
    case OP_RSA_PKCS1:
      if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0) { record_error(job, "set padding failed"); goto failed; }
      /* HASH_NONE: raw PKCS#1 type-1 padding of the input, as TLS 1.0/1.1 MD5-SHA1 needs. */
      if (job->hash != HASH_NONE && EVP_PKEY_CTX_set_signature_md(ctx, md_for(job->hash)) <= 0) { record_error(job, "set digest failed"); goto failed; }
      break;
    case OP_RSA_PSS:
      if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
          EVP_PKEY_CTX_set_signature_md(ctx, md_for(job->hash)) <= 0 ||
          EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md_for(job->hash)) <= 0 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, RSA_PSS_SALTLEN_DIGEST) <= 0) { record_error(job, "PSS setup failed"); goto failed; }
      break;
    case OP_ECDSA:
      /* No digest is set: ECDSA signs the given bytes as the digest, whatever their length. */
      break;
    case OP_DECRYPT_RAW:
      if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) <= 0) { record_error(job, "set padding failed"); goto failed; }
      break;
    case OP_DECRYPT_OAEP_SHA256:
      if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
          EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) <= 0 ||
          EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) <= 0) { record_error(job, "OAEP setup failed"); goto failed; }
      break;
  }
  return ctx;
failed:
  EVP_PKEY_CTX_free(ctx);
  return NULL;
}

static int run_pkey_ctx_op(job_t *job) {
  int ok = 0;
  int decrypting = decrypts(job);
  EVP_PKEY_CTX *ctx = ctx_take(job);
  if (ctx == NULL && (ctx = ctx_new(job)) == NULL) return 0;
  size_t out_len = 0;
  int rc = decrypting ? EVP_PKEY_decrypt(ctx, NULL, &out_len, job->input, job->input_len)
                      : EVP_PKEY_sign(ctx, NULL, &out_len, job->input, job->input_len);
  if (rc <= 0) { record_error(job, "size query failed"); goto done; }
  job->output = malloc(out_len);
  if (job->output == NULL) { snprintf(job->error, sizeof job->error, "out of memory"); goto done; }
  rc = decrypting ? EVP_PKEY_decrypt(ctx, job->output, &out_len, job->input, job->input_len)
                  : EVP_PKEY_sign(ctx, job->output, &out_len, job->input, job->input_len);
  if (rc <= 0) { record_error(job, decrypting ? "decrypt failed" : "sign failed"); goto done; }
  job->output_len = out_len;
  ok = 1;
done:
  /* A context that failed is not trusted again. */
  if (ok) ctx_keep(job, ctx); else EVP_PKEY_CTX_free(ctx);
  return ok;
}

static int run_ed25519(job_t *job) {
  EVP_MD_CTX *mdctx = EVP_MD_CTX_new();
  int ok = 0;
  size_t out_len = 0;
  if (mdctx == NULL) { record_error(job, "EVP_MD_CTX_new failed"); return 0; }
  if (EVP_DigestSignInit(mdctx, NULL, NULL, NULL, job->pkey) <= 0) { record_error(job, "sign init failed"); goto done; }
  if (EVP_DigestSign(mdctx, NULL, &out_len, job->input, job->input_len) <= 0) { record_error(job, "size query failed"); goto done; }
  job->output = malloc(out_len);
  if (job->output == NULL) { snprintf(job->error, sizeof job->error, "out of memory"); goto done; }
  if (EVP_DigestSign(mdctx, job->output, &out_len, job->input, job->input_len) <= 0) { record_error(job, "sign failed"); goto done; }
  job->output_len = out_len;
  ok = 1;
done:
  EVP_MD_CTX_free(mdctx);
  return ok;
}

/* Runs one job (on a signing thread, or inline: see flush); the result or the error stays in the job. */
static void execute(job_t *job) {
  ERR_clear_error();
  if (job->op == OP_ED25519) run_ed25519(job); else run_pkey_ctx_op(job);
}

static void finalize_key(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  EVP_PKEY_free((EVP_PKEY *)data);
  atomic_fetch_add(&key_generation, 1); /* signing threads drop the contexts that still hold it */
}

/* loadKey(pkcs8Der: Buffer): External — parses an unencrypted PKCS#8 private key. */
static napi_value load_key(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *der; size_t der_len;
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &der, &der_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "loadKey expects a Buffer holding a PKCS#8 DER private key");
    return NULL;
  }
  const unsigned char *p = der;
  EVP_PKEY *pkey = d2i_AutoPrivateKey(NULL, &p, (long)der_len);
  if (pkey == NULL) {
    ERR_clear_error();
    napi_throw_error(env, NULL, "not a PKCS#8 private key OpenSSL can read");
    return NULL;
  }
  napi_value external;
  NAPI_CALL(env, napi_create_external(env, pkey, finalize_key, NULL, &external));
  return external;
}

/*
 * The batched queue (start/submit/flush). A per-request hand-off (what this addon did
 * before: napi_async_work on the libuv pool) costs the event loop a napi_async_work, a promise, a thread wake-up per operation (each one a
 * point where this 2-core machine preempts the main thread) and a callback into
 * JavaScript per result. Here the main thread links operations into a list without any
 * lock; flush() hands the whole list to the workers with one lock and one broadcast;
 * workers keep taking operations while there are any; finished ones go on a done list,
 * and one uv_async wake-up delivers every result finished by then to JavaScript in one
 * call: onDone([slot, Buffer | error string, slot, …]).
 */
typedef struct {
  uv_mutex_t lock;
  uv_cond_t ready;
  job_t *todo_head, *todo_tail;    /* shared with the workers, under lock */
  job_t *done_head;                /* shared with the workers, under lock (LIFO, reversed on delivery) */
  job_t *local_head, *local_tail;  /* main thread only: submitted, not yet flushed */
  uv_async_t async;
  uv_thread_t *threads;
  int thread_count;
  int idle_workers;                /* waiting on `ready`, under lock */
  uint32_t in_hands;               /* main thread only: flushed to the workers, not yet delivered */
  uint64_t quiet_since;            /* main thread only: uv_hrtime() when the last operation was answered */
  int stopping;
  napi_env env;
  napi_ref on_done;
  napi_async_context context;
} queue_t;

static void queue_worker(void *arg) {
  queue_t *q = arg;
  /* Named so that top -H, perf and /proc/PID/task tell the signing threads from Node's own. */
  pthread_setname_np(pthread_self(), "keylessd-sign");
  for (;;) {
    uv_mutex_lock(&q->lock);
    while (q->todo_head == NULL && !q->stopping) {
      if (ctx_cache_holds_any()) {
        uv_mutex_unlock(&q->lock); /* freeing contexts needs no lock; the queue may fill meanwhile */
        ctx_cache_clear();
        uv_mutex_lock(&q->lock);
        continue;
      }
      q->idle_workers++;
      uv_cond_wait(&q->ready, &q->lock);
      q->idle_workers--;
    }
    if (q->todo_head == NULL) { uv_mutex_unlock(&q->lock); ctx_cache_clear(); return; }
    job_t *job = q->todo_head;
    q->todo_head = job->next;
    if (q->todo_head == NULL) q->todo_tail = NULL;
    uv_mutex_unlock(&q->lock);
    execute(job);
    uv_mutex_lock(&q->lock);
    job->next = q->done_head;
    q->done_head = job;
    uv_mutex_unlock(&q->lock);
    uv_async_send(&q->async); /* coalesced by libuv: one wake-up for many results */
  }
}

static void free_job(job_t *job) {
  EVP_PKEY_free(job->pkey);
  if (job->output) { OPENSSL_cleanse(job->output, job->output_len); free(job->output); }
  free(job->input);
  free(job);
}

/* [slot, Buffer | error string, slot, …] for a list of finished jobs (oldest first); frees them. */
static napi_value results_of(napi_env env, job_t *ordered, uint32_t count) {
  napi_value results, value, slot;
  int ok = napi_create_array_with_length(env, count * 2, &results) == napi_ok;
  uint32_t i = 0;
  for (job_t *job = ordered; job; job = job->next, i += 2) {
    if (!ok) continue;
    napi_create_uint32(env, job->slot, &slot);
    if (job->output != NULL && job->error[0] == '\0') {
      void *dest;
      if (napi_create_buffer_copy(env, job->output_len, job->output, &dest, &value) != napi_ok) napi_create_string_utf8(env, "out of memory", NAPI_AUTO_LENGTH, &value);
    } else {
      napi_create_string_utf8(env, job->error[0] ? job->error : "operation failed", NAPI_AUTO_LENGTH, &value);
    }
    napi_set_element(env, results, i, slot);
    napi_set_element(env, results, i + 1, value);
  }
  while (ordered) { job_t *next = ordered->next; free_job(ordered); ordered = next; }
  return ok ? results : NULL;
}

static void queue_deliver(uv_async_t *handle) {
  queue_t *q = handle->data;
  uv_mutex_lock(&q->lock);
  job_t *done = q->done_head;
  q->done_head = NULL;
  uv_mutex_unlock(&q->lock);
  if (done == NULL) return;
  /* Oldest first. */
  job_t *ordered = NULL;
  uint32_t count = 0;
  while (done) { job_t *next = done->next; done->next = ordered; ordered = done; done = next; count++; }
  q->in_hands -= count;
  if (q->in_hands == 0) q->quiet_since = uv_hrtime();
  napi_env env = q->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value results = results_of(env, ordered, count), callback, global;
  if (results && napi_get_reference_value(env, q->on_done, &callback) == napi_ok && napi_get_global(env, &global) == napi_ok) {
    /* make_callback: runs the microtasks (the promises it settles) before returning to libuv. */
    napi_make_callback(env, q->context, global, callback, 1, &results, NULL);
  }
  napi_close_handle_scope(env, scope);
}

static void queue_closed(uv_handle_t *handle) {
  free(handle->data);
}

static void queue_cleanup(void *arg) {
  queue_t *q = arg;
  uv_mutex_lock(&q->lock);
  q->stopping = 1;
  uv_cond_broadcast(&q->ready);
  uv_mutex_unlock(&q->lock);
  for (int i = 0; i < q->thread_count; i++) uv_thread_join(&q->threads[i]);
  free(q->threads);
  job_t *lists[3] = { q->todo_head, q->done_head, q->local_head };
  for (int l = 0; l < 3; l++) for (job_t *job = lists[l]; job;) { job_t *next = job->next; free_job(job); job = next; }
  napi_delete_reference(q->env, q->on_done);
  napi_async_destroy(q->env, q->context);
  uv_mutex_destroy(&q->lock);
  uv_cond_destroy(&q->ready);
  uv_close((uv_handle_t *)&q->async, queue_closed);
}

/* The queue an External made by start() holds (each start() makes its own: module
   registries such as jest's may load the JavaScript side more than once per process). */
static queue_t *queue_arg(napi_env env, napi_value value) {
  void *data = NULL;
  if (napi_get_value_external(env, value, &data) != napi_ok) return NULL;
  return data;
}

/* start(threads: number, onDone: (results: Array<number | Buffer | string>) => void): External — a new batched queue. */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t threads;
  napi_valuetype type;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &threads) != napi_ok || threads < 1 || threads > 256 ||
      napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, NULL, "start(threads, onDone) got bad arguments");
    return NULL;
  }
  queue_t *q = calloc(1, sizeof *q);
  if (q == NULL) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  q->env = env;
  uv_loop_t *loop;
  napi_value name;
  NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
  NAPI_CALL(env, napi_create_reference(env, argv[1], 1, &q->on_done));
  NAPI_CALL(env, napi_create_string_utf8(env, "keyless_openssl_queue", NAPI_AUTO_LENGTH, &name));
  NAPI_CALL(env, napi_async_init(env, NULL, name, &q->context));
  uv_mutex_init(&q->lock);
  uv_cond_init(&q->ready);
  uv_async_init(loop, &q->async, queue_deliver);
  q->async.data = q;
  uv_unref((uv_handle_t *)&q->async); /* an idle queue does not keep the process alive */
  q->threads = calloc((size_t)threads, sizeof *q->threads);
  for (int i = 0; i < threads; i++) {
    if (uv_thread_create(&q->threads[i], queue_worker, q) != 0) break;
    q->thread_count++;
  }
  /* The queue lives until the environment ends (its threads and handle are stopped then). */
  NAPI_CALL(env, napi_add_env_cleanup_hook(env, queue_cleanup, q));
  if (q->thread_count == 0) { napi_throw_error(env, NULL, "cannot start worker threads"); return NULL; }
  napi_value external;
  NAPI_CALL(env, napi_create_external(env, q, NULL, NULL, &external));
  return external;
}

/* submit(queue: External, key: External, op, hash, input: Buffer, slot: number): queued until flush(). */
static napi_value submit(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  queue_t *q = argc < 6 ? NULL : queue_arg(env, argv[0]);
  void *pkey; int32_t op, hash; uint32_t slot; void *input; size_t input_len;
  if (q == NULL || napi_get_value_external(env, argv[1], &pkey) != napi_ok ||
      napi_get_value_int32(env, argv[2], &op) != napi_ok || napi_get_value_int32(env, argv[3], &hash) != napi_ok ||
      napi_get_buffer_info(env, argv[4], &input, &input_len) != napi_ok || napi_get_value_uint32(env, argv[5], &slot) != napi_ok) {
    napi_throw_type_error(env, NULL, "submit(queue, key, op, hash, input, slot) got bad arguments");
    return NULL;
  }
  if (op < OP_RSA_PKCS1 || op > OP_DECRYPT_OAEP_SHA256 || hash < HASH_NONE || hash > HASH_SHA512 ||
      ((op == OP_RSA_PSS) && hash == HASH_NONE)) {
    napi_throw_range_error(env, NULL, "unknown operation or hash");
    return NULL;
  }
  job_t *job = calloc(1, sizeof *job);
  if (job == NULL) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  job->input = malloc(input_len ? input_len : 1);
  if (job->input == NULL) { free(job); napi_throw_error(env, NULL, "out of memory"); return NULL; }
  memcpy(job->input, input, input_len);
  job->input_len = input_len;
  job->op = op;
  job->hash = hash;
  job->slot = slot;
  job->pkey = pkey;
  EVP_PKEY_up_ref(job->pkey);
  if (q->local_tail) q->local_tail->next = job; else q->local_head = job;
  q->local_tail = job;
  return NULL;
}

static queue_t *only_queue_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return NULL;
  return queue_arg(env, argv[0]);
}

/*
 * An operation that arrives alone, with no other in the workers' hands, may run right here:
 * handing it over costs a futex wake of a sleeping thread, then a uv_async wake of this loop for
 * the result, two context switches, each a point where a small machine preempts the main
 * thread. Nobody waits behind it: every thread is idle.
 * - ECDSA and Ed25519 (~20-50 us) always: cheaper than the hand-over.
 * - RSA (~0.25 ms for a 2,048-bit key) holds the event loop for its whole length, so only keys
 *   of at most 2,048 bits, and only once the queue has answered everything and stayed quiet
 *   for QUIET_BEFORE_INLINE_RSA_NS. Requests that arrive one at a time at a steady rate would
 *   otherwise be signed one after another on the main thread while the other cores idle
 *   (measured: -25% at 4 sessions x 1 in flight). Alone it takes ~0.3 ms off an RSA
 *   handshake through the edge (docs/benchmarks.md).
 */
#define QUIET_BEFORE_INLINE_RSA_NS (1000 * 1000)

static int runs_inline(const queue_t *q) {
  const job_t *job = q->local_head;
  if (q->in_hands != 0 || job != q->local_tail) return 0;
  if (job->op == OP_ECDSA || job->op == OP_ED25519) return 1;
  return EVP_PKEY_get_bits(job->pkey) <= 2048 && uv_hrtime() - q->quiet_since >= QUIET_BEFORE_INLINE_RSA_NS;
}

/* flush(queue): hands every submitted operation to the workers at once, or runs a lone one
   inline (runs_inline) and returns its result as [slot, Buffer | error string]. */
static napi_value flush(napi_env env, napi_callback_info info) {
  queue_t *q = only_queue_arg(env, info);
  if (q == NULL || q->local_head == NULL) return NULL;
  if (runs_inline(q)) {
    job_t *job = q->local_head;
    q->local_head = q->local_tail = NULL;
    execute(job);
    q->quiet_since = uv_hrtime();
    ctx_cache_clear(); /* the main thread keeps no context: it never sleeps where it could drop them */
    job->next = NULL;
    return results_of(env, job, 1);
  }
  int jobs = 0;
  uint32_t count = 0;
  for (job_t *job = q->local_head; job; job = job->next) {
    if (jobs < q->thread_count) jobs++;
    count++;
  }
  uv_mutex_lock(&q->lock);
  if (q->todo_tail) q->todo_tail->next = q->local_head; else q->todo_head = q->local_head;
  q->todo_tail = q->local_tail;
  /* Wake only as many idle workers as there are new operations: a busy worker takes the
     next one itself, and every needless wake-up is a context switch on a small machine. */
  for (int wake = jobs < q->idle_workers ? jobs : q->idle_workers; wake > 0; wake--) uv_cond_signal(&q->ready);
  uv_mutex_unlock(&q->lock);
  q->local_head = q->local_tail = NULL;
  q->in_hands += count;
  /* While results are awaited the loop must stay alive; ref() is idempotent and cheap. */
  uv_ref((uv_handle_t *)&q->async);
  return NULL;
}

/* idle(queue): no operation is in the queue's hands any more, so the wake-up handle stops keeping the process alive. */
static napi_value idle(napi_env env, napi_callback_info info) {
  queue_t *q = only_queue_arg(env, info);
  if (q != NULL) uv_unref((uv_handle_t *)&q->async);
  return NULL;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_property_descriptor props[] = {
    { "loadKey", NULL, load_key, NULL, NULL, NULL, napi_default, NULL },
    { "start", NULL, start, NULL, NULL, NULL, napi_default, NULL },
    { "submit", NULL, submit, NULL, NULL, NULL, napi_default, NULL },
    { "flush", NULL, flush, NULL, NULL, NULL, napi_default, NULL },
    { "idle", NULL, idle, NULL, NULL, NULL, napi_default, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
