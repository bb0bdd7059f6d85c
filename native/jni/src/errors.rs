//! Errors become Java exceptions here, and only here.
//!
//! Every export runs its body through `EnvUnowned::with_env` (which catches
//! panics) and resolves the outcome with [`ThrowStoker`]: a pending Java
//! exception always wins; a stoker error is thrown as the exception class of
//! its kind (classified by kind, never by message text); a panic becomes a
//! `StokerException` carrying the panic message. Nothing unwinds into the JVM.

use jni::errors::ErrorPolicy;
use jni::strings::JNIString;
use jni::Env;
use stoker_core::{Error, ErrorKind};

/// The error of a bridge call: a stoker error, or a JNI failure (which may
/// mean a Java exception is already pending).
#[derive(Debug)]
pub enum BridgeError {
    Stoker(Error),
    Jni(jni::errors::Error),
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Stoker(e) => write!(f, "{e}"),
            BridgeError::Jni(e) => write!(f, "JNI error: {e}"),
        }
    }
}

impl std::error::Error for BridgeError {}

impl From<Error> for BridgeError {
    fn from(e: Error) -> Self {
        BridgeError::Stoker(e)
    }
}

impl From<jni::errors::Error> for BridgeError {
    fn from(e: jni::errors::Error) -> Self {
        BridgeError::Jni(e)
    }
}

pub type BridgeResult<T> = Result<T, BridgeError>;

/// The Java exception class (JNI binary name) for each error kind.
/// docs/errors.md keeps this table for users.
pub fn exception_class(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "dev/stoker/InvalidInputException",
        ErrorKind::NotFound => "dev/stoker/NotFoundException",
        ErrorKind::CacheMiss => "dev/stoker/CacheMissException",
        ErrorKind::ResourceExhausted => "dev/stoker/ResourceExhaustedException",
        ErrorKind::Unauthenticated => "dev/stoker/UnauthenticatedException",
        ErrorKind::Unavailable => "dev/stoker/ServerUnavailableException",
        ErrorKind::Io | ErrorKind::Internal => "dev/stoker/StokerException",
    }
}

const BASE_EXCEPTION: &str = "dev/stoker/StokerException";

fn throw(env: &mut Env<'_>, class: &str, message: &str) -> jni::errors::Result<()> {
    // throw_new reports the throw itself as Err(JavaException); the
    // exception is what we want pending, so that is success here.
    match env.throw_new(JNIString::from(class), JNIString::from(message)) {
        Ok(()) | Err(jni::errors::Error::JavaException) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Throws stoker exceptions; see the module docs.
#[derive(Debug)]
pub struct ThrowStoker;

impl<T: Default> ErrorPolicy<T, BridgeError> for ThrowStoker {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        err: BridgeError,
    ) -> jni::errors::Result<T> {
        if env.exception_check() {
            return Ok(T::default());
        }
        match err {
            BridgeError::Stoker(e) => throw(env, exception_class(e.kind()), e.message())?,
            BridgeError::Jni(e) => {
                throw(env, BASE_EXCEPTION, &format!("JNI error in stoker: {e}"))?
            }
        }
        Ok(T::default())
    }

    fn on_panic<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> jni::errors::Result<T> {
        let message = format!(
            "stoker native code panicked: {}",
            panic_message(payload.as_ref())
        );
        if !env.exception_check() {
            throw(env, BASE_EXCEPTION, &message)?;
        }
        Ok(T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_class_in_the_stoker_package() {
        for kind in ErrorKind::ALL {
            assert!(exception_class(kind).starts_with("dev/stoker/"));
        }
        assert_eq!(
            exception_class(ErrorKind::InvalidInput),
            "dev/stoker/InvalidInputException"
        );
    }

    #[test]
    fn panic_payloads_become_text() {
        let p: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(p.as_ref()), "boom");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(p.as_ref()), "bang");
    }
}
