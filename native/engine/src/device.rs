//! Device selection: `auto` (CUDA when available, else CPU), `cpu`, `cuda:N`.

use std::fmt;
use std::str::FromStr;

use stoker_core::{Error, ErrorKind, Result};
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" | "" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown device '{other}'; expected auto, cpu or cuda:N"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Number of CUDA devices libtorch can use (0 on a CPU-only host).
pub fn cuda_devices() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

impl DeviceSpec {
    /// The libtorch device; `cuda:N` on a host without that GPU is an error
    /// rather than a silent fall-back to CPU.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(if cuda_devices() > 0 {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            DeviceSpec::Cuda(n) => {
                let count = cuda_devices();
                if n < count {
                    Ok(Device::Cuda(n))
                } else {
                    Err(Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "device cuda:{n} requested but this host has {count} CUDA device(s)"
                        ),
                    ))
                }
            }
        }
    }
}

/// Human name of a resolved device (`cpu`, `cuda:0`).
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        _ => "cpu".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        let e = "tpu".parse::<DeviceSpec>().unwrap_err();
        assert!(e.message().contains("unknown device 'tpu'"));
    }

    #[test]
    fn auto_resolves_to_what_the_host_has() {
        let d = DeviceSpec::Auto.resolve().unwrap();
        if cuda_devices() == 0 {
            assert_eq!(d, Device::Cpu);
        } else {
            assert_eq!(d, Device::Cuda(0));
        }
    }

    #[test]
    fn missing_gpu_is_unavailable() {
        let n = cuda_devices();
        let e = DeviceSpec::Cuda(n).resolve().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.message().contains(&format!("cuda:{n}")));
    }
}
