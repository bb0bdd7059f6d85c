//! Weighted averaging of states: a running sum that states are added to
//! one at a time (so averaging N states holds only the sum and the state
//! being added), and that can itself be serialized and merged, for Spark's
//! tree aggregation across executors.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::state::{corrupt, decode, encode, DType, State, StateMeta, TensorData};

/// Metadata key of a serialized partial sum.
const SUM_KEY: &str = "stoker.sum";

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::I64 => "I64",
    }
}

/// A running weighted sum of states, for averaging. Holds one f64 sum per
/// tensor; states are added one at a time from their bytes, so averaging N
/// states never holds more than the sum and the state being added.
#[derive(Debug, Clone)]
pub struct WeightedSum {
    meta: StateMeta,
    tensors: Vec<SumTensor>,
    weight: f64,
    count: usize,
}

#[derive(Debug, Clone)]
struct SumTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    sum: Vec<f64>,
}

impl WeightedSum {
    /// Starts a sum with its first state.
    pub fn new(first: &State, weight: f64) -> Result<Self> {
        check_weight(weight, 1)?;
        Ok(WeightedSum {
            meta: first.meta.clone(),
            tensors: first
                .tensors
                .iter()
                .map(|t| SumTensor {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    sum: t.to_f64().into_iter().map(|v| v * weight).collect(),
                })
                .collect(),
            weight,
            count: 1,
        })
    }

    pub fn from_bytes(first: &[u8], weight: f64) -> Result<Self> {
        Self::new(&State::from_bytes(first)?, weight)
    }

    /// Checks that `what` (a state or another partial sum) is of this
    /// model and holds every tensor this sum holds.
    fn check_compatible<'a>(
        &self,
        what: &str,
        model_id: &str,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<()> {
        if model_id != self.meta.model_id {
            return Err(Error::invalid(format!(
                "{what} is of model '{model_id}', the others of '{}'; only states of one model can be averaged",
                self.meta.model_id
            )));
        }
        let theirs: Vec<&str> = names.collect();
        if let Some(missing) = self
            .tensors
            .iter()
            .find(|t| !theirs.contains(&t.name.as_str()))
        {
            return Err(Error::invalid(format!(
                "{what} lacks tensor '{}'",
                missing.name
            )));
        }
        Ok(())
    }

    /// The running sum of tensor `name`, checked against the incoming
    /// tensor's dtype and shape; a mismatch names the tensor.
    fn slot(
        &mut self,
        what: &str,
        name: &str,
        dtype: DType,
        shape: &[usize],
    ) -> Result<&mut Vec<f64>> {
        let acc = self
            .tensors
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{what} has tensor '{name}' that the first state lacks"
                ))
            })?;
        if acc.shape != shape || acc.dtype != dtype {
            return Err(Error::invalid(format!(
                "tensor '{name}' is {dtype:?}{shape:?} in {what} but {:?}{:?} in the first state",
                acc.dtype, acc.shape
            )));
        }
        Ok(&mut acc.sum)
    }

    /// Adds `weight * state`. The state must have the same model, tensor
    /// names, shapes and dtypes; a mismatch names the tensor.
    pub fn add(&mut self, state: &State, weight: f64) -> Result<()> {
        let what = format!("state {}", self.count + 1);
        check_weight(weight, self.count + 1)?;
        self.check_compatible(
            &what,
            &state.meta.model_id,
            state.tensors.iter().map(|t| t.name.as_str()),
        )?;
        let samples = total_samples(self.meta.samples, state.meta.samples, &what)?;
        for t in &state.tensors {
            let sum = self.slot(&what, &t.name, t.dtype, &t.shape)?;
            add_scaled(sum, t.dtype, &t.data, weight);
        }
        self.weight += weight;
        self.meta.samples = samples;
        self.count += 1;
        Ok(())
    }

    pub fn add_bytes(&mut self, bytes: &[u8], weight: f64) -> Result<()> {
        self.add(&State::from_bytes(bytes)?, weight)
    }

    /// Total weight added so far.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Number of states added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds another partial sum (tree aggregation combines partial sums
    /// computed on different executors).
    pub fn merge(&mut self, other: &WeightedSum) -> Result<()> {
        let what = "the other partial sum";
        self.check_compatible(
            what,
            &other.meta.model_id,
            other.tensors.iter().map(|t| t.name.as_str()),
        )?;
        let samples = total_samples(self.meta.samples, other.meta.samples, what)?;
        for t in &other.tensors {
            let sum = self.slot(what, &t.name, t.dtype, &t.shape)?;
            for (a, b) in sum.iter_mut().zip(&t.sum) {
                *a += b;
            }
        }
        self.weight += other.weight;
        self.meta.samples = samples;
        self.count += other.count;
        Ok(())
    }

    /// The partial sum as a state of F64 sums whose metadata records the
    /// weight, count and original dtypes, so it can travel between
    /// processes (Spark's treeAggregate) and be merged or averaged there.
    pub fn to_state(&self) -> State {
        let dtypes: BTreeMap<&str, &str> = self
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), dtype_name(t.dtype)))
            .collect();
        let mut meta = self.meta.clone();
        meta.extra.insert(
            SUM_KEY.into(),
            serde_json::json!({"weight": self.weight, "count": self.count, "dtypes": dtypes})
                .to_string(),
        );
        State {
            meta,
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorData {
                    name: t.name.clone(),
                    dtype: DType::F64,
                    shape: t.shape.clone(),
                    data: encode(DType::F64, &t.sum).into(),
                })
                .collect(),
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_state().to_bytes()
    }

    /// Reads a partial sum written by [`WeightedSum::to_bytes`].
    pub fn from_sum_bytes(bytes: &[u8]) -> Result<WeightedSum> {
        let mut state = State::from_bytes(bytes)?;
        let info = state.meta.extra.remove(SUM_KEY).ok_or_else(|| {
            Error::invalid("state bytes are a state, not a partial sum of states")
        })?;
        let info: serde_json::Value = serde_json::from_str(&info)
            .map_err(|e| corrupt(format!("partial sum metadata: {e}")))?;
        let weight = info["weight"]
            .as_f64()
            .ok_or_else(|| corrupt("partial sum without a weight"))?;
        let count = info["count"].as_u64().unwrap_or(1) as usize;
        let tensors = state
            .tensors
            .iter()
            .map(|t| SumTensor {
                name: t.name.clone(),
                dtype: match info["dtypes"][&t.name].as_str() {
                    Some("F64") => DType::F64,
                    Some("I64") => DType::I64,
                    _ => DType::F32,
                },
                shape: t.shape.clone(),
                sum: t.to_f64(),
            })
            .collect();
        Ok(WeightedSum {
            meta: state.meta,
            tensors,
            weight,
            count,
        })
    }

    /// The weighted average: each tensor's sum divided by the total weight,
    /// cast back to its dtype (integers rounded). `samples` is the sum of
    /// the states' samples.
    pub fn average(&self) -> Result<State> {
        if self.weight <= 0.0 {
            return Err(Error::invalid(
                "cannot average states whose weights sum to zero",
            ));
        }
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                let avg: Vec<f64> = t.sum.iter().map(|v| v / self.weight).collect();
                TensorData {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data: encode(t.dtype, &avg).into(),
                }
            })
            .collect();
        Ok(State {
            meta: self.meta.clone(),
            tensors,
        })
    }
}

fn check_weight(weight: f64, index: usize) -> Result<()> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "state {index} has weight {weight}; weights must be finite and non-negative"
        )))
    }
}

fn add_scaled(sum: &mut [f64], dtype: DType, data: &[u8], w: f64) {
    match dtype {
        DType::F32 => {
            for (s, c) in sum.iter_mut().zip(data.chunks_exact(4)) {
                *s += w * f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
            }
        }
        DType::F64 | DType::I64 => {
            for (s, v) in sum.iter_mut().zip(decode(dtype, data)) {
                *s += w * v;
            }
        }
    }
}

/// Weighted average of states given as bytes, streaming: one state is
/// decoded at a time, so a caller that produces each state's bytes only
/// when asked (the JVM bridge copies them out of a Java array one by one)
/// holds the running sum and one state. Every bridge averages with this;
/// `E` is the caller's error type, so producing a state may fail its own way.
pub fn average<B, E>(
    states: impl IntoIterator<Item = std::result::Result<(B, f64), E>>,
) -> std::result::Result<State, E>
where
    B: AsRef<[u8]>,
    E: From<Error>,
{
    let mut sum: Option<WeightedSum> = None;
    for item in states {
        let (bytes, w) = item?;
        match &mut sum {
            None => sum = Some(WeightedSum::from_bytes(bytes.as_ref(), w)?),
            Some(s) => s.add_bytes(bytes.as_ref(), w)?,
        }
    }
    let sum = sum.ok_or_else(|| Error::invalid("no states to average"))?;
    Ok(sum.average()?)
}

/// The sample counts of two states together, checked before anything is
/// added: a state's metadata claiming more samples than a u64 can sum is
/// corrupt, not a weight (found by the fuzzer: it wrapped in release builds).
fn total_samples(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| {
        Error::invalid(format!(
            "{what}: its 'samples' metadata ({b}) overflows the total ({a}); the state is corrupt"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::state::tests::state;

    #[test]
    fn weighted_average() {
        let a = state(&[1.0, 2.0], 1.0, 10).to_bytes().unwrap();
        let b = state(&[3.0, 6.0], 0.0, 30).to_bytes().unwrap();
        let avg = average::<_, Error>([Ok((&a, 10.0)), Ok((&b, 30.0))]).unwrap();
        assert_eq!(avg.tensor("fc.weight").unwrap().to_f32(), vec![2.5, 5.0]);
        assert_eq!(avg.tensor("fc.bias").unwrap().to_f32(), vec![0.25]);
        assert_eq!(avg.tensor("optimizer/step").unwrap().to_f64(), vec![10.0]);
        assert_eq!(avg.meta.samples, 40);
    }

    #[test]
    fn identical_states_average_to_themselves() {
        let s = state(&[0.1, -7.25, 3.3], 0.7, 5);
        let bytes = s.to_bytes().unwrap();
        let avg = average::<_, Error>([Ok((&bytes, 2.0)), Ok((&bytes, 5.0))]).unwrap();
        for t in &s.tensors {
            assert_eq!(avg.tensor(&t.name).unwrap().data, t.data, "{}", t.name);
        }
    }

    #[test]
    fn shape_mismatch_names_the_tensor() {
        let a = state(&[1.0, 2.0], 1.0, 1).to_bytes().unwrap();
        let b = state(&[1.0, 2.0, 3.0], 1.0, 1).to_bytes().unwrap();
        let e = average::<_, Error>([Ok((&a, 1.0)), Ok((&b, 1.0))]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("tensor 'fc.weight'"), "{e}");
    }

    #[test]
    fn missing_tensor_is_named() {
        let a = state(&[1.0], 1.0, 1);
        let mut b = a.clone();
        b.tensors.retain(|t| t.name != "fc.bias");
        let mut sum = WeightedSum::new(&a, 1.0).unwrap();
        let e = sum.add(&b, 1.0).unwrap_err();
        assert!(e.message().contains("lacks tensor 'fc.bias'"), "{e}");
    }

    #[test]
    fn partial_sums_travel_and_merge_like_one_sum() {
        let a = state(&[1.0, 2.0], 1.0, 10);
        let b = state(&[3.0, 6.0], 0.0, 30);
        let c = state(&[5.0, -2.0], 2.0, 20);
        let mut one = WeightedSum::new(&a, 10.0).unwrap();
        one.add(&b, 30.0).unwrap();
        one.add(&c, 20.0).unwrap();
        // Tree: (a + b) on one executor, c on another, merged on the driver.
        let mut left = WeightedSum::new(&a, 10.0).unwrap();
        left.add(&b, 30.0).unwrap();
        let right = WeightedSum::new(&c, 20.0).unwrap();
        let mut merged = WeightedSum::from_sum_bytes(&left.to_bytes().unwrap()).unwrap();
        merged
            .merge(&WeightedSum::from_sum_bytes(&right.to_bytes().unwrap()).unwrap())
            .unwrap();
        assert_eq!(merged.weight(), 60.0);
        assert_eq!(merged.count(), 3);
        assert_eq!(merged.average().unwrap(), one.average().unwrap());
        assert_eq!(
            merged
                .average()
                .unwrap()
                .tensor("optimizer/step")
                .unwrap()
                .dtype,
            DType::I64
        );
        let e = WeightedSum::from_sum_bytes(&a.to_bytes().unwrap()).unwrap_err();
        assert!(e.message().contains("not a partial sum"), "{e}");
    }

    #[test]
    fn bad_weights_are_rejected() {
        let a = state(&[1.0], 1.0, 1);
        assert!(WeightedSum::new(&a, f64::NAN).is_err());
        let sum = WeightedSum::new(&a, 0.0).unwrap();
        assert!(sum.average().is_err());
    }
}
