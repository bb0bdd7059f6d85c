// What tch 0.24 does not expose of a TorchScript module: its buffers
// (BatchNorm's running_mean, running_var and num_batches_tracked, and any
// `register_buffer`). tch gives `named_parameters` only, so a trained model
// would leave with the statistics it started with (docs/engine.md).
//
// One function, in the shape of tch's own atm_named_parameters: it calls
// back once per buffer with a new at::Tensor* that aliases the module's
// buffer (the callee owns the handle; tch frees it with `delete`, as for any
// tensor it wraps). A C++ exception never crosses into Rust: its message is
// returned as a malloc'd string the caller frees with stoker_free_message.
#include <cstdlib>
#include <cstring>
#include <exception>

#include <torch/csrc/jit/api/module.h>

extern "C" {

typedef void (*stoker_buffer_fn)(void *data, const char *name, at::Tensor *tensor);

char *stoker_named_buffers(torch::jit::Module *module, void *data, stoker_buffer_fn f) {
  try {
    for (const auto &b : module->named_buffers(/*recurse=*/true)) {
      f(data, b.name.c_str(), new at::Tensor(b.value));
    }
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception while listing TorchScript buffers");
  }
}

void stoker_free_message(char *message) { free(message); }
}
