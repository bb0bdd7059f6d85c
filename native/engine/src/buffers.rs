//! A TorchScript module's buffers: the tensors it holds that are not
//! parameters (BatchNorm's `running_mean`, `running_var` and
//! `num_batches_tracked`, anything registered with `register_buffer`).
//!
//! They belong in a trained model's state: BatchNorm updates its running
//! statistics in place during training and uses them at inference, so a
//! state without them predicts with the statistics training started from.
//! tch 0.24 lists a module's parameters only, so the listing comes from the
//! small C++ shim in `csrc/module_buffers.cpp`, built by this crate's
//! build.rs against the same libtorch.
//!
//! The tensors returned alias the module's buffers: copying into them (a
//! state being loaded) updates the module. They are listed afresh whenever
//! they are needed, because a module may reassign a buffer attribute during
//! forward, which would leave an old alias pointing at a tensor no longer in
//! the module.

use std::ffi::{c_char, c_void, CStr};

use stoker_core::{Error, Result};
use tch::{CModule, Tensor};

extern "C" {
    fn stoker_named_buffers(
        module: *mut c_void,
        data: *mut c_void,
        f: extern "C" fn(*mut c_void, *const c_char, *mut torch_sys::C_tensor),
    ) -> *mut c_char;
    fn stoker_free_message(message: *mut c_char);
}

// `CModule` (tch 0.24, pinned in Cargo.lock) is a struct with one field, its
// `*mut CModule_` handle, which tch keeps private. A struct whose size is
// that of its only field holds the field at offset 0; this check makes a tch
// upgrade that changes the layout fail to compile instead of misreading.
const _: () = assert!(std::mem::size_of::<CModule>() == std::mem::size_of::<*mut c_void>());

/// The module's buffers by their `state_dict` names (`bn.running_mean`),
/// recursing into submodules, in the module's own order.
pub fn named_buffers(module: &CModule) -> Result<Vec<(String, Tensor)>> {
    // SAFETY: by the size check above, the first pointer-sized word of a
    // `CModule` is its handle to the `torch::jit::Module` (a
    // `torch::jit::script::Module*` in torch-sys, the type the shim takes).
    // `module` is borrowed for the whole call, so the handle stays valid, and
    // the shim only reads the module's buffer list.
    let handle = unsafe { *(module as *const CModule as *const *mut c_void) };
    let mut found: Vec<(String, Tensor)> = Vec::new();
    // SAFETY: `found` outlives the call and is only touched by `collect`,
    // which the shim calls synchronously on this thread. The shim catches
    // every C++ exception and returns its message instead of unwinding.
    let message =
        unsafe { stoker_named_buffers(handle, &mut found as *mut _ as *mut c_void, collect) };
    if message.is_null() {
        return Ok(found);
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim
    // allocated with strdup; it is read once and freed by the shim's own
    // free, exactly once.
    let text = unsafe {
        let text = CStr::from_ptr(message).to_string_lossy().into_owned();
        stoker_free_message(message);
        text
    };
    Err(Error::invalid(format!(
        "reading the TorchScript module's buffers: {text}"
    )))
}

extern "C" fn collect(data: *mut c_void, name: *const c_char, tensor: *mut torch_sys::C_tensor) {
    // SAFETY: `data` is the `Vec` passed by `named_buffers` above, borrowed
    // mutably for the duration of the shim call; `name` is a NUL-terminated
    // string valid during this callback; `tensor` is a new `at::Tensor*`
    // whose ownership passes to us, which is what `Tensor::from_ptr` takes
    // (tch frees it on drop).
    unsafe {
        let found = &mut *(data as *mut Vec<(String, Tensor)>);
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        found.push((name, Tensor::from_ptr(tensor)));
    }
}
