{
  "targets": [
    {
      "target_name": "keyless_openssl",
      "sources": ["backends/file/native/openssl_keys.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "keyless_pkcs11",
      "sources": ["backends/pkcs11/native/token_calls.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "defines": ["NAPI_VERSION=8"],
      "conditions": [["OS!='win'", { "libraries": ["-ldl"] }]]
    }
  ]
}
