/*
 * One private-key operation on a PKCS#11 token, start to finish, off the event loop.
 *
 * Why this exists: pkcs11js runs C_Sign and C_Decrypt on a thread but C_SignInit and
 * C_DecryptInit only synchronously, on the event loop. SoftHSM2 does most of its work in
 * the Init call (it decrypts the stored key there): measured on this machine, C_SignInit
 * costs twice what the P-256 signature itself does, and a network HSM pays a round trip in
 * it. Here Init and the operation run together on a libuv pool thread, and the event loop
 * only hands over the inputs and takes back the result.
 *
 * The module is the one pkcs11js loaded and initialized (dlopen, or LoadLibrary on Windows,
 * hands back the same instance), so sessions, handles and the login are shared with it.
 * Handles arrive as pkcs11js's Buffers: a CK_ULONG in the machine's byte order.
 */
#define _DEFAULT_SOURCE /* explicit_bzero; before any system header */
#include <node_api.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../../src/edge/pkcs11-module/pkcs11.h"

#define NAPI_CALL(env, call)                                                        \
  do {                                                                              \
    if ((call) != napi_ok) {                                                        \
      napi_throw_error((env), NULL, "keyless_pkcs11: N-API call failed: " #call);   \
      return NULL;                                                                  \
    }                                                                               \
  } while (0)

enum operation { OP_SIGN = 0, OP_DECRYPT = 1 };
enum parameters { PARAMS_NONE = 0, PARAMS_RSA_PSS = 1, PARAMS_RSA_OAEP = 2 };

typedef struct {
  CK_FUNCTION_LIST_PTR functions;
  int op;
  CK_SESSION_HANDLE session;
  CK_OBJECT_HANDLE key;
  CK_MECHANISM mechanism;
  union {
    CK_RSA_PKCS_PSS_PARAMS pss;
    CK_RSA_PKCS_OAEP_PARAMS oaep;
  } params;
  unsigned char *input;
  CK_ULONG input_len;
  unsigned char *output;
  CK_ULONG output_len;
  /* The failed call and its return value; CKR_OK when the operation succeeded. */
  const char *failed_call;
  CK_RV rv;
  napi_deferred deferred;
  napi_async_work work;
} job_t;

/* The value of a pkcs11js handle (a Buffer holding a CK_ULONG). */
static int handle_of(napi_env env, napi_value value, CK_ULONG *out) {
  void *data;
  size_t length;
  if (napi_get_buffer_info(env, value, &data, &length) != napi_ok || length != sizeof(CK_ULONG)) return 0;
  memcpy(out, data, sizeof(CK_ULONG));
  return 1;
}

static int ulong_of(napi_env env, napi_value value, CK_ULONG *out) {
  int64_t number;
  if (napi_get_value_int64(env, value, &number) != napi_ok || number < 0) return 0;
  *out = (CK_ULONG)number;
  return 1;
}

/*
 * The operation's output, asking the module for the length when the caller's guess was
 * short: C_Sign and C_Decrypt keep the operation active after CKR_BUFFER_TOO_SMALL (the
 * only result that does not end it), so the second call finishes it.
 */
static CK_RV finish(job_t *job) {
  CK_FUNCTION_LIST_PTR f = job->functions;
  for (int attempt = 1;; attempt++) {
    CK_ULONG length = job->output_len;
    CK_RV rv = job->op == OP_SIGN ? f->C_Sign(job->session, job->input, job->input_len, job->output, &length)
                                  : f->C_Decrypt(job->session, job->input, job->input_len, job->output, &length);
    if (rv == CKR_OK) job->output_len = length;
    if (rv != CKR_BUFFER_TOO_SMALL || attempt == 2) return rv;
    unsigned char *larger = realloc(job->output, length);
    if (!larger) return CKR_HOST_MEMORY;
    job->output = larger;
    job->output_len = length;
  }
}

static void execute(napi_env env, void *data) {
  (void)env;
  job_t *job = data;
  CK_FUNCTION_LIST_PTR f = job->functions;
  job->failed_call = job->op == OP_SIGN ? "C_SignInit" : "C_DecryptInit";
  job->rv = job->op == OP_SIGN ? f->C_SignInit(job->session, &job->mechanism, job->key)
                               : f->C_DecryptInit(job->session, &job->mechanism, job->key);
  if (job->rv != CKR_OK) return;
  job->failed_call = job->op == OP_SIGN ? "C_Sign" : "C_Decrypt";
  job->rv = finish(job);
}

/* A decrypted premaster secret must not outlive its job in freed memory. */
static void wipe(unsigned char *bytes, size_t length) {
  if (!bytes) return;
#ifdef _WIN32
  SecureZeroMemory(bytes, length);
#else
  explicit_bzero(bytes, length);
#endif
}

static void free_job(job_t *job) {
  wipe(job->input, job->input_len);
  wipe(job->output, job->output_len);
  free(job->input);
  free(job->output);
  free(job);
}

/* Rejects with an Error whose `code` is the CK_RV, as pkcs11js's errors carry it. */
static void reject(napi_env env, job_t *job) {
  char text[96];
  napi_value message, error, code;
  snprintf(text, sizeof text, "%s failed: CKR 0x%lx", job->failed_call, (unsigned long)job->rv);
  if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message) != napi_ok || napi_create_error(env, NULL, message, &error) != napi_ok ||
      napi_create_double(env, (double)job->rv, &code) != napi_ok || napi_set_named_property(env, error, "code", code) != napi_ok) {
    napi_fatal_error("keyless_pkcs11", NAPI_AUTO_LENGTH, "cannot build a rejection", NAPI_AUTO_LENGTH);
  }
  napi_reject_deferred(env, job->deferred, error);
}

static void complete(napi_env env, napi_status status, void *data) {
  job_t *job = data;
  napi_value result;
  if (status == napi_ok && job->rv == CKR_OK) {
    void *copy;
    if (napi_create_buffer_copy(env, job->output_len, job->output, &copy, &result) != napi_ok) {
      napi_fatal_error("keyless_pkcs11", NAPI_AUTO_LENGTH, "cannot allocate the result", NAPI_AUTO_LENGTH);
    }
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    if (status != napi_ok) {
      job->failed_call = "the pool thread";
      job->rv = CKR_GENERAL_ERROR;
    }
    reject(env, job);
  }
  napi_delete_async_work(env, job->work);
  free_job(job);
}

/* bind(path): the function list of the (already loaded) module at `path`, as an external. */
static napi_value bind_module(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], external;
  char path[4096];
  size_t length;
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &length) != napi_ok || length >= sizeof path - 1) {
    napi_throw_type_error(env, NULL, "bind(path): path must be a string");
    return NULL;
  }
  /* Never closed: the module is process-global and stays loaded for the life of the process. */
#ifdef _WIN32
  HMODULE library = LoadLibraryA(path);
  if (!library) {
    napi_throw_error(env, NULL, "LoadLibrary failed for the PKCS#11 module");
    return NULL;
  }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)(void (*)(void))GetProcAddress(library, "C_GetFunctionList");
#else
  void *library = dlopen(path, RTLD_NOW);
  if (!library) {
    napi_throw_error(env, NULL, dlerror());
    return NULL;
  }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(library, "C_GetFunctionList");
#endif
  CK_FUNCTION_LIST_PTR functions = NULL;
  if (!get || get(&functions) != CKR_OK || !functions) {
    napi_throw_error(env, NULL, "the module has no usable C_GetFunctionList");
    return NULL;
  }
  NAPI_CALL(env, napi_create_external(env, functions, NULL, NULL, &external));
  return external;
}

/*
 * run(functions, operation, session, key, mechanism, paramsKind, hashAlg, mgf, saltOrSource,
 *     input, outputLength): a Promise of the output Buffer; rejects with `code` = the CK_RV.
 */
static napi_value run_operation(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11], promise, name;
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  job_t *job = calloc(1, sizeof *job);
  if (!job) {
    napi_throw_error(env, NULL, "keyless_pkcs11: out of memory");
    return NULL;
  }
  int32_t op = -1, kind = -1;
  CK_ULONG mechanism_type, hash, mgf, extra, output_len;
  void *input;
  size_t input_len;
  int ok = argc == 11 && napi_get_value_external(env, argv[0], (void **)&job->functions) == napi_ok &&
           napi_get_value_int32(env, argv[1], &op) == napi_ok && (op == OP_SIGN || op == OP_DECRYPT) &&
           handle_of(env, argv[2], &job->session) && handle_of(env, argv[3], &job->key) && ulong_of(env, argv[4], &mechanism_type) &&
           napi_get_value_int32(env, argv[5], &kind) == napi_ok && ulong_of(env, argv[6], &hash) && ulong_of(env, argv[7], &mgf) &&
           ulong_of(env, argv[8], &extra) && napi_get_buffer_info(env, argv[9], &input, &input_len) == napi_ok &&
           ulong_of(env, argv[10], &output_len) && output_len > 0;
  if (!ok || (kind != PARAMS_NONE && kind != PARAMS_RSA_PSS && kind != PARAMS_RSA_OAEP)) {
    free(job);
    napi_throw_type_error(env, NULL, "run(functions, operation, session, key, mechanism, paramsKind, hashAlg, mgf, saltOrSource, input, outputLength): bad arguments");
    return NULL;
  }
  job->op = op;
  job->mechanism.mechanism = mechanism_type;
  if (kind == PARAMS_RSA_PSS) {
    job->params.pss = (CK_RSA_PKCS_PSS_PARAMS){ .hashAlg = hash, .mgf = mgf, .sLen = extra };
    job->mechanism.pParameter = &job->params.pss;
    job->mechanism.ulParameterLen = sizeof job->params.pss;
  } else if (kind == PARAMS_RSA_OAEP) {
    job->params.oaep = (CK_RSA_PKCS_OAEP_PARAMS){ .hashAlg = hash, .mgf = mgf, .source = extra, .pSourceData = NULL, .ulSourceDataLen = 0 };
    job->mechanism.pParameter = &job->params.oaep;
    job->mechanism.ulParameterLen = sizeof job->params.oaep;
  }
  /* Copies: the thread must not read memory the garbage collector may move or free. */
  job->input = malloc(input_len ? input_len : 1);
  job->output = malloc(output_len);
  if (!job->input || !job->output) {
    free_job(job);
    napi_throw_error(env, NULL, "keyless_pkcs11: out of memory");
    return NULL;
  }
  memcpy(job->input, input, input_len);
  job->input_len = input_len;
  job->output_len = output_len;
  NAPI_CALL(env, napi_create_promise(env, &job->deferred, &promise));
  NAPI_CALL(env, napi_create_string_utf8(env, "keyless_pkcs11", NAPI_AUTO_LENGTH, &name));
  NAPI_CALL(env, napi_create_async_work(env, NULL, name, execute, complete, job, &job->work));
  NAPI_CALL(env, napi_queue_async_work(env, job->work));
  return promise;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_value fn;
  NAPI_CALL(env, napi_create_function(env, "bind", NAPI_AUTO_LENGTH, bind_module, NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "bind", fn));
  NAPI_CALL(env, napi_create_function(env, "run", NAPI_AUTO_LENGTH, run_operation, NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "run", fn));
  return exports;
}
