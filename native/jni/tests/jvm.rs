//! libstoker_jni inside a real JVM: each test calls a `NativeBridge` native
//! the way Java code does and checks the exception class and message Java
//! sees. Unit tests of the Rust functions cannot catch a wrong JNI name or
//! signature, an exception class the shim lacks, or a crash where Java
//! expects an exception; these do.
//!
//! Needs a JDK (`javac` on PATH; libjvm found through JAVA_HOME or `java`)
//! and libstoker_jni of the same profile, which cargo builds with the crate.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use jni::errors::Error as JniError;
use jni::objects::{JByteArray, JDoubleArray, JObject, JObjectArray, JString, JValue, JValueOwned};
use jni::signature::MethodSignature;
use jni::strings::JNIString;
use jni::{jni_sig, jni_str, Env, InitArgsBuilder, JNIVersion, JavaVM};
use stoker_core::{State, StateMeta, TensorData};

const INVALID: &str = "dev.stoker.InvalidInputException";
const UNAVAILABLE: &str = "dev.stoker.ServerUnavailableException";

/// A `NativeBridge` native: its name and JNI signature.
type Native = &'static (&'static str, MethodSignature<'static, 'static>);
const VERSION: Native = &("nativeVersion0", jni_sig!("()Ljava/lang/String;"));
const AVERAGE: Native = &("average0", jni_sig!("([[B[D)[B"));
const MERGE: Native = &("merge0", jni_sig!("([BD[BD)V"));
const WITH_SAMPLES: Native = &("withSamples0", jni_sig!("([BJ)[B"));
const STRIP: Native = &("withoutOptimizer0", jni_sig!("([B)[B"));
const META: Native = &("meta0", jni_sig!("([B)Ljava/lang/String;"));
const CONNECT: Native = &(
    "connect",
    jni_sig!("(Ljava/lang/String;Ljava/lang/String;Ljava/lang/String;I)J"),
);
const CLOSE: Native = &("close", jni_sig!("(J)V"));
const ACTION: Native = &("action", jni_sig!("(JLjava/lang/String;[B)[B"));

/// libstoker_jni of this profile. Cargo builds the library, cdylib
/// included, into deps/ next to this test whenever it rebuilds it for the
/// test, so that copy is never older than the test; the one `cargo build`
/// copies to target/<profile>/ is stale after a plain `cargo test`.
fn cdylib() -> PathBuf {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let name = format!("{DLL_PREFIX}stoker_jni{DLL_SUFFIX}");
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test executable directory");
    let profile = deps.parent().expect("target/<profile>");
    [deps, profile]
        .iter()
        .map(|dir| dir.join(&name))
        .find(|lib| lib.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is in neither {} nor {}: build the cdylib first with \
                 `cargo build --release -p stoker-jni` (the same profile as these tests)",
                deps.display(),
                profile.display()
            )
        })
}

/// The shim's packages: the exception classes and NativeBridge.
const PACKAGES: [&str; 2] = ["dev/stoker", "dev/stoker/jni"];

/// The files ending in `.ext` in PACKAGES under `root`.
fn package_files(root: &Path, ext: &str) -> Vec<PathBuf> {
    PACKAGES
        .iter()
        .flat_map(|p| std::fs::read_dir(root.join(p)).expect("reading a package directory"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .collect()
}

/// Compiles PACKAGES into a directory of this process's own, so concurrent
/// test processes never share one.
fn compile_java() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../jvm-shim/src/main/java");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jni-test-classes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new("javac")
        .arg("-d")
        .arg(&out)
        .args(package_files(&src, "java"))
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
        let classes = compile_java();
        let args = InitArgsBuilder::new()
            .version(JNIVersion::V1_8)
            .option(format!("-Djava.class.path={}", classes.display()))
            .option(format!("-Dstoker.native.lib={}", lib.display()))
            // Makes the JVM check every JNI call the library makes.
            .option("-Xcheck:jni")
            .build()
            .expect("JVM options");
        let vm = JavaVM::new(args).expect("starting a JVM (set JAVA_HOME to a JDK)");
        vm.attach_current_thread(|env| -> jni::errors::Result<()> {
            // The JVM reads a class file only when it first loads the class,
            // so with every class loaded the directory can go.
            for file in package_files(&classes, "class") {
                let name = file
                    .strip_prefix(&classes)
                    .expect("a class under the class path");
                env.find_class(JNIString::from(name.with_extension("").to_string_lossy()))?;
            }
            // System.load binds a library to its caller's class loader;
            // called straight from JNI there is no caller, so it would land
            // in the boot loader and NativeBridge's natives would not
            // resolve. NativeLoader calls System.load(stoker.native.lib)
            // itself, as in production.
            env.call_static_method(
                jni_str!("dev/stoker/jni/NativeLoader"),
                jni_str!("ensureLoaded"),
                jni_sig!("()V"),
                &[],
            )?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("loading {}: {e}", lib.display()));
        let _ = std::fs::remove_dir_all(&classes);
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

/// Calls a native: its value, or the (class, message) of the exception it
/// threw, which is then cleared.
fn call<'l>(
    env: &mut Env<'l>,
    (name, sig): Native,
    args: &[JValue<'_>],
) -> Result<JValueOwned<'l>, (String, String)> {
    let bridge = jni_str!("dev/stoker/jni/NativeBridge");
    match env.call_static_method(bridge, JNIString::from(name), sig, args) {
        Ok(value) => Ok(value),
        Err(JniError::JavaException) => match env.exception_catch() {
            Err(JniError::CaughtJavaException { name, msg, .. }) => Err((name, msg)),
            other => panic!("no exception to catch after JavaException: {other:?}"),
        },
        Err(e) => panic!("calling NativeBridge.{name}: {e}"),
    }
}

/// Asserts the native threw `class` with a message containing `message`.
fn assert_throws(
    env: &mut Env<'_>,
    native: Native,
    args: &[JValue<'_>],
    class: &str,
    message: &str,
) {
    match call(env, native, args) {
        Ok(v) => panic!("{} returned {v:?}, expected {class}: {message}", native.0),
        Err((c, m)) => {
            assert_eq!(c, class, "exception class of {} (message: {m})", native.0);
            assert!(m.contains(message), "message {m:?} lacks {message:?}");
        }
    }
}

fn closed(handle: i64) -> String {
    format!("stoker client handle {handle} is closed or was never opened")
}

fn java_bytes<'l>(env: &mut Env<'l>, bytes: &[u8]) -> JByteArray<'l> {
    env.byte_array_from_slice(bytes).expect("new byte[]")
}

/// Calls a state native that must not throw, with `inputs` as its `byte[]`
/// arguments (then `weight` and `count`, if any); the `byte[]` it returned.
fn call_bytes(
    env: &mut Env<'_>,
    native: Native,
    inputs: &[&[u8]],
    weight: Option<f64>,
    count: Option<i64>,
) -> Vec<u8> {
    let arrays: Vec<JByteArray<'_>> = inputs.iter().map(|b| java_bytes(env, b)).collect();
    let mut args: Vec<JValue<'_>> = arrays.iter().map(JValue::from).collect();
    args.extend(weight.map(JValue::from));
    args.extend(count.map(JValue::from));
    let value =
        call(env, native, &args).unwrap_or_else(|(c, m)| panic!("{} threw {c}: {m}", native.0));
    let array = env
        .cast_local::<JByteArray>(value.l().expect("an object"))
        .expect("a byte[]");
    assert!(!array.is_null(), "{} returned null", native.0);
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
            let s = java_bytes(env, s);
            array.set_element(env, i, &s).expect("element");
        }
    }
    let w = env.new_double_array(weights.len()).expect("new double[]");
    w.set_region(env, 0, weights).expect("double[] contents");
    (array, w)
}

fn state(weight: [f32; 4], bias: [f32; 2]) -> State {
    let meta = StateMeta {
        model_id: "jvm-test".into(),
        round: 1,
        samples: 10,
        ..Default::default()
    };
    let tensors = vec![
        TensorData::from_f32("fc.bias", vec![2], &bias),
        TensorData::from_f32("fc.weight", vec![2, 2], &weight),
        TensorData::from_f32("optimizer/fc.weight/momentum", vec![2, 2], &weight),
    ];
    State { meta, tensors }
}

#[test]
fn version_is_the_crate_version() {
    with_env(|env| {
        let v = call(env, VERSION, &[])
            .expect("version() threw")
            .l()
            .expect("an object");
        let v = env.cast_local::<JString>(v).expect("a String");
        assert_eq!(
            v.try_to_string(env).expect("text"),
            env!("CARGO_PKG_VERSION")
        );
    });
}

#[test]
fn fewer_weights_than_states_is_invalid_input() {
    let a = state([1.0; 4], [0.0; 2]).to_bytes().expect("state bytes");
    with_env(|env| {
        let (states, weights) = states_and_weights(env, &[Some(&a), Some(&a)], &[1.0]);
        let args = [(&states).into(), (&weights).into()];
        assert_throws(env, AVERAGE, &args, INVALID, "2 states but 1 weights");
    });
}

#[test]
fn corrupt_bytes_are_invalid_input() {
    let a = state([1.0; 4], [0.0; 2]).to_bytes().expect("state bytes");
    with_env(|env| {
        let junk = java_bytes(env, b"definitely not safetensors");
        let a = java_bytes(env, &a);
        let args = [(&a).into(), 1.0.into(), (&junk).into(), 1.0.into()];
        assert_throws(env, MERGE, &args, INVALID, "not a valid stoker state");
        let args = [(&junk).into(), 1i64.into()];
        assert_throws(
            env,
            WITH_SAMPLES,
            &args,
            INVALID,
            "not a valid stoker state",
        );
        // A weight of zero would divide by nothing.
        let args = [(&a).into(), 0.0.into(), (&a).into(), 1.0.into()];
        assert_throws(env, MERGE, &args, INVALID, "weight must be positive");
    });
}

#[test]
fn null_arguments_are_invalid_input() {
    let a = state([1.0; 4], [0.0; 2]).to_bytes().expect("state bytes");
    with_env(|env| {
        let null = JObject::null();
        let args = [(&null).into(), 1i64.into()];
        assert_throws(env, WITH_SAMPLES, &args, INVALID, "state is null");
        assert_throws(env, STRIP, &[(&null).into()], INVALID, "state is null");
        assert_throws(env, META, &[(&null).into()], INVALID, "state is null");
        let args = [(&null).into(), 1.0.into(), (&null).into(), 1.0.into()];
        assert_throws(env, MERGE, &args, INVALID, "a state to average is null");
        let nulls = [(&null).into(), (&null).into(), (&null).into(), 0i32.into()];
        assert_throws(env, CONNECT, &nulls, INVALID, "server address is null");
        let (states, weights) = states_and_weights(env, &[Some(&a), None], &[1.0, 1.0]);
        let args = [(&states).into(), (&weights).into()];
        assert_throws(env, AVERAGE, &args, INVALID, "state 2 is null");
        let args = [(&null).into(), (&weights).into()];
        assert_throws(env, AVERAGE, &args, INVALID, "states is null");
        let args = [(&states).into(), (&null).into()];
        assert_throws(env, AVERAGE, &args, INVALID, "weights is null");
    });
}

#[test]
fn zero_closed_and_unknown_handles_are_invalid_input_not_a_crash() {
    // A listener that never answers still completes the TCP connect, which
    // is all `connect` waits for, so this issues a real handle to close.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri = format!("grpc://{}", listener.local_addr().expect("address"));
    with_env(|env| {
        let uri = env.new_string(&uri).expect("String");
        let null = JObject::null();
        let args = [(&uri).into(), (&null).into(), (&null).into(), 0i32.into()];
        let handle = call(env, CONNECT, &args)
            .expect("connect threw")
            .j()
            .expect("a long");
        assert_ne!(handle, 0);
        call(env, CLOSE, &[handle.into()]).expect("the first close threw");
        let kind = env.new_string("health").expect("String");
        let body = java_bytes(env, b"{}");
        for h in [0, handle, i64::MAX, -7] {
            assert_throws(env, CLOSE, &[h.into()], INVALID, &closed(h));
            let args = [h.into(), (&kind).into(), (&body).into()];
            assert_throws(env, ACTION, &args, INVALID, &closed(h));
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
        let null = JObject::null();
        let args = [(&juri).into(), (&null).into(), (&null).into(), 0i32.into()];
        let expected = format!("cannot reach the stoker server at {uri}");
        assert_throws(env, CONNECT, &args, UNAVAILABLE, &expected);
        // Over TLS too, with the system's roots (a null CA).
        let tls = uri.replace("grpc://", "grpc+tls://");
        let jtls = env.new_string(&tls).expect("String");
        let args = [(&jtls).into(), (&null).into(), (&null).into(), 0i32.into()];
        let expected = format!("cannot reach the stoker server at {tls}");
        assert_throws(env, CONNECT, &args, UNAVAILABLE, &expected);
    });
}

#[test]
fn a_ca_certificate_that_is_not_pem_is_invalid_input() {
    with_env(|env| {
        let uri = env.new_string("grpc+tls://127.0.0.1:1").expect("String");
        let ca = env.new_string("/path/to/ca.pem").expect("String");
        let null = JObject::null();
        let args = [(&uri).into(), (&null).into(), (&ca).into(), 0i32.into()];
        let expected = "the CA certificate is not PEM";
        assert_throws(env, CONNECT, &args, INVALID, expected);
    });
}

#[test]
fn states_round_trip_through_partial_sums() {
    let a = state([1.0, 2.0, 3.0, 4.0], [0.5, -0.5]);
    let b = state([5.0, 6.0, 7.0, 8.0], [2.5, 1.5]);
    let (a_bytes, b_bytes) = (a.to_bytes().expect("a"), b.to_bytes().expect("b"));
    with_env(|env| {
        // A mean of one state is the state; the sample count goes into its metadata.
        let one = State::from_bytes(&call_bytes(env, WITH_SAMPLES, &[&a_bytes], None, Some(7)))
            .expect("a state");
        assert_eq!(one.tensors, a.tensors);
        assert_eq!(
            (one.meta.model_id.as_str(), one.meta.samples),
            (a.meta.model_id.as_str(), 7)
        );
        // b merged into a, in place, weights 1 and 3: (1 * a + 3 * b) / 4.
        let (ja, jb) = (java_bytes(env, &a_bytes), java_bytes(env, &b_bytes));
        let args = [(&ja).into(), 1.0.into(), (&jb).into(), 3.0.into()];
        call(env, MERGE, &args).unwrap_or_else(|(c, m)| panic!("merge threw {c}: {m}"));
        let merged = env.convert_byte_array(&ja).expect("merged bytes");
        let avg = State::from_bytes(&merged).expect("a state");
        let tensor = |name: &str| avg.tensor(name).expect("tensor").to_f32();
        assert_eq!(tensor("fc.weight"), [4.0, 5.0, 6.0, 7.0]);
        assert_eq!(tensor("fc.bias"), [2.0, 1.0]);
        // The other state is read, never written.
        assert_eq!(env.convert_byte_array(&jb).expect("b bytes"), b_bytes);
        // withoutOptimizer0 drops optimizer/* and keeps the parameters.
        let stripped =
            State::from_bytes(&call_bytes(env, STRIP, &[&a_bytes], None, None)).expect("a state");
        let names: Vec<&str> = stripped.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["fc.bias", "fc.weight"]);
        assert_eq!(stripped, a.clone().without_optimizer());
    });
}

#[test]
fn metadata_comes_back_as_json_strings() {
    let mut a = state([1.0; 4], [0.0; 2]);
    a.meta.extra.insert("task".into(), "multiclass:2".into());
    let a = a.to_bytes().expect("state bytes");
    with_env(|env| {
        let ja = java_bytes(env, &a);
        let value = call(env, META, &[(&ja).into()])
            .unwrap_or_else(|(c, m)| panic!("meta0 threw {c}: {m}"))
            .l()
            .expect("an object");
        let text = env.cast_local::<JString>(value).expect("a String");
        let json: serde_json::Value =
            serde_json::from_str(&text.try_to_string(env).expect("text")).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "model_id": "jvm-test", "round": "1", "samples": "10", "task": "multiclass:2"
            })
        );
        let junk = java_bytes(env, b"definitely not safetensors");
        assert_throws(
            env,
            META,
            &[(&junk).into()],
            INVALID,
            "not a valid stoker state",
        );
    });
}
