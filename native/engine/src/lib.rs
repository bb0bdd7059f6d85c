//! stoker-engine: the only crate that links libtorch. It builds models
//! (built-in specs or TorchScript), trains them with optimizers whose state
//! can be averaged, and runs batched inference. It knows nothing about
//! networks or Spark: the server and the command line drive it.

pub mod budget;
mod buffers;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod linalg;
pub mod model;
pub mod network;
pub mod optim;
mod rng;
pub mod schedule;
pub mod setup;
pub mod spec;
pub mod torch;
pub mod train;

pub use budget::Budget;
pub use data::Dataset;
pub use device::DeviceSpec;
pub use evaluate::evaluate;
pub use model::{Model, ModelSource};
pub use optim::{OptimizerConfig, OptimizerKind};
pub use setup::{Fixed, Rows, Setup};
pub use spec::ModelSpec;
/// The libtorch device type, so users of the engine need not depend on tch.
pub use tch::Device;
pub use train::{EpochReport, TrainOptions, TrainReport, Trainer};
