//! stoker-core: everything stoker needs that involves neither libtorch nor
//! a network: the error type, the feature and label contract, the Arrow ↔
//! dense conversion, prediction columns, and the state format with its
//! weighted averaging. The engine, server, JNI and Python crates all build
//! on it, so the JVM driver can average states without loading libtorch.

pub mod averaging;
pub mod error;
pub mod evaluation;
pub mod features;
pub mod ipc;
pub mod labels;
pub mod linalg;
mod numeric;
pub mod outer;
pub mod predictions;
pub mod protocol;
pub mod running_mean;
pub mod state;
pub mod task;
pub mod vectors;

pub use averaging::WeightedSum;
pub use error::{Error, ErrorKind, Result, ResultExt};
pub use features::FeatureLayout;
pub use labels::Labels;
pub use numeric::Element;
pub use predictions::Outputs;
pub use state::{State, StateMeta, TensorData};
pub use task::{Loss, Task};
