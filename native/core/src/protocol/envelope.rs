//! The envelope: JSON plus named binary blobs (states, TorchScript
//! archives) in one action body or result, with the blobs readable where
//! they lie in the received buffer.

use serde::Serialize;

use crate::error::{Error, Result};

/// Magic that starts an enveloped body (JSON plus blobs).
pub const ENVELOPE_MAGIC: &[u8; 4] = b"STK1";

/// An action body or result: a JSON value and named binary blobs.
///
/// Encoding: with no blobs, the plain JSON bytes. With blobs:
/// `"STK1"`, a little-endian u32 with the JSON length, the JSON (whose
/// `"blobs"` member lists `{"name", "size"}` in order), then the blob bytes
/// one after another.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Envelope {
    pub json: serde_json::Value,
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Envelope {
    pub fn new(json: impl Serialize) -> Result<Envelope> {
        Ok(Envelope {
            json: serde_json::to_value(json)
                .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?,
            blobs: Vec::new(),
        })
    }

    pub fn with_blob(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.blobs.push((name.to_string(), bytes));
        self
    }

    pub fn blob(&self, name: &str) -> Option<&[u8]> {
        self.blobs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    pub fn take_blob(&mut self, name: &str) -> Option<Vec<u8>> {
        let i = self.blobs.iter().position(|(n, _)| n == name)?;
        Some(self.blobs.remove(i).1)
    }

    /// The JSON part as a typed body; `what` names the action in errors.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        super::actions::body(what, self.json.clone())
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.blobs.is_empty() {
            return serde_json::to_vec(&self.json)
                .map_err(|e| Error::internal(format!("encoding JSON: {e}")));
        }
        let sizes: Vec<(&str, usize)> = self
            .blobs
            .iter()
            .map(|(n, b)| (n.as_str(), b.len()))
            .collect();
        let mut out = Envelope::prefix(&self.json, &sizes)?;
        for (_, b) in &self.blobs {
            out.extend_from_slice(b);
        }
        Ok(out)
    }

    /// The bytes of an envelope before its blobs (magic, length, JSON with
    /// the blob listing), with room reserved for the blobs: a caller holding
    /// the blobs elsewhere (a JVM array) appends them without an
    /// intermediate copy. `json` must be an object.
    pub fn prefix(json: &serde_json::Value, blobs: &[(&str, usize)]) -> Result<Vec<u8>> {
        let mut json = json.clone();
        let listing: Vec<serde_json::Value> = blobs
            .iter()
            .map(|(n, size)| serde_json::json!({"name": n, "size": size}))
            .collect();
        match json.as_object_mut() {
            Some(obj) => {
                obj.insert("blobs".into(), listing.into());
            }
            None => {
                return Err(Error::internal(
                    "an envelope with blobs needs a JSON object",
                ))
            }
        }
        let header = serde_json::to_vec(&json)
            .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?;
        let total: usize = blobs.iter().map(|(_, size)| size).sum();
        let mut out = Vec::with_capacity(8 + header.len() + total);
        out.extend_from_slice(ENVELOPE_MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        Ok(out)
    }

    pub fn decode(body: &[u8]) -> Result<Envelope> {
        let (json, ranges) = Envelope::split(body)?;
        let blobs = ranges
            .into_iter()
            .map(|(name, range)| (name, body[range].to_vec()))
            .collect();
        Ok(Envelope { json, blobs })
    }

    /// The JSON of an encoded body and where each blob lies in it, without
    /// copying the blobs (checked: every range is inside `body`).
    #[allow(clippy::type_complexity)]
    pub fn split(
        body: &[u8],
    ) -> Result<(serde_json::Value, Vec<(String, std::ops::Range<usize>)>)> {
        let bad = |why: &str| Error::invalid(format!("malformed action body: {why}"));
        if !body.starts_with(ENVELOPE_MAGIC) {
            if body.is_empty() {
                return Ok((serde_json::json!({}), Vec::new()));
            }
            let json = serde_json::from_slice(body).map_err(|e| bad(&format!("not JSON ({e})")))?;
            return Ok((json, Vec::new()));
        }
        let len_bytes: [u8; 4] = body
            .get(4..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("truncated envelope header"))?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let header = body
            .get(8..8 + len)
            .ok_or_else(|| bad("truncated envelope JSON"))?;
        let json: serde_json::Value =
            serde_json::from_slice(header).map_err(|e| bad(&format!("envelope JSON: {e}")))?;
        let mut blobs = Vec::new();
        let mut at = 8 + len;
        if let Some(list) = json.get("blobs").and_then(|b| b.as_array()) {
            for item in list {
                let name = item
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| bad("a blob without a name"))?;
                let size =
                    item.get("size")
                        .and_then(|s| s.as_u64())
                        .ok_or_else(|| bad("a blob without a size"))? as usize;
                let end = at
                    .checked_add(size)
                    .filter(|&end| end <= body.len())
                    .ok_or_else(|| bad(&format!("blob '{name}' is truncated")))?;
                blobs.push((name.to_string(), at..end));
                at = end;
            }
        }
        if at != body.len() {
            return Err(bad("bytes after the last blob"));
        }
        Ok((json, blobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Named, TrainRound};

    #[test]
    fn envelope_with_and_without_blobs() {
        let plain = Envelope::new(serde_json::json!({"job": "a"})).unwrap();
        let bytes = plain.encode().unwrap();
        assert_eq!(bytes, br#"{"job":"a"}"#);
        assert_eq!(Envelope::decode(&bytes).unwrap(), plain);

        let env = Envelope::new(serde_json::json!({"job": "a"}))
            .unwrap()
            .with_blob("state", vec![1, 2, 3])
            .with_blob("model", vec![]);
        let back = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!(back.blob("state"), Some(&[1u8, 2, 3][..]));
        assert_eq!(back.blob("model"), Some(&[][..]));
        let named: Named = back.parse("drop_job").unwrap();
        assert_eq!(named.name, "a");
    }

    #[test]
    fn malformed_bodies_are_invalid_input() {
        for body in [
            &b"{not json"[..],
            b"STK1\x05\x00\x00\x00{}",
            b"STK1\x02\x00\x00\x00{}junk",
        ] {
            let e = Envelope::decode(body).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{body:?}");
        }
        let env = Envelope::decode(br#"{"job": 3}"#).unwrap();
        let e = env.parse::<TrainRound>("train_round").unwrap_err();
        assert!(e.message().contains("malformed train_round body"), "{e}");
    }
}
