//! libstoker_jni: the JVM's entry points into stoker. Each export converts
//! its Java arguments, calls native/core (or native/flight), and converts
//! the result back; errors and panics become Java exceptions in
//! [`errors`]. This crate does not link libtorch, so a CUDA fault in the
//! server can never take an executor JVM down.

mod client;
pub mod errors;
mod handles;

use jni::objects::{JByteArray, JClass, JDoubleArray, JObjectArray, JString};
use jni::sys::{jdouble, jint, jlong};
use jni::{Env, EnvUnowned};
use stoker_core::protocol::{ModelKey, PartitionKey};
use stoker_core::{Error, State, WeightedSum};

use errors::{BridgeResult, ThrowStoker};

/// `NativeBridge.version()`: the native library's version, so the Java side
/// can check it loaded the library it was built with.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_version<'caller>(
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
    let mut sum: Option<WeightedSum> = None;
    // One state's bytes are copied out of the JVM at a time, so the native
    // side holds at most the running sum and one state.
    for (i, &weight) in w.iter().enumerate() {
        let element = states.get_element(env, i)?;
        if element.is_null() {
            return Err(Error::invalid(format!("state {} is null", i + 1)).into());
        }
        let bytes = env.convert_byte_array(&element)?;
        match &mut sum {
            None => sum = Some(WeightedSum::from_bytes(&bytes, weight)?),
            Some(s) => s.add_bytes(&bytes, weight)?,
        }
    }
    let sum = sum.ok_or_else(|| Error::invalid("no states to average"))?;
    Ok(sum.average()?.to_bytes()?)
}

/// `NativeBridge.averageStates(byte[][] states, double[] weights)`: the
/// weighted average of serialized states, as serialized state bytes.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_averageStates<'caller>(
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

fn bytes(env: &Env<'_>, b: &JByteArray<'_>, what: &str) -> BridgeResult<Vec<u8>> {
    if b.is_null() {
        return Err(Error::invalid(format!("{what} is null")).into());
    }
    Ok(env.convert_byte_array(b)?)
}

/// `NativeBridge.connect(String uri, String token)`: a client handle.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_connect<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    uri: JString<'caller>,
    token: JString<'caller>,
) -> jlong {
    env.with_env(|env| -> BridgeResult<_> {
        let uri = string(env, &uri, "server address")?;
        Ok(client::connect(&uri, optional_string(env, &token)?)?)
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

/// `NativeBridge.putPartition(long handle, String job, int partition,
/// String version, byte[] arrowIpcStream)`: the server's JSON answer.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_putPartition<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    job: JString<'caller>,
    partition: jint,
    version: JString<'caller>,
    ipc: JByteArray<'caller>,
) -> JString<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let key = PartitionKey {
            job: string(env, &job, "job")?,
            partition: u32::try_from(partition)
                .map_err(|_| Error::invalid(format!("partition {partition} is negative")))?,
            version: string(env, &version, "data version")?,
        };
        let data = bytes(env, &ipc, "partition data")?;
        let answer = client::put_partition(handle, key, &data)?;
        Ok(JString::from_str(env, answer)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.predict(long handle, String model, int version (< 0:
/// latest), String keepColumns (comma-separated), byte[] arrowIpcStream)`:
/// predictions as an Arrow IPC stream.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_predict<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    model: JString<'caller>,
    version: jint,
    keep: JString<'caller>,
    ipc: JByteArray<'caller>,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let key = ModelKey {
            name: string(env, &model, "model name")?,
            version: u32::try_from(version).ok(),
        };
        let keep: Vec<String> = optional_string(env, &keep)?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let data = bytes(env, &ipc, "feature batch")?;
        let out = client::predict(handle, key, keep, &data)?;
        Ok(env.byte_array_from_slice(&out)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.partialSum(byte[] state, double weight)`: `weight * state`
/// as a partial sum (what each Spark task emits).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_partialSum<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    state: JByteArray<'caller>,
    weight: jdouble,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let state = bytes(env, &state, "state")?;
        let out = WeightedSum::from_bytes(&state, weight)?.to_bytes()?;
        Ok(env.byte_array_from_slice(&out)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.mergeSums(byte[] a, byte[] b)`: the combine step of
/// treeAggregate.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_mergeSums<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    a: JByteArray<'caller>,
    b: JByteArray<'caller>,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let mut sum = WeightedSum::from_sum_bytes(&bytes(env, &a, "partial sum")?)?;
        sum.merge(&WeightedSum::from_sum_bytes(&bytes(
            env,
            &b,
            "partial sum",
        )?)?)?;
        Ok(env.byte_array_from_slice(&sum.to_bytes()?)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.finishAverage(byte[] partialSum)`: the averaged state.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_finishAverage<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    sum: JByteArray<'caller>,
) -> JByteArray<'caller> {
    env.with_env(|env| -> BridgeResult<_> {
        let sum = WeightedSum::from_sum_bytes(&bytes(env, &sum, "partial sum")?)?;
        Ok(env.byte_array_from_slice(&sum.average()?.to_bytes()?)?)
    })
    .resolve::<ThrowStoker>()
}

/// `NativeBridge.stripOptimizer(byte[] state)`: the state without its
/// optimizer tensors (broadcast when optimizer state is not averaged).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_stoker_jni_NativeBridge_stripOptimizer<'caller>(
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
