//! libstoker_jni inside a real JVM: each test calls a `NativeBridge` native
//! the way Java code does and checks the exception class and message Java
//! sees. Unit tests of the Rust functions cannot catch a wrong JNI name or
//! signature, an exception class missing from the shim, or a panic crossing
//! into the JVM; these do.
//!
//! Needs a JDK (`javac` on PATH; libjvm found through JAVA_HOME or `java`)
//! and the cdylib of the same profile (`cargo build --release -p stoker-jni`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use jni::errors::Error as JniError;
use jni::objects::{JByteArray, JDoubleArray, JObject, JObjectArray, JString, JValue, JValueOwned};
use jni::signature::MethodSignature;
use jni::strings::JNIStr;
use jni::{jni_sig, jni_str, Env, InitArgsBuilder, JNIVersion, JavaVM};
use stoker_core::{State, StateMeta, TensorData};

const INVALID: &str = "dev.stoker.InvalidInputException";

/// target/<profile>: the test executable is target/<profile>/deps/jvm-<hash>.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps")
        .to_path_buf()
}

/// The cdylib cargo built next to this test, in the same profile.
fn cdylib() -> PathBuf {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let lib = profile_dir().join(format!("{DLL_PREFIX}stoker_jni{DLL_SUFFIX}"));
    assert!(
        lib.is_file(),
        "{} is missing: build the cdylib first with `cargo build --release -p stoker-jni` \
         (the same profile as these tests)",
        lib.display()
    );
    lib
}

/// Compiles the shim's exception classes and NativeBridge into a directory
/// of this process's own, so concurrent test processes never share one.
fn compile_java() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../jvm-shim/src/main/java/dev/stoker");
    let mut sources = Vec::new();
    for dir in [src.clone(), src.join("jni")] {
        for entry in std::fs::read_dir(&dir).expect("reading the jvm-shim sources") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "java") {
                sources.push(path);
            }
        }
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jni-test-classes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new("javac")
        .arg("-d")
        .arg(&out)
        .args(&sources)
        .status()
        .unwrap_or_else(|e| panic!("running javac (is a JDK on PATH?): {e}"));
    assert!(status.success(), "javac failed on {}", src.display());
    out
}

/// The one JVM of this process (JNI allows a single VM per process), with
/// libstoker_jni loaded.
fn jvm() -> &'static JavaVM {
    static JVM: OnceLock<JavaVM> = OnceLock::new();
    JVM.get_or_init(|| {
        let lib = cdylib();
        let args = InitArgsBuilder::new()
            .version(JNIVersion::V1_8)
            .option(format!("-Djava.class.path={}", compile_java().display()))
            // Makes the JVM check every JNI call the library makes.
            .option("-Xcheck:jni")
            .build()
            .expect("JVM options");
        let vm = JavaVM::new(args).expect("starting a JVM (set JAVA_HOME to a JDK)");
        vm.attach_current_thread(|env| -> jni::errors::Result<()> {
            let path = env.new_string(lib.to_string_lossy())?;
            env.call_static_method(
                jni_str!("java/lang/System"),
                jni_str!("load"),
                jni_sig!("(Ljava/lang/String;)V"),
                &[JValue::from(&path)],
            )?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("loading {}: {e}", lib.display()));
        vm
    })
}

/// Runs `f` on this thread, attached to the JVM.
fn with_env(f: impl FnOnce(&mut Env<'_>)) {
    jvm()
        .attach_current_thread(|env| -> jni::errors::Result<()> {
            f(env);
            Ok(())
        })
        .expect("a Java exception was left pending");
}

/// Calls `NativeBridge.<name>`: its value, or the (class, message) of the
/// exception it threw, which is then cleared.
fn call<'l>(
    env: &mut Env<'l>,
    name: &JNIStr,
    sig: MethodSignature<'_, '_>,
    args: &[JValue<'_>],
) -> Result<JValueOwned<'l>, (String, String)> {
    match env.call_static_method(jni_str!("dev/stoker/jni/NativeBridge"), name, sig, args) {
        Ok(value) => Ok(value),
        Err(JniError::JavaException) => match env.exception_catch() {
            Err(JniError::CaughtJavaException { name, msg, .. }) => Err((name, msg)),
            other => panic!("no exception to catch after JavaException: {other:?}"),
        },
        Err(e) => panic!("calling NativeBridge.{name}: {e}"),
    }
}

/// Asserts the call threw `class` with a message containing `message`.
fn assert_throws(thrown: Result<JValueOwned<'_>, (String, String)>, class: &str, message: &str) {
    match thrown {
        Ok(v) => panic!("expected {class} ({message}), the call returned {v:?}"),
        Err((c, m)) => {
            assert_eq!(c, class, "exception class (message: {m})");
            assert!(m.contains(message), "message {m:?} lacks {message:?}");
        }
    }
}

fn java_bytes<'l>(env: &mut Env<'l>, bytes: &[u8]) -> JByteArray<'l> {
    env.byte_array_from_slice(bytes).expect("new byte[]")
}

/// Calls a state native that must not throw with `inputs` as its `byte[]`
/// arguments (then `weight`, if any); the `byte[]` it returned.
fn call_bytes(
    env: &mut Env<'_>,
    name: &JNIStr,
    sig: MethodSignature<'_, '_>,
    inputs: &[&[u8]],
    weight: Option<f64>,
) -> Vec<u8> {
    let arrays: Vec<JByteArray<'_>> = inputs.iter().map(|b| java_bytes(env, b)).collect();
    let mut args: Vec<JValue<'_>> = arrays.iter().map(JValue::from).collect();
    args.extend(weight.map(JValue::from));
    let value = call(env, name, sig, &args).unwrap_or_else(|(c, m)| panic!("{name} threw {c}: {m}"));
    let array = env
        .cast_local::<JByteArray>(value.l().expect("an object"))
        .expect("a byte[]");
    assert!(!array.is_null(), "{name} returned null");
    env.convert_byte_array(&array).expect("byte[] contents")
}

/// `byte[][]` of the given states (None: a null element) and `double[]`.
fn states_and_weights<'l>(
    env: &mut Env<'l>,
    states: &[Option<&[u8]>],
    weights: &[f64],
) -> (JObjectArray<'l, JByteArray<'l>>, JDoubleArray<'l>) {
    let array = JObjectArray::<JByteArray>::new(env, states.len(), JByteArray::null())
        .expect("new byte[][]");
    for (i, s) in states.iter().enumerate() {
        if let Some(s) = s {
            let element = java_bytes(env, s);
            array.set_element(env, i, &element).expect("byte[][] element");
        }
    }
    let w = env.new_double_array(weights.len()).expect("new double[]");
    w.set_region(env, 0, weights).expect("double[] contents");
    (array, w)
}

fn state(weight: [f32; 4], bias: [f32; 2]) -> State {
    State {
        meta: StateMeta {
            model_id: "jvm-test".into(),
            round: 1,
            samples: 10,
            ..Default::default()
        },
        tensors: vec![
            TensorData::from_f32("fc.bias", vec![2], &bias),
            TensorData::from_f32("fc.weight", vec![2, 2], &weight),
            TensorData::from_f32("optimizer/fc.weight/momentum", vec![2, 2], &weight),
        ],
    }
}

const PARTIAL_SUM: MethodSignature<'static, 'static> = jni_sig!("([BD)[B");
const FINISH: MethodSignature<'static, 'static> = jni_sig!("([B)[B");
const CLOSE: MethodSignature<'static, 'static> = jni_sig!("(J)V");
const ACTION: MethodSignature<'static, 'static> = jni_sig!("(JLjava/lang/String;[B)[B");
const CONNECT: MethodSignature<'static, 'static> =
    jni_sig!("(Ljava/lang/String;Ljava/lang/String;)J");

#[test]
fn version_is_the_crate_version() {
    with_env(|env| {
        let v = call(env, jni_str!("version"), jni_sig!("()Ljava/lang/String;"), &[]);
        let obj = v.expect("version() threw").l().expect("an object");
        let s = env.cast_local::<JString>(obj).expect("a String");
        assert_eq!(s.try_to_string(env).expect("text"), env!("CARGO_PKG_VERSION"));
    });
}

#[test]
fn fewer_weights_than_states_is_invalid_input() {
    let a = state([1.0; 4], [0.0; 2]).to_bytes().expect("state bytes");
    with_env(|env| {
        let (states, weights) = states_and_weights(env, &[Some(&a), Some(&a)], &[1.0]);
        let args = [JValue::from(&states), JValue::from(&weights)];
        let thrown = call(env, jni_str!("averageStates"), jni_sig!("([[B[D)[B"), &args);
        assert_throws(thrown, INVALID, "2 states but 1 weights");
    });
}

#[test]
fn corrupt_bytes_are_invalid_input() {
    with_env(|env| {
        let junk = java_bytes(env, b"definitely not safetensors");
        let thrown = call(env, jni_str!("partialSum"), PARTIAL_SUM, &[(&junk).into(), 1.0.into()]);
        assert_throws(thrown, INVALID, "not a valid stoker state");
        // A state where a partial sum belongs is refused by what it is.
        let s = state([1.0; 4], [0.0; 2]).to_bytes().expect("state bytes");
        let s = java_bytes(env, &s);
        let thrown = call(env, jni_str!("finishAverage"), FINISH, &[(&s).into()]);
        assert_throws(thrown, INVALID, "not a partial sum");
    });
}

#[test]
fn null_arguments_are_invalid_input() {
    let a = state([1.0; 4], [0.0; 2]).to_bytes().expect("state bytes");
    with_env(|env| {
        let null = JObject::null();
        let thrown = call(env, jni_str!("partialSum"), PARTIAL_SUM, &[(&null).into(), 1.0.into()]);
        assert_throws(thrown, INVALID, "state is null");
        let thrown = call(env, jni_str!("stripOptimizer"), FINISH, &[(&null).into()]);
        assert_throws(thrown, INVALID, "state is null");
        let (states, weights) = states_and_weights(env, &[Some(&a), None], &[1.0, 1.0]);
        let args = [JValue::from(&states), JValue::from(&weights)];
        let thrown = call(env, jni_str!("averageStates"), jni_sig!("([[B[D)[B"), &args);
        assert_throws(thrown, INVALID, "state 2 is null");
        let thrown = call(env, jni_str!("connect"), CONNECT, &[(&null).into(), (&null).into()]);
        assert_throws(thrown, INVALID, "server address is null");
    });
}

#[test]
fn handle_zero_is_invalid_input_not_a_crash() {
    with_env(|env| {
        let thrown = call(env, jni_str!("close"), CLOSE, &[0i64.into()]);
        assert_throws(thrown, INVALID, "handle 0 is closed or was never opened");
        let kind = env.new_string("health").expect("String");
        let body = java_bytes(env, b"{}");
        let args = [0i64.into(), (&kind).into(), (&body).into()];
        let thrown = call(env, jni_str!("action"), ACTION, &args);
        assert_throws(thrown, INVALID, "handle 0 is closed or was never opened");
    });
}

#[test]
fn closed_and_unknown_handles_are_invalid_input() {
    // A listener that never answers still completes the TCP connect, which
    // is all `connect` waits for, so this issues a real handle to close.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri = format!("grpc://{}", listener.local_addr().expect("address"));
    with_env(|env| {
        let uri = env.new_string(&uri).expect("String");
        let handle = call(env, jni_str!("connect"), CONNECT, &[(&uri).into(), (&JObject::null()).into()])
            .expect("connect threw")
            .j()
            .expect("a long");
        assert_ne!(handle, 0);
        call(env, jni_str!("close"), CLOSE, &[handle.into()]).expect("first close threw");
        let thrown = call(env, jni_str!("close"), CLOSE, &[handle.into()]);
        assert_throws(thrown, INVALID, &format!("handle {handle} is closed or was never opened"));
        let kind = env.new_string("health").expect("String");
        let body = java_bytes(env, b"{}");
        for h in [handle, i64::MAX, -7] {
            let args = [h.into(), (&kind).into(), (&body).into()];
            let thrown = call(env, jni_str!("action"), ACTION, &args);
            assert_throws(thrown, INVALID, &format!("handle {h} is closed or was never opened"));
        }
    });
    drop(listener);
}

#[test]
fn connect_without_a_server_is_server_unavailable() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let uri = format!("grpc://127.0.0.1:{port}");
    with_env(|env| {
        let juri = env.new_string(&uri).expect("String");
        let thrown = call(env, jni_str!("connect"), CONNECT, &[(&juri).into(), (&JObject::null()).into()]);
        let expected = format!("cannot reach the stoker server at {uri}");
        assert_throws(thrown, "dev.stoker.ServerUnavailableException", &expected);
    });
}

#[test]
fn states_round_trip_through_partial_sums() {
    let a = state([1.0, 2.0, 3.0, 4.0], [0.5, -0.5]);
    let b = state([5.0, 6.0, 7.0, 8.0], [2.5, 1.5]);
    let (a_bytes, b_bytes) = (a.to_bytes().expect("a"), b.to_bytes().expect("b"));
    let (partial_sum, finish) = (jni_str!("partialSum"), jni_str!("finishAverage"));
    with_env(|env| {
        // One state, weighted: its average is itself.
        let sum = call_bytes(env, partial_sum, PARTIAL_SUM, &[&a_bytes], Some(2.0));
        let avg = call_bytes(env, finish, FINISH, &[&sum], None);
        let avg = State::from_bytes(&avg).expect("finishAverage returned a state");
        assert_eq!(avg.tensors, a.tensors);
        assert_eq!(avg.meta.model_id, a.meta.model_id);
        // Two partial sums merged: (1 * a + 3 * b) / 4.
        let sa = call_bytes(env, partial_sum, PARTIAL_SUM, &[&a_bytes], Some(1.0));
        let sb = call_bytes(env, partial_sum, PARTIAL_SUM, &[&b_bytes], Some(3.0));
        let merge_sig = jni_sig!("([B[B)[B");
        let merged = call_bytes(env, jni_str!("mergeSums"), merge_sig, &[&sa, &sb], None);
        let avg = call_bytes(env, finish, FINISH, &[&merged], None);
        let avg = State::from_bytes(&avg).expect("finishAverage returned a state");
        let weight = avg.tensor("fc.weight").expect("fc.weight").to_f32();
        assert_eq!(weight, vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(avg.tensor("fc.bias").expect("fc.bias").to_f32(), vec![2.0, 1.0]);
        // stripOptimizer drops optimizer/* and keeps the parameters.
        let stripped = call_bytes(env, jni_str!("stripOptimizer"), FINISH, &[&a_bytes], None);
        let stripped = State::from_bytes(&stripped).expect("stripOptimizer returned a state");
        let names: Vec<&str> = stripped.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["fc.bias", "fc.weight"]);
        assert_eq!(stripped, a.clone().without_optimizer());
    });
}
