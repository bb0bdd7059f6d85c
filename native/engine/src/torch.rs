//! Small bridges between libtorch (tch) and stoker's error type and host
//! buffers. Every libtorch call in the engine goes through a fallible `f_*`
//! method and is mapped here; the plain tch methods panic on error.

use stoker_core::state::{DType, TensorData};
use stoker_core::{Error, ErrorKind};
use tch::{Device, Kind, TchError, Tensor};

/// libtorch error messages carry a C++ backtrace after the first lines;
/// users need the first part only.
pub fn clean_message(err: &TchError) -> String {
    let text = err.to_string();
    let cut = text
        .find("\nException raised from")
        .or_else(|| text.find("Exception raised from"))
        .unwrap_or(text.len());
    text[..cut].trim().to_string()
}

/// Maps a tch error to a stoker error of `kind`, prefixed with `context`.
pub fn err(kind: ErrorKind, context: impl std::fmt::Display) -> impl FnOnce(TchError) -> Error {
    move |e| Error::new(kind, format!("{context}: {}", clean_message(&e)))
}

/// Maps a tch error that only a bug could cause.
pub fn internal(context: impl std::fmt::Display) -> impl FnOnce(TchError) -> Error {
    err(ErrorKind::Internal, context)
}

/// A new contiguous CPU tensor of `rows x width` elements of `E` (f32 for
/// training and inference, f64 for matrix work that asks for it), filled by
/// `fill` straight into the tensor's storage: the one host copy on the way
/// from Arrow to the device.
pub fn filled_matrix<E: stoker_core::Element + tch::kind::Element>(
    rows: usize,
    width: usize,
    fill: impl FnOnce(&mut [E]) -> stoker_core::Result<()>,
) -> stoker_core::Result<Tensor> {
    let t = Tensor::f_empty([rows as i64, width as i64], (E::KIND, Device::Cpu))
        .map_err(internal("allocating the feature matrix"))?;
    let len = rows * width;
    if len > 0 {
        // SAFETY: `t` was just allocated as a contiguous CPU tensor of kind
        // `E::KIND` (tch's kind for exactly this Rust type) with `len`
        // elements; no other reference to its storage exists while the
        // slice lives, and the slice does not outlive `t`.
        let data = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut E, len) };
        fill(data)?;
    }
    Ok(t)
}

/// Copies a tensor's elements to a host `Vec<E>`, row-major (casting to
/// `E` and moving to the CPU if needed).
pub fn to_vec<E: tch::kind::Element + Copy>(t: &Tensor) -> stoker_core::Result<Vec<E>> {
    let flat = t
        .f_to_kind(E::KIND)
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_view([-1]))
        .map_err(internal("copying a tensor to the host"))?;
    Vec::<E>::try_from(&flat).map_err(internal("reading tensor values"))
}

/// [`to_vec`] as f32 (model outputs, states).
pub fn to_vec_f32(t: &Tensor) -> stoker_core::Result<Vec<f32>> {
    to_vec(t)
}

/// An F32 state tensor holds exactly the 4 bytes per element its shape needs
/// (what reading it as raw f32 relies on).
fn check_f32_bytes(data: &TensorData) -> stoker_core::Result<()> {
    if data.data.len() == data.numel() * 4 {
        return Ok(());
    }
    Err(stoker_core::Error::invalid(format!(
        "state tensor '{}' has {} bytes, its shape {:?} needs {}",
        data.name,
        data.data.len(),
        data.shape,
        data.numel() * 4
    )))
}

/// A state tensor as a host float tensor. F32 data (stoker's states, always
/// little-endian, like the hosts libtorch runs on here) is copied once, straight
/// from the state's bytes; other dtypes are converted.
pub fn tensor_from_state(data: &TensorData) -> stoker_core::Result<Tensor> {
    let shape: Vec<i64> = data.shape.iter().map(|&d| d as i64).collect();
    if data.dtype == DType::F32 && cfg!(target_endian = "little") {
        // at_tensor_of_data reads numel * 4 bytes: check there are that many.
        check_f32_bytes(data)?;
        return Tensor::f_from_data_size(&data.data, &shape, Kind::Float)
            .map_err(internal("loading a state tensor"));
    }
    // Through f64: exact for F64 and for I64 counters up to 2^53 (f32 would
    // round a BatchNorm's num_batches_tracked above 2^24).
    Tensor::f_from_slice(&data.to_f64())
        .and_then(|t| t.f_view(shape.as_slice()))
        .map_err(internal("loading a state tensor"))
}

/// Copies a state tensor's values into `target` (any device and float kind,
/// same number of elements). F32 data goes straight from the state's bytes:
/// `copy_` is the only copy, no host tensor is allocated on the way.
pub fn copy_from_state(target: &mut Tensor, data: &TensorData) -> stoker_core::Result<()> {
    let name = data.name.clone();
    let copy = |target: &mut Tensor, src: &Tensor| {
        let _guard = tch::no_grad_guard();
        target
            .f_copy_(src)
            .map(|_| ())
            .map_err(internal(format!("loading tensor '{name}'")))
    };
    if data.dtype != DType::F32 || cfg!(target_endian = "big") {
        return copy(target, &tensor_from_state(data)?);
    }
    check_f32_bytes(data)?;
    let shape: Vec<i64> = data.shape.iter().map(|&d| d as i64).collect();
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    // SAFETY: the view aliases `data.data`, which holds exactly numel * 4
    // bytes (checked above) of little-endian f32 and outlives the view: the
    // view is only read by the `copy_` below (which leaves no reference to
    // its source behind) and dropped before this function returns. libtorch's
    // CPU kernels load unaligned f32 correctly.
    let view = unsafe {
        Tensor::f_from_blob(
            data.data.as_ptr(),
            &shape,
            &strides,
            Kind::Float,
            Device::Cpu,
        )
    }
    .map_err(internal("viewing a state tensor"))?;
    let copied = copy(target, &view);
    drop(view);
    copied
}

/// A tensor's values as a state tensor (float32; one copy on the host).
pub fn state_tensor(name: String, t: &Tensor) -> stoker_core::Result<TensorData> {
    let flat = t
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .map_err(internal("copying a tensor to the host"))?;
    let numel = flat.numel();
    let data = if cfg!(target_endian = "little") {
        let mut bytes = vec![0u8; numel * 4];
        flat.f_copy_data_u8(&mut bytes, numel)
            .map_err(internal("reading tensor values"))?;
        bytes
    } else {
        return Ok(TensorData::from_f32(name, shape(t), &to_vec_f32(t)?));
    };
    Ok(TensorData {
        name,
        dtype: DType::F32,
        shape: shape(t),
        data: data.into(),
    })
}

/// A buffer as a state tensor in its own element type: int64 counters stay
/// I64 and float64 buffers F64 (they are averaged in their own types, see
/// docs/engine.md); float32 buffers take the same path as parameters.
pub fn buffer_state_tensor(name: String, t: &Tensor) -> stoker_core::Result<TensorData> {
    let dtype = match t.kind() {
        Kind::Int64 => DType::I64,
        Kind::Double => DType::F64,
        _ => return state_tensor(name, t),
    };
    if cfg!(target_endian = "big") {
        return Err(Error::internal(
            "stoker states are little-endian; this host is not",
        ));
    }
    let flat = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(internal(format!("copying buffer '{name}' to the host")))?;
    let numel = flat.numel();
    let mut bytes = vec![0u8; numel * 8];
    flat.f_copy_data_u8(&mut bytes, numel)
        .map_err(internal(format!("reading buffer '{name}'")))?;
    Ok(TensorData {
        name,
        dtype,
        shape: shape(t),
        data: bytes.into(),
    })
}

/// Shape of a tensor as usizes.
pub fn shape(t: &Tensor) -> Vec<usize> {
    t.size().into_iter().map(|d| d as usize).collect()
}
