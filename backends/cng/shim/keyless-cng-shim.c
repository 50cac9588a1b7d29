/*
 * keyless-cng-shim: performs private-key operations with Windows CNG keys for keylessd.
 *
 * keylessd spawns one shim per cng backend and talks to it over stdin/stdout with
 * length-prefixed binary frames (docs/cng.md, backends/cng/codec.ts). A reader thread
 * parses requests and queues them; a few worker threads run them and write answers in
 * whatever order they finish, under one lock. stderr is a log, never protocol. The shim
 * exits 0 when stdin closes, after the queued requests are answered.
 *
 * Usage: keyless-cng-shim.exe [--provider NAME] [--workers N] [--allow-test-import]
 */
#include <windows.h>
#include <bcrypt.h>
#include <ncrypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#ifndef STATUS_NOT_SUPPORTED
#define STATUS_NOT_SUPPORTED ((NTSTATUS)0xC00000BBL)
#endif
#ifndef STATUS_NOT_FOUND
#define STATUS_NOT_FOUND ((NTSTATUS)0xC0000225L)
#endif

/* Frame layout: see docs/cng.md. All integers little-endian. */
#define MAX_FRAME (1u << 20)
#define MAX_SIGNATURE 1024 /* RSA-8192 */
#define MIN_REQUEST 10 /* id 4 + op 1 + name length 2 + flags 1 + padding 1 + hash 1 */

enum operation { OP_PING = 0, OP_PUBLIC_KEY = 1, OP_SIGN = 2, OP_DECRYPT = 3, OP_IMPORT = 4 };
enum status { ST_OK = 0, ST_BAD_FRAME = 1, ST_BAD_OPERATION = 2, ST_KEY_NOT_FOUND = 3, ST_BAD_INPUT = 4, ST_UNSUPPORTED = 5, ST_CRYPTO_FAILURE = 6 };
enum padding { PAD_NONE = 0, PAD_PKCS1 = 1, PAD_PSS = 2, PAD_OAEP_SHA256 = 3, PAD_RAW = 4 };
enum hash { HASH_NONE = 0, HASH_MD5_SHA1 = 1, HASH_SHA1 = 2, HASH_SHA256 = 3, HASH_SHA384 = 4, HASH_SHA512 = 5 };
#define FLAG_MACHINE_KEY 0x01

struct request {
  struct request *next;
  UINT32 id;
  BYTE operation;
  BYTE flags;
  BYTE padding;
  BYTE hash;
  WCHAR *name; /* NUL-terminated */
  const BYTE *payload;
  DWORD payload_length;
  BYTE *frame; /* owns name's source bytes and payload */
  BOOL malformed;
};

/* A key opened (or imported) once and kept for the life of the process. */
struct key {
  struct key *next;
  WCHAR *name;
  BOOL machine;
  NCRYPT_KEY_HANDLE ncrypt; /* one of these two is set */
  BCRYPT_KEY_HANDLE bcrypt;
};

struct result {
  BYTE status;
  DWORD code; /* SECURITY_STATUS / NTSTATUS behind a failure, 0 when the shim itself refused */
  const char *message;
  BYTE *data;
  DWORD data_length;
};

static NCRYPT_PROV_HANDLE provider;
static BOOL allow_test_import;

static CRITICAL_SECTION queue_lock;
static CONDITION_VARIABLE queue_ready;
static struct request *queue_head, *queue_tail;
static BOOL input_closed;

static CRITICAL_SECTION output_lock;
static HANDLE output;

static SRWLOCK keys_lock = SRWLOCK_INIT;
static struct key *keys;

static void log_line(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fputs("keyless-cng-shim: ", stderr);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  fflush(stderr);
  va_end(args);
}

static UINT32 get_u32(const BYTE *p) { return (UINT32)p[0] | (UINT32)p[1] << 8 | (UINT32)p[2] << 16 | (UINT32)p[3] << 24; }
static void put_u32(BYTE *p, UINT32 v) { p[0] = (BYTE)v; p[1] = (BYTE)(v >> 8); p[2] = (BYTE)(v >> 16); p[3] = (BYTE)(v >> 24); }

static BOOL read_exactly(HANDLE input, BYTE *buffer, DWORD length) {
  while (length > 0) {
    DWORD got = 0;
    if (!ReadFile(input, buffer, length, &got, NULL) || got == 0) return FALSE;
    buffer += got;
    length -= got;
  }
  return TRUE;
}

static BOOL write_exactly(const BYTE *buffer, DWORD length) {
  while (length > 0) {
    DWORD put = 0;
    if (!WriteFile(output, buffer, length, &put, NULL) || put == 0) return FALSE;
    buffer += put;
    length -= put;
  }
  return TRUE;
}

/* response: u32 length | u32 id | u8 status | result (OK: data; else u32 code | UTF-8 message) */
static void respond(UINT32 id, const struct result *r) {
  DWORD body = r->status == ST_OK ? r->data_length : 4 + (DWORD)strlen(r->message);
  BYTE *frame = malloc(9 + body);
  if (!frame) {
    log_line("out of memory answering request %u", id);
    ExitProcess(3);
  }
  put_u32(frame, 5 + body);
  put_u32(frame + 4, id);
  frame[8] = r->status;
  if (r->status == ST_OK) {
    if (body) memcpy(frame + 9, r->data, body);
  } else {
    put_u32(frame + 9, r->code);
    memcpy(frame + 13, r->message, body - 4);
  }
  EnterCriticalSection(&output_lock);
  BOOL written = write_exactly(frame, 9 + body);
  LeaveCriticalSection(&output_lock);
  free(frame);
  if (!written) {
    /* keylessd is gone or closed our stdout: nothing left to answer to. */
    log_line("cannot write to stdout (error %lu), exiting", GetLastError());
    ExitProcess(0);
  }
}

static struct result fail(BYTE status, DWORD code, const char *message) {
  struct result r = {status, code, message, NULL, 0};
  return r;
}

static struct result ok(BYTE *data, DWORD length) {
  struct result r = {ST_OK, 0, NULL, data, length};
  return r;
}

/* Sorts a CNG failure into a status; the numeric code travels along for the log. */
static struct result cng_failure(DWORD code, const char *message) {
  switch (code) {
    case (DWORD)NTE_BAD_KEYSET:
    case (DWORD)NTE_NO_KEY:
    case (DWORD)NTE_NOT_FOUND:
    case (DWORD)STATUS_NOT_FOUND:
    case 0x80070002: /* HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND) */
      return fail(ST_KEY_NOT_FOUND, code, message);
    case (DWORD)NTE_NOT_SUPPORTED:
    case (DWORD)NTE_BAD_ALGID:
    case (DWORD)STATUS_NOT_SUPPORTED:
      return fail(ST_UNSUPPORTED, code, message);
    default:
      return fail(ST_CRYPTO_FAILURE, code, message);
  }
}

static struct key *find_key(const WCHAR *name, BOOL machine) {
  struct key *found = NULL;
  AcquireSRWLockShared(&keys_lock);
  for (struct key *k = keys; k; k = k->next) {
    if (k->machine == machine && wcscmp(k->name, name) == 0) {
      found = k;
      break;
    }
  }
  ReleaseSRWLockShared(&keys_lock);
  return found;
}

/* Adds `fresh` unless a key of that name arrived meanwhile; returns the one in the cache. */
static struct key *remember_key(struct key *fresh) {
  AcquireSRWLockExclusive(&keys_lock);
  for (struct key *k = keys; k; k = k->next) {
    if (k->machine == fresh->machine && wcscmp(k->name, fresh->name) == 0) {
      ReleaseSRWLockExclusive(&keys_lock);
      return k;
    }
  }
  fresh->next = keys;
  keys = fresh;
  ReleaseSRWLockExclusive(&keys_lock);
  return fresh;
}

static void free_key(struct key *k) {
  if (k->ncrypt) NCryptFreeObject(k->ncrypt);
  if (k->bcrypt) BCryptDestroyKey(k->bcrypt);
  free(k->name);
  free(k);
}

static struct key *new_key(const WCHAR *name, BOOL machine) {
  struct key *k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->name = _wcsdup(name);
  k->machine = machine;
  if (!k->name) {
    free(k);
    return NULL;
  }
  return k;
}

/* The cached handle of a persisted key, opened silently on first use. */
static struct result open_key(const struct request *q, struct key **out) {
  BOOL machine = (q->flags & FLAG_MACHINE_KEY) != 0;
  *out = find_key(q->name, machine);
  if (*out) return ok(NULL, 0);
  if (!provider) return fail(ST_UNSUPPORTED, 0, "no key storage provider is open");
  struct key *k = new_key(q->name, machine);
  if (!k) return fail(ST_CRYPTO_FAILURE, 0, "out of memory");
  SECURITY_STATUS s = NCryptOpenKey(provider, &k->ncrypt, q->name, 0, NCRYPT_SILENT_FLAG | (machine ? NCRYPT_MACHINE_KEY_FLAG : 0));
  if (s != ERROR_SUCCESS) {
    k->ncrypt = 0;
    free_key(k);
    return cng_failure((DWORD)s, "NCryptOpenKey failed");
  }
  *out = remember_key(k);
  if (*out != k) free_key(k);
  return ok(NULL, 0);
}

static struct result export_public(struct key *k, LPCWSTR type, BYTE **blob, DWORD *length) {
  DWORD size = 0;
  LONG s = k->ncrypt ? NCryptExportKey(k->ncrypt, 0, type, NULL, NULL, 0, &size, NCRYPT_SILENT_FLAG) : BCryptExportKey(k->bcrypt, NULL, type, NULL, 0, &size, 0);
  if (s != 0) return cng_failure((DWORD)s, "exporting the public key failed");
  *blob = malloc(size);
  if (!*blob) return fail(ST_CRYPTO_FAILURE, 0, "out of memory");
  s = k->ncrypt ? NCryptExportKey(k->ncrypt, 0, type, NULL, *blob, size, &size, NCRYPT_SILENT_FLAG) : BCryptExportKey(k->bcrypt, NULL, type, *blob, size, &size, 0);
  if (s != 0) {
    free(*blob);
    *blob = NULL;
    return cng_failure((DWORD)s, "exporting the public key failed");
  }
  *length = size;
  return ok(*blob, size);
}

/* BCRYPT_RSAPUBLIC_BLOB or BCRYPT_ECCPUBLIC_BLOB; keylessd builds the SPKI from it. */
static struct result public_key(const struct request *q) {
  struct key *k;
  struct result r = open_key(q, &k);
  if (r.status != ST_OK) return r;
  BYTE *blob = NULL;
  DWORD length = 0;
  r = export_public(k, BCRYPT_RSAPUBLIC_BLOB, &blob, &length);
  if (r.status == ST_OK) return r;
  struct result ecc = export_public(k, BCRYPT_ECCPUBLIC_BLOB, &blob, &length);
  return ecc.status == ST_OK ? ecc : r;
}

static BOOL hash_of(BYTE hash, LPCWSTR *algorithm, DWORD *length) {
  switch (hash) {
    case HASH_MD5_SHA1: *algorithm = NULL; *length = 36; return TRUE;
    case HASH_SHA1: *algorithm = BCRYPT_SHA1_ALGORITHM; *length = 20; return TRUE;
    case HASH_SHA256: *algorithm = BCRYPT_SHA256_ALGORITHM; *length = 32; return TRUE;
    case HASH_SHA384: *algorithm = BCRYPT_SHA384_ALGORITHM; *length = 48; return TRUE;
    case HASH_SHA512: *algorithm = BCRYPT_SHA512_ALGORITHM; *length = 64; return TRUE;
    default: return FALSE;
  }
}

/* Signs a digest: PKCS#1 v1.5 or PSS (salt = digest length) for RSA, none for ECDSA (r||s). */
static struct result sign(const struct request *q) {
  LPCWSTR algorithm;
  DWORD digest_length;
  if (!hash_of(q->hash, &algorithm, &digest_length)) return fail(ST_UNSUPPORTED, 0, "unknown hash id");
  if (q->payload_length != digest_length) return fail(ST_BAD_INPUT, 0, "digest length does not match the hash");
  BCRYPT_PKCS1_PADDING_INFO pkcs1 = {algorithm};
  BCRYPT_PSS_PADDING_INFO pss = {algorithm, digest_length};
  void *info = NULL;
  DWORD flags = 0;
  switch (q->padding) {
    case PAD_PKCS1: info = &pkcs1; flags = BCRYPT_PAD_PKCS1; break;
    case PAD_PSS:
      if (!algorithm) return fail(ST_UNSUPPORTED, 0, "PSS is not defined over MD5-SHA1");
      info = &pss; flags = BCRYPT_PAD_PSS; break;
    case PAD_NONE: break;
    default: return fail(ST_UNSUPPORTED, 0, "padding is not a signature padding");
  }
  struct key *k;
  struct result r = open_key(q, &k);
  if (r.status != ST_OK) return r;
  /* One call into a buffer big enough for any signature: Wine's BCrypt cannot size ECDSA
   * signatures with a NULL buffer (STATUS_BUFFER_TOO_SMALL), and it saves a call. */
  BYTE *signature = malloc(MAX_SIGNATURE);
  if (!signature) return fail(ST_CRYPTO_FAILURE, 0, "out of memory");
  DWORD size = 0;
  LONG s = k->ncrypt ? NCryptSignHash(k->ncrypt, info, (BYTE *)q->payload, digest_length, signature, MAX_SIGNATURE, &size, flags | NCRYPT_SILENT_FLAG)
                     : BCryptSignHash(k->bcrypt, info, (BYTE *)q->payload, digest_length, signature, MAX_SIGNATURE, &size, flags);
  if (s != 0) {
    free(signature);
    return cng_failure((DWORD)s, "signing failed");
  }
  return ok(signature, size);
}

/* RSA decryption: raw (the whole modulus-length block) or OAEP with SHA-256 and no label. */
static struct result decrypt(const struct request *q) {
  BCRYPT_OAEP_PADDING_INFO oaep = {BCRYPT_SHA256_ALGORITHM, NULL, 0};
  void *info = NULL;
  DWORD flags;
  switch (q->padding) {
    case PAD_RAW: flags = NCRYPT_NO_PADDING_FLAG; break;
    case PAD_OAEP_SHA256: info = &oaep; flags = NCRYPT_PAD_OAEP_FLAG; break;
    default: return fail(ST_UNSUPPORTED, 0, "padding is not a decryption padding");
  }
  struct key *k;
  struct result r = open_key(q, &k);
  if (r.status != ST_OK) return r;
  /* The plaintext is never longer than the ciphertext (one modulus-length block). */
  BYTE *plain = malloc(q->payload_length ? q->payload_length : 1);
  if (!plain) return fail(ST_CRYPTO_FAILURE, 0, "out of memory");
  DWORD size = 0;
  BYTE *input = (BYTE *)q->payload;
  LONG s = k->ncrypt ? NCryptDecrypt(k->ncrypt, input, q->payload_length, info, plain, q->payload_length, &size, flags | NCRYPT_SILENT_FLAG)
                     : BCryptDecrypt(k->bcrypt, input, q->payload_length, info, NULL, 0, plain, q->payload_length, &size, flags);
  if (s != 0) {
    free(plain);
    return cng_failure((DWORD)s, "decryption failed");
  }
  return ok(plain, size);
}

static LPCWSTR ecdsa_algorithm(ULONG magic) {
  switch (magic) {
    case BCRYPT_ECDSA_PRIVATE_P256_MAGIC: return BCRYPT_ECDSA_P256_ALGORITHM;
    case BCRYPT_ECDSA_PRIVATE_P384_MAGIC: return BCRYPT_ECDSA_P384_ALGORITHM;
    case BCRYPT_ECDSA_PRIVATE_P521_MAGIC: return BCRYPT_ECDSA_P521_ALGORITHM;
    default: return NULL;
  }
}

/*
 * Test only (--allow-test-import): registers a private key blob under a name, as if it
 * were a persisted key. NCrypt first, as production keys are; BCrypt when NCrypt refuses
 * (Wine's software KSP cannot import EC keys).
 */
static struct result import_key(const struct request *q) {
  if (!allow_test_import) return fail(ST_UNSUPPORTED, 0, "import is disabled (test-only; start the shim with --allow-test-import)");
  if (q->payload_length < sizeof(BCRYPT_KEY_BLOB)) return fail(ST_BAD_INPUT, 0, "key blob is too short");
  if (find_key(q->name, (q->flags & FLAG_MACHINE_KEY) != 0)) return fail(ST_BAD_INPUT, 0, "a key of that name is already registered");
  ULONG magic = get_u32(q->payload);
  BOOL rsa = magic == BCRYPT_RSAPRIVATE_MAGIC || magic == BCRYPT_RSAFULLPRIVATE_MAGIC;
  LPCWSTR blob_type = rsa ? (magic == BCRYPT_RSAPRIVATE_MAGIC ? BCRYPT_RSAPRIVATE_BLOB : BCRYPT_RSAFULLPRIVATE_BLOB) : BCRYPT_ECCPRIVATE_BLOB;
  LPCWSTR ecdsa = ecdsa_algorithm(magic);
  if (!rsa && !ecdsa) return fail(ST_UNSUPPORTED, 0, "key blob is neither an RSA nor an ECDSA private blob");
  struct key *k = new_key(q->name, (q->flags & FLAG_MACHINE_KEY) != 0);
  if (!k) return fail(ST_CRYPTO_FAILURE, 0, "out of memory");
  BYTE *blob = (BYTE *)q->payload;
  SECURITY_STATUS s = provider ? NCryptImportKey(provider, 0, blob_type, NULL, &k->ncrypt, blob, q->payload_length, NCRYPT_SILENT_FLAG) : NTE_NOT_SUPPORTED;
  if (s != ERROR_SUCCESS) {
    k->ncrypt = 0;
    BCRYPT_ALG_HANDLE algorithm;
    NTSTATUS n = BCryptOpenAlgorithmProvider(&algorithm, rsa ? BCRYPT_RSA_ALGORITHM : ecdsa, NULL, 0);
    if (n == 0) {
      n = BCryptImportKeyPair(algorithm, NULL, blob_type, &k->bcrypt, blob, q->payload_length, 0);
      BCryptCloseAlgorithmProvider(algorithm, 0);
    }
    if (n != 0) {
      k->bcrypt = NULL;
      free_key(k);
      return cng_failure((DWORD)n, "importing the key failed in NCrypt and BCrypt");
    }
    log_line("NCrypt refused the import (0x%08lx); key imported through BCrypt", (unsigned long)s);
  }
  if (remember_key(k) != k) {
    free_key(k);
    return fail(ST_BAD_INPUT, 0, "a key of that name is already registered");
  }
  return ok(NULL, 0);
}

static struct result run(const struct request *q) {
  if (q->malformed) return fail(ST_BAD_FRAME, 0, "request frame is truncated or its key name is not UTF-8");
  switch (q->operation) {
    case OP_PING: return ok(NULL, 0);
    case OP_PUBLIC_KEY: return public_key(q);
    case OP_SIGN: return sign(q);
    case OP_DECRYPT: return decrypt(q);
    case OP_IMPORT: return import_key(q);
    default: return fail(ST_BAD_OPERATION, 0, "unknown operation");
  }
}

/* Splits a request body (everything after the length) into its fields. */
static void parse_request(struct request *q, DWORD length) {
  const BYTE *p = q->frame;
  q->id = get_u32(p);
  q->operation = p[4];
  if (length < MIN_REQUEST) {
    q->malformed = TRUE;
    return;
  }
  DWORD name_length = (DWORD)p[5] | (DWORD)p[6] << 8;
  if (7 + name_length + 3 > length) {
    q->malformed = TRUE;
    return;
  }
  int wide = name_length ? MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, (LPCSTR)p + 7, (int)name_length, NULL, 0) : 0;
  if (name_length && wide <= 0) {
    q->malformed = TRUE;
    return;
  }
  q->name = calloc((size_t)wide + 1, sizeof(WCHAR));
  if (!q->name) {
    q->malformed = TRUE;
    return;
  }
  if (wide) MultiByteToWideChar(CP_UTF8, 0, (LPCSTR)p + 7, (int)name_length, q->name, wide);
  const BYTE *rest = p + 7 + name_length;
  q->flags = rest[0];
  q->padding = rest[1];
  q->hash = rest[2];
  q->payload = rest + 3;
  q->payload_length = length - (7 + name_length + 3);
}

static DWORD WINAPI worker(LPVOID unused) {
  (void)unused;
  for (;;) {
    EnterCriticalSection(&queue_lock);
    while (!queue_head && !input_closed) SleepConditionVariableCS(&queue_ready, &queue_lock, INFINITE);
    struct request *q = queue_head;
    if (q) {
      queue_head = q->next;
      if (!queue_head) queue_tail = NULL;
    }
    LeaveCriticalSection(&queue_lock);
    if (!q) return 0;
    struct result r = run(q);
    respond(q->id, &r);
    free(r.data);
    free(q->name);
    free(q->frame);
    free(q);
  }
}

static void enqueue(struct request *q) {
  EnterCriticalSection(&queue_lock);
  if (queue_tail) queue_tail->next = q;
  else queue_head = q;
  queue_tail = q;
  LeaveCriticalSection(&queue_lock);
  WakeConditionVariable(&queue_ready);
}

/* Reads frames until stdin closes. Returns the process exit code. */
static int read_requests(void) {
  HANDLE input = GetStdHandle(STD_INPUT_HANDLE);
  for (;;) {
    BYTE header[4];
    if (!read_exactly(input, header, 4)) return 0;
    DWORD length = get_u32(header);
    if (length < 5 || length > MAX_FRAME) {
      /* Without a trustworthy length the stream cannot be resynchronised. */
      log_line("request frame length %lu is outside 5..%u; the stream is unusable, exiting", (unsigned long)length, MAX_FRAME);
      return 3;
    }
    struct request *q = calloc(1, sizeof *q);
    BYTE *frame = malloc(length);
    if (!q || !frame) {
      log_line("out of memory reading a request");
      return 3;
    }
    q->frame = frame;
    if (!read_exactly(input, frame, length)) {
      log_line("stdin closed inside a frame");
      free(frame);
      free(q);
      return 0;
    }
    parse_request(q, length);
    enqueue(q);
  }
}

int wmain(int argc, WCHAR **argv) {
  const WCHAR *provider_name = MS_KEY_STORAGE_PROVIDER;
  int workers = 4;
  for (int i = 1; i < argc; i++) {
    if (wcscmp(argv[i], L"--provider") == 0 && i + 1 < argc) provider_name = argv[++i];
    else if (wcscmp(argv[i], L"--workers") == 0 && i + 1 < argc) workers = _wtoi(argv[++i]);
    else if (wcscmp(argv[i], L"--allow-test-import") == 0) allow_test_import = TRUE;
    else {
      log_line("unknown argument %ls (usage: keyless-cng-shim.exe [--provider NAME] [--workers N] [--allow-test-import])", argv[i]);
      return 2;
    }
  }
  if (workers < 1 || workers > 64) {
    log_line("--workers must be 1 to 64");
    return 2;
  }
  SECURITY_STATUS s = NCryptOpenStorageProvider(&provider, provider_name, 0);
  if (s != ERROR_SUCCESS) {
    log_line("cannot open key storage provider \"%ls\" (0x%08lx)", provider_name, (unsigned long)s);
    return 2;
  }
  if (allow_test_import) log_line("test-only key import is enabled");

  output = GetStdHandle(STD_OUTPUT_HANDLE);
  InitializeCriticalSection(&queue_lock);
  InitializeCriticalSection(&output_lock);
  InitializeConditionVariable(&queue_ready);
  HANDLE threads[64];
  for (int i = 0; i < workers; i++) {
    threads[i] = CreateThread(NULL, 0, worker, NULL, 0, NULL);
    if (!threads[i]) {
      log_line("cannot start worker thread (error %lu)", GetLastError());
      return 3;
    }
  }

  int code = read_requests();
  if (code != 0) return code; /* queued requests are dropped; keylessd fails them and restarts the shim */

  EnterCriticalSection(&queue_lock);
  input_closed = TRUE;
  LeaveCriticalSection(&queue_lock);
  WakeAllConditionVariable(&queue_ready);
  WaitForMultipleObjects((DWORD)workers, threads, TRUE, INFINITE);
  for (struct key *k = keys; k;) {
    struct key *next = k->next;
    free_key(k);
    k = next;
  }
  NCryptFreeObject(provider);
  return 0;
}
