//! libstoker_jni: the JVM's entry points into stoker. Each export converts
//! its Java arguments, calls native/core (or native/client), and converts
//! the result back; errors and panics become Java exceptions in
//! [`errors`]. This crate does not link libtorch, so a CUDA fault in the
//! server can never take an executor JVM down.

mod client;
pub mod errors;
mod handles;

use jni::objects::ReleaseMode;
use jni::objects::{JByteArray, JClass, JDoubleArray, JObjectArray, JString};
use jni::sys::{jboolean, jdouble, jint, jlong};
use jni::{Env, EnvUnowned};
use stoker_core::protocol::{column_list, Envelope, ModelKey, PartitionKey, Split};
use stoker_core::running_mean;
use stoker_core::{averaging, Error, State, StateMeta};

use errors::{BridgeResult, ThrowStoker};

/// `NativeBridge.nativeVersion0()`: the native library's version, so the
/// Java side can check it loaded the library it was built with.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_nativeVersion0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
) -> JString<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        Ok(JString::from_str(env, env!("CARGO_PKG_VERSION"))?)
    })
    .resolve::<ThrowStoker>()
}

fn read_states(
    env: &mut Env<'_>,
    states: &JObjectArray<'_, JByteArray<'_>>,
    weights: &JDoubleArray<'_>,
) -> BridgeResult<Vec<u8>> {
    // Checked here: a null array would otherwise surface as a JNI error
    // (a plain StokerException) instead of the invalid input it is.
    if states.is_null() {
        return Err(Error::invalid("states is null").into());
    }
    if weights.is_null() {
        return Err(Error::invalid("weights is null").into());
    }
    let n = states.len(env)?;
    let w_len = weights.len(env)?;
    if n != w_len {
        return Err(Error::invalid(format!("{n} states but {w_len} weights")).into());
    }
    let mut w = vec![0f64; n];
    weights.get_region(env, 0, &mut w)?;
    // One state's bytes are copied out of the JVM at a time, so the native
    // side holds at most the running sum and one state.
    let each = w.iter().enumerate().map(|(i, &weight)| -> BridgeResult<_> {
        let element = states.get_element(env, i)?;
        if element.is_null() {
            return Err(Error::invalid(format!("state {} is null", i + 1)).into());
        }
        Ok((env.convert_byte_array(&element)?, weight))
    });
    Ok(averaging::average(each)?.to_bytes()?)
}

/// `NativeBridge.average0(byte[][] states, double[] weights)`: the
/// weighted average of serialized states, as serialized state bytes.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_average0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    states: JObjectArray<'caller, JByteArray<'caller>>,
    weights: JDoubleArray<'caller>,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let out = read_states(env, &states, &weights)?;
        Ok(env.byte_array_from_slice(&out)?)
    })
    .resolve::<ThrowStoker>()
}

fn string(env: &Env<'_>, s: &JString<'_>, what: &str) -> BridgeResult<String> {
    if s.is_null() {
        return Err(Error::invalid(format!("{what} is null")).into());
    }
    Ok(s.try_to_string(env)?)
}

fn optional_string(env: &Env<'_>, s: &JString<'_>) -> BridgeResult<Option<String>> {
    if s.is_null() {
        return Ok(None);
    }
    Ok(Some(s.try_to_string(env)?))
}

// Java's `byte` is signed: these view JVM byte elements as the `u8` the
// state and protocol code reads, and back.
fn as_bytes(b: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size, alignment and validity; the
    // returned slice borrows `b` for its whole life.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), b.len()) }
}

fn as_bytes_mut(b: &mut [i8]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`, and the borrow of `b` is exclusive.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<u8>(), b.len()) }
}

fn as_jbytes_mut(b: &mut [u8]) -> &mut [i8] {
    // SAFETY: as in `as_bytes`, and the borrow of `b` is exclusive.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<i8>(), b.len()) }
}

fn bytes(env: &Env<'_>, b: &JByteArray<'_>, what: &str) -> BridgeResult<Vec<u8>> {
    if b.is_null() {
        return Err(Error::invalid(format!("{what} is null")).into());
    }
    Ok(env.convert_byte_array(b)?)
}

/// What `read` makes of the bytes of `b`, read in place (no copy out of the
/// JVM). `read` must not call back into the JVM: it runs while the array is
/// pinned.
fn read_pinned<T>(
    env: &mut Env<'_>,
    b: &JByteArray<'_>,
    what: &str,
    read: impl FnOnce(&[u8]) -> stoker_core::Result<T>,
) -> BridgeResult<T> {
    if b.is_null() {
        return Err(Error::invalid(format!("{what} is null")).into());
    }
    // SAFETY: one shared guard on the array, released at the end of this
    // function; `read` gets plain bytes and cannot reach the JVM.
    let elements = unsafe { b.get_elements_critical(env, ReleaseMode::NoCopyBack)? };
    Ok(read(as_bytes(&elements))?)
}

/// The first `length` bytes of `b` (a stream written into a larger array).
fn bytes_prefix(
    env: &Env<'_>,
    b: &JByteArray<'_>,
    length: jint,
    what: &str,
) -> BridgeResult<Vec<u8>> {
    if b.is_null() {
        return Err(Error::invalid(format!("{what} is null")).into());
    }
    let capacity = b.len(env)?;
    let length = usize::try_from(length)
        .ok()
        .filter(|n| *n <= capacity)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{what}: length {length} is outside its array of {capacity} bytes"
            ))
        })?;
    // A zeroed allocation of this size comes straight from fresh zero pages
    // (calloc), so the copy below is the only pass over it.
    let mut out = vec![0u8; length];
    b.get_region(env, 0, as_jbytes_mut(&mut out))?;
    Ok(out)
}

/// `parts` as a Java `byte[][]`, one array per part.
fn byte_arrays<'a>(
    env: &mut Env<'a>,
    parts: &[&[u8]],
) -> BridgeResult<JObjectArray<'a, JByteArray<'a>>> {
    let out = JObjectArray::<JByteArray>::new(env, parts.len(), JByteArray::null())?;
    for (i, part) in parts.iter().enumerate() {
        let array = env.byte_array_from_slice(part)?;
        out.set_element(env, i, &array)?;
    }
    Ok(out)
}

/// `NativeBridge.connect(String uri, String token, String caPem, int
/// livenessSeconds)`: a client handle. `token` and `caPem` may be null (no
/// token; for `grpc+tls://`, the operating system's root certificates);
/// `livenessSeconds` 0 is the default.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_connect<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    uri: JString<'caller>,
    token: JString<'caller>,
    ca_pem: JString<'caller>,
    liveness_seconds: jint,
) -> jlong {
    env.with_env(|env| -> BridgeResult<_> {
        let uri = string(env, &uri, "server address")?;
        let token = optional_string(env, &token)?;
        let ca_pem = optional_string(env, &ca_pem)?;
        Ok(client::connect(&uri, token, ca_pem, liveness_seconds)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.close(long handle)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_close<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
) {
    env.with_env(|_env| -> BridgeResult<_> { Ok(client::close(handle)?) })
        .resolve::<ThrowStoker>()
}

/// `NativeBridge.action(long handle, String type, byte[] body)`: the
/// encoded result (JSON, or an envelope with blobs; docs/protocol.md).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_action<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    kind: JString<'caller>,
    body: JByteArray<'caller>,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let kind = string(env, &kind, "action type")?;
        let body = bytes(env, &body, "action body")?;
        let out = client::action(handle, &kind, body)?;
        Ok(env.byte_array_from_slice(&out)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.actionParts(long handle, String type, String json,
/// String[] blobNames, byte[][] blobs)`: an action whose body is `json` plus
/// the blobs, and its result as `{json, blob...}` (the blobs in the order the
/// result's JSON lists them). Each blob crosses the boundary once each way:
/// it is copied from its Java array straight into the request, and from the
/// response straight into a new Java array (states of hundreds of MB make
/// every extra copy show).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_actionParts<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    kind: JString<'caller>,
    json: JString<'caller>,
    names: JObjectArray<'caller, JString<'caller>>,
    blobs: JObjectArray<'caller, JByteArray<'caller>>,
) -> JObjectArray<'caller, JByteArray<'caller>> {
    env.with_env(|env| -> BridgeResult<_> {
        let kind = string(env, &kind, "action type")?;
        let json: serde_json::Value = serde_json::from_str(&string(env, &json, "action body")?)
            .map_err(|e| Error::invalid(format!("action body is not JSON: {e}")))?;
        let count = if names.is_null() { 0 } else { names.len(env)? };
        if count != if blobs.is_null() { 0 } else { blobs.len(env)? } {
            return Err(Error::invalid("blob names and blobs differ in number").into());
        }
        let mut arrays = Vec::with_capacity(count);
        let mut sizes = Vec::with_capacity(count);
        for i in 0..count {
            let name = names.get_element(env, i)?;
            let name = string(env, &name, "blob name")?;
            let array = blobs.get_element(env, i)?;
            if array.is_null() {
                return Err(Error::invalid(format!("blob '{name}' is null")).into());
            }
            sizes.push((name, array.len(env)?));
            arrays.push(array);
        }
        let listing: Vec<(&str, usize)> = sizes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let prefix = if count == 0 {
            serde_json::to_vec(&json).map_err(|e| Error::internal(format!("encoding JSON: {e}")))?
        } else {
            Envelope::prefix(&json, &listing)?
        };
        // Zeroed in one allocation (fresh zero pages for a large one), so each
        // blob's copy is the only pass over its part of the body.
        let mut body = vec![0u8; prefix.len() + sizes.iter().map(|(_, n)| n).sum::<usize>()];
        body[..prefix.len()].copy_from_slice(&prefix);
        let mut start = prefix.len();
        for (array, (_, size)) in arrays.iter().zip(&sizes) {
            array.get_region(env, 0, as_jbytes_mut(&mut body[start..start + size]))?;
            start += size;
        }
        let out = client::action(handle, &kind, body)?;
        let (json, ranges) = Envelope::split(&out)?;
        let text = json.to_string();
        let parts: Vec<&[u8]> = std::iter::once(text.as_bytes())
            .chain(ranges.into_iter().map(|(_, range)| &out[range]))
            .collect();
        byte_arrays(env, &parts)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.putPartition(long handle, String job, boolean validation,
/// int partition, String version, byte[] arrowIpcStream, int length)`: the
/// server's JSON answer.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_putPartition<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    job: JString<'caller>,
    validation: jboolean,
    partition: jint,
    version: JString<'caller>,
    ipc: JByteArray<'caller>,
    length: jint,
) -> JString<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let key = PartitionKey {
            job: string(env, &job, "job")?,
            split: if validation {
                Split::Validation
            } else {
                Split::Train
            },
            partition: u32::try_from(partition)
                .map_err(|_| Error::invalid(format!("partition {partition} is negative")))?,
            version: string(env, &version, "data version")?,
        };
        let data = bytes_prefix(env, &ipc, length, "partition data")?;
        let answer = client::put_partition(handle, key, data)?;
        Ok(JString::from_str(env, answer)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.evaluationMetrics(String[] evaluations)`: the metrics of the
/// union of the partitions' evaluations (what `evaluate` returned for each),
/// merged in array order, as JSON `{"rows", "task", "metrics"}`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_evaluationMetrics0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    evaluations: JObjectArray<'caller, JString<'caller>>,
) -> JString<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        if evaluations.is_null() {
            return Err(Error::invalid("evaluations is null").into());
        }
        let n = evaluations.len(env)?;
        let mut texts = Vec::with_capacity(n);
        for i in 0..n {
            let element = evaluations.get_element(env, i)?;
            if element.is_null() {
                return Err(Error::invalid(format!("evaluation {} is null", i + 1)).into());
            }
            texts.push(string(env, &element, "evaluation")?);
        }
        let merged = stoker_core::evaluation::merged_metrics(&texts)?;
        Ok(JString::from_str(env, merged.to_string())?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.predict(long handle, String model, int version (< 0:
/// latest), String keepColumns (comma-separated), byte[] arrowIpcStream, int
/// length)`: predictions as an Arrow IPC stream.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_predict<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    model: JString<'caller>,
    version: jint,
    keep: JString<'caller>,
    ipc: JByteArray<'caller>,
    length: jint,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let key = ModelKey {
            name: string(env, &model, "model name")?,
            version: u32::try_from(version).ok(),
        };
        let keep = column_list(&optional_string(env, &keep)?.unwrap_or_default());
        let data = bytes_prefix(env, &ipc, length, "feature batch")?;
        let out = client::predict(handle, key, keep, data)?;
        Ok(env.byte_array_from_slice(&out)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.merge0(byte[] mean, double meanWeight, byte[] other,
/// double otherWeight)`: merges `other` into `mean` in place (the combine
/// step of a round's aggregation; docs/engine.md).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_merge0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    mean: JByteArray<'caller>,
    mean_weight: jdouble,
    other: JByteArray<'caller>,
    other_weight: jdouble,
) {
    env.with_env(|env| -> BridgeResult<()> {
        if mean.is_null() || other.is_null() {
            return Err(Error::invalid("a state to average is null").into());
        }
        running_mean::check_weights(mean_weight, other_weight)?;
        // The mean of a state with itself is that state.
        if env.is_same_object(&mean, &other)? {
            return Ok(());
        }
        // SAFETY: two distinct arrays (checked above), each with one elements
        // guard, so the mutable and the shared slice do not alias. Critical
        // access may pause the JVM's garbage collector: nothing in the scope
        // calls back into the JVM, and it lasts one pass over the bytes.
        let mut dst = unsafe { mean.get_elements_critical(env, ReleaseMode::CopyBack)? };
        let src = unsafe { other.get_elements_critical(env, ReleaseMode::NoCopyBack)? };
        running_mean::merge(
            as_bytes_mut(&mut dst),
            mean_weight,
            as_bytes(&src),
            other_weight,
        )?;
        Ok(())
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.withSamples0(byte[] mean, long samples)`: the merged
/// mean as the round's state, its `samples` metadata set.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_withSamples0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    mean: JByteArray<'caller>,
    samples: jlong,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let out = read_pinned(env, &mean, "state", |b| {
            running_mean::with_samples(b, samples.max(0) as u64)
        })?;
        Ok(env.byte_array_from_slice(&out)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.outerStep0(byte[] previous, byte[] averaged, byte[] momentum
/// (null before the first step), double lr, double momentumFactor)`: `{next
/// state, new momentum}` (stoker_core::outer).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_outerStep0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    previous: JByteArray<'caller>,
    averaged: JByteArray<'caller>,
    momentum: JByteArray<'caller>,
    lr: jdouble,
    mu: jdouble,
) -> JObjectArray<'caller, JByteArray<'caller>> {
    env.with_env(|env| -> BridgeResult<_> {
        let previous = bytes(env, &previous, "previous state")?;
        let averaged = bytes(env, &averaged, "averaged state")?;
        let momentum = if momentum.is_null() {
            None
        } else {
            Some(bytes(env, &momentum, "outer momentum")?)
        };
        let (next, momentum) =
            stoker_core::outer::nesterov_step(&previous, &averaged, momentum.as_deref(), lr, mu)?;
        byte_arrays(env, &[&next, &momentum])
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.linalgCombine0(byte[] a, byte[] b)`: matrix result `b`
/// (moments or a product, docs/linalg.md) folded into `a`, as new bytes
/// (stoker_core::linalg::combine).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_linalgCombine0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    a: JByteArray<'caller>,
    b: JByteArray<'caller>,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let a = bytes(env, &a, "matrix result")?;
        let b = bytes(env, &b, "matrix result")?;
        Ok(env.byte_array_from_slice(&stoker_core::linalg::combine(&a, &b)?)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.linalgValues0(byte[] product)`: a combined product's (or
/// sums') values, row-major, and its row count last.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_linalgValues0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    product: JByteArray<'caller>,
) -> JDoubleArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let p = read_pinned(env, &product, "matrix product", |b| {
            stoker_core::linalg::Product::from_bytes(b)
        })?;
        let mut values = p.values;
        values.push(p.rows as f64);
        let out = env.new_double_array(values.len())?;
        out.set_region(env, 0, &values)?;
        Ok(out)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.withoutOptimizer0(byte[] state)`: the state without its
/// optimizer tensors (broadcast when optimizer state is not averaged).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_withoutOptimizer0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    state: JByteArray<'caller>,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let state = State::from_bytes(&bytes(env, &state, "state")?)?;
        Ok(env.byte_array_from_slice(&state.without_optimizer().to_bytes()?)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.meta0(byte[] state)`: the state's metadata, read from its
/// header alone (`StateMeta::read`), as a JSON object of strings as the
/// safetensors header holds them: `model_id`, `round`, `samples` and the
/// engine's others.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_meta0<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    state: JByteArray<'caller>,
) -> JString<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let meta = read_pinned(env, &state, "state", StateMeta::read)?;
        let mut fields: serde_json::Map<String, serde_json::Value> =
            meta.extra.into_iter().map(|(k, v)| (k, v.into())).collect();
        fields.insert("model_id".into(), meta.model_id.into());
        fields.insert("round".into(), meta.round.to_string().into());
        fields.insert("samples".into(), meta.samples.to_string().into());
        let text = serde_json::Value::Object(fields).to_string();
        Ok(JString::from_str(env, text)?)
    })
    .resolve::<ThrowStoker>()
}
