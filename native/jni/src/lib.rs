//! libstoker_jni: the JVM's entry points into stoker. Each export converts
//! its Java arguments, calls native/core (or native/flight), and converts
//! the result back; errors and panics become Java exceptions in
//! [`errors`]. This crate does not link libtorch, so a CUDA fault in the
//! server can never take an executor JVM down.

pub mod errors;

use jni::objects::{JByteArray, JClass, JDoubleArray, JObjectArray, JString};
use jni::{Env, EnvUnowned};
use stoker_core::{Error, WeightedSum};

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
