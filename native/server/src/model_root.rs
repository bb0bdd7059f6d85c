//! Model files a client names (`torchscript_path`), read only from under
//! the directory the operator gave (`--model-root`). Without one, no client
//! path is read: a path from the network made the server read `/dev/zero`
//! until it ran out of memory and open `/etc/passwd`. Under the root, a
//! path is resolved (symlinks and `..` included) before it is checked, must
//! be a regular file, and is read up to the message limit, as a `model`
//! blob would be.

use std::io::Read;
use std::path::{Path, PathBuf};

use stoker_core::{Error, ErrorKind, Result};

#[derive(Debug, Clone, Default)]
pub struct ModelRoot {
    /// The directory client paths are confined to, resolved; `None`: none.
    dir: Option<PathBuf>,
    /// The largest file read (the message limit).
    max_bytes: usize,
}

impl ModelRoot {
    pub fn new(dir: Option<&Path>, max_bytes: usize) -> Result<ModelRoot> {
        let dir = dir
            .map(|d| {
                d.canonicalize()
                    .map_err(|e| Error::io(format!("--model-root {}", d.display()), e))
            })
            .transpose()?;
        Ok(ModelRoot { dir, max_bytes })
    }

    /// The bytes of the model file `path` names (relative to the root, or
    /// absolute inside it).
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let Some(root) = &self.dir else {
            return Err(Error::invalid(format!(
                "torchscript_path '{path}': this server reads no model files for its clients; \
                 send the archive as the 'model' blob, or start the server with --model-root DIR"
            )));
        };
        let refused = |why: &str| Error::invalid(format!("torchscript_path '{path}' {why}"));
        let resolved = root.join(path).canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::not_found(format!(
                "torchscript_path '{path}' does not exist under --model-root {}",
                root.display()
            )),
            _ => refused(&format!("cannot be resolved: {e}")),
        })?;
        if !resolved.starts_with(root) {
            return Err(refused(&format!(
                "is outside --model-root {}",
                root.display()
            )));
        }
        let file = std::fs::File::open(&resolved)
            .map_err(|e| refused(&format!("cannot be opened: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| refused(&format!("cannot be read: {e}")))?;
        if !meta.is_file() {
            return Err(refused("is not a regular file"));
        }
        if meta.len() > self.max_bytes as u64 {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "torchscript_path '{path}' is {} bytes, over the message limit of {} bytes (--max-message-mb)",
                    meta.len(),
                    self.max_bytes
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // Bounded even if the file grows while it is read.
        file.take(self.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| refused(&format!("cannot be read: {e}")))?;
        if bytes.len() > self.max_bytes {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!("torchscript_path '{path}' grew over the message limit while it was read"),
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_paths_stay_under_the_root_and_name_regular_files() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"no").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.pt"), b"archive").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let root = ModelRoot::new(Some(dir.path()), 1 << 20).unwrap();
        assert_eq!(root.read("m.pt").unwrap(), b"archive");
        let absolute = dir.path().join("m.pt");
        assert_eq!(root.read(absolute.to_str().unwrap()).unwrap(), b"archive");
        let secret = outside.path().join("secret");
        for (path, says) in [
            ("../secret", "does not exist"),
            (secret.to_str().unwrap(), "is outside --model-root"),
            ("link", "is outside --model-root"),
            ("/etc/passwd", "is outside --model-root"),
            ("/dev/zero", "is outside --model-root"),
            ("sub", "is not a regular file"),
            ("missing.pt", "does not exist"),
        ] {
            let e = root.read(path).unwrap_err();
            assert!(e.message().contains(says), "{path}: {e}");
        }
        let small = ModelRoot::new(Some(dir.path()), 3).unwrap();
        let e = small.read("m.pt").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(e.message().contains("--max-message-mb"), "{e}");
    }

    #[test]
    fn without_a_root_no_client_path_is_read() {
        let e = ModelRoot::default().read("/etc/passwd").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("--model-root"), "{e}");
    }
}
