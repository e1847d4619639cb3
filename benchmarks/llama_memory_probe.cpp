// Loads a GGUF with llama.cpp the way LocalAI v4.9.0's llama-cpp backend does (grpc-server.cpp params_parse:
// n_batch = n_ubatch = batch, unified KV cache, SWA cache not full-size, flash attention auto, one output row per
// slot as the server reserves) and lets llama.cpp log its model, KV and compute buffer sizes; exits after the
// context is created. Built and run by benchmarks/gguf_fit.py against the static libraries of a llama.cpp build.
//
//   llama_memory_probe MODEL CONTEXT SLOTS BATCH KV_TYPE(f16|q8_0|q4_0) FLASH(auto|on|off) GPU_LAYERS REPACK(0|1)
//
// REPACK 0 turns off the CPU's repacked weight copies (the CPU_REPACK buffer, which a GPU does not have): for
// synthetic models whose repacking would only cost this machine's RAM.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

static ggml_type kv_type(const char * name) {
    if (!strcmp(name, "q8_0")) return GGML_TYPE_Q8_0;
    if (!strcmp(name, "q4_0")) return GGML_TYPE_Q4_0;
    return GGML_TYPE_F16;
}

static llama_flash_attn_type flash(const char * name) {
    if (!strcmp(name, "on")) return LLAMA_FLASH_ATTN_TYPE_ENABLED;
    if (!strcmp(name, "off")) return LLAMA_FLASH_ATTN_TYPE_DISABLED;
    return LLAMA_FLASH_ATTN_TYPE_AUTO;
}

int main(int argc, char ** argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s MODEL CONTEXT SLOTS BATCH KV_TYPE FLASH GPU_LAYERS REPACK\n", argv[0]);
        return 2;
    }
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = atoi(argv[7]);
    mparams.use_extra_bufts = atoi(argv[8]) != 0;
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (model == nullptr) {
        fprintf(stderr, "failed to load %s\n", argv[1]);
        return 1;
    }

    const uint32_t slots = (uint32_t) atoi(argv[3]);
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) atoi(argv[2]);
    cparams.n_batch = cparams.n_ubatch = (uint32_t) atoi(argv[4]);
    cparams.n_seq_max = slots;
    cparams.n_outputs_max = slots;  // tools/server: server_output_limits without speculative decoding
    cparams.n_outputs_max_per_seq = 1;
    cparams.kv_unified = true;
    cparams.swa_full = false;
    cparams.type_k = cparams.type_v = kv_type(argv[5]);
    cparams.flash_attn_type = flash(argv[6]);
    cparams.n_threads = cparams.n_threads_batch = 1;

    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        fprintf(stderr, "failed to create the context\n");
        return 1;
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
